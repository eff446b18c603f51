/**
 * The last lines of any node's Ray logs (raylet, GCS, worker stdout/stderr) in a cluster card,
 * read through Ray's own log API by the server (GET .../nodes/NODE/logs). A node that failed
 * is gone from this list: its last lines are in the card's events.
 */
import { URLExt } from '@jupyterlab/coreutils';
import * as React from 'react';

import { errorMessage, requestAPI } from './api';
import type { INode } from './api';

const LINES = 200;
const DEFAULT_FILE = 'raylet.out';

function logsPath(cluster: string, node: string): string {
  return URLExt.join('clusters', encodeURIComponent(cluster), 'nodes', encodeURIComponent(node), 'logs');
}

export function NodeLogs({ cluster, nodes }: { cluster: string; nodes: INode[] }): React.ReactElement {
  const [node, setNode] = React.useState('');
  const [files, setFiles] = React.useState<string[]>([]);
  const [file, setFile] = React.useState(DEFAULT_FILE);
  const [text, setText] = React.useState('');
  const chosen = node || (nodes.find(n => n.head) ?? nodes[0])?.name || '';

  React.useEffect(() => {
    let active = true;
    if (!chosen) {
      return;
    }
    requestAPI<{ files?: Record<string, string[]> }>(logsPath(cluster, chosen))
      .then(reply => {
        if (active) {
          setFiles(Object.values(reply.files ?? {}).flat().sort());
        }
      })
      .catch(e => active && setText(errorMessage(e)));
    return () => {
      active = false;
    };
  }, [cluster, chosen]);

  const show = async () => {
    try {
      const query = `?file=${encodeURIComponent(file)}&lines=${LINES}`;
      const reply = await requestAPI<{ logs: string }>(logsPath(cluster, chosen) + query);
      setText(reply.logs || '(empty)');
    } catch (e) {
      setText(errorMessage(e));
    }
  };

  return (
    <details className="jp-RayKube-nodeLogs">
      <summary>Node logs</summary>
      <div className="jp-RayKube-nodeLogsForm">
        <select
          className="jp-mod-styled"
          aria-label="Node"
          value={chosen}
          onChange={e => {
            setNode(e.target.value);
            setText('');
          }}
        >
          {nodes.map(n => (
            <option key={n.name} value={n.name}>
              {n.name}
            </option>
          ))}
        </select>
        <select className="jp-mod-styled" aria-label="Log file" value={file} onChange={e => setFile(e.target.value)}>
          {(files.length ? files : [DEFAULT_FILE]).map(f => (
            <option key={f} value={f}>
              {f}
            </option>
          ))}
        </select>
        <button className="jp-RayKube-button" disabled={!chosen} onClick={() => void show()}>
          Show
        </button>
      </div>
      {text && <pre className="jp-RayKube-jobLogText jp-RayKube-nodeLogText">{text}</pre>}
    </details>
  );
}
