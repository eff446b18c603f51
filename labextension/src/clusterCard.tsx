/**
 * One cluster in the sidebar: name (truncated, full name as tooltip), state, groups with
 * min/max to scale, CPU/GPU/object-store bars, pending demand and events. Errors of an action
 * on this cluster are shown here, at the field when the server names one.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { stopIcon } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import * as React from 'react';

import type { GroupBounds, ICluster, IDemand, IEvent, IGroup } from './api';
import { CommandIDs } from './commands';
import { FieldError } from './createForm';
import { parseFieldError, validateBounds } from './form';
import { JobList } from './jobs';
import { NodeLogs } from './nodeLogs';
import {
  canHaveGpus,
  formatBytes,
  formatCost,
  formatDuration,
  formatNumber,
  formatPlacement,
  formatQuota,
  formatResources,
  formatTime,
  newestFirst,
  secondsUntilRemoval,
  sumResource
} from './format';
import type { ClusterListModel } from './model';

type Bound = 'min' | 'max';
type Drafts = Record<string, Partial<Record<Bound, string>>>;

interface ICardProps {
  cluster: ICluster;
  model: ClusterListModel;
  commands: CommandRegistry;
  busy: boolean;
}

export function ClusterCard({ cluster, model, commands, busy }: ICardProps): React.ReactElement {
  // Unsaved min/max edits per group; polled values show where there is no edit.
  const [drafts, setDrafts] = React.useState<Drafts>({});
  const transitioning = cluster.state === 'starting' || cluster.state === 'stopping';
  const running = cluster.state === 'running';
  const head = cluster.nodes.find(node => node.head);
  const errors = rowErrors(cluster.groups, drafts, model.clusterError(cluster.name));
  const invalid = Object.values(errors).some(e => e.min || e.max);
  const changed = changedBounds(cluster.groups, drafts);
  const placed = Object.values(errors).some(e => e.server);
  const cardError = placed ? '' : model.clusterError(cluster.name);

  const setDraft = (group: string, key: Bound, value: string) => {
    setDrafts(d => ({ ...d, [group]: { ...d[group], [key]: value } }));
    if (model.clusterError(cluster.name)) {
      model.clearClusterError(cluster.name);
    }
  };

  const scale = async () => {
    if (await model.scale(cluster.name, changed)) {
      setDrafts({});
    }
  };

  const stop = async () => {
    const result = await showDialog({
      title: `Stop ${cluster.name}?`,
      body: 'Its Ray nodes are shut down; running tasks and stored objects are lost.',
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Stop' })]
    });
    if (result.button.accept) {
      await model.stop(cluster.name);
    }
  };

  return (
    <section
      className="jp-RayKube-cluster"
      data-cluster={cluster.name}
      data-state={cluster.state}
      aria-label={`Ray cluster ${cluster.name}`}
    >
      <header className="jp-RayKube-clusterHeader">
        <span className="jp-RayKube-clusterName" title={cluster.name}>
          {cluster.name}
        </span>
        <span className={`jp-RayKube-state jp-mod-${cluster.state}`}>{cluster.state}</span>
        <button
          className="jp-RayKube-iconButton jp-mod-warn"
          aria-label="Stop"
          title={`Stop ${cluster.name}`}
          disabled={busy || cluster.state === 'stopping' || cluster.state === 'stopped'}
          onClick={() => void stop()}
        >
          <stopIcon.react tag="span" className="jp-RayKube-icon" />
        </button>
      </header>
      {transitioning && (
        <div className="jp-RayKube-step" role="status">
          <span className="jp-RayKube-spinner" aria-hidden="true" />
          <span>{cluster.step || `${cluster.state}…`}</span>
        </div>
      )}
      {cluster.state === 'failed' && cluster.error && (
        <div className="jp-RayKube-clusterError">{cluster.error}</div>
      )}
      <table className="jp-RayKube-groups">
        <thead>
          <tr>
            <th>Group</th>
            <th title="Running nodes (and nodes starting or draining)">Nodes</th>
            <th>Min</th>
            <th>Max</th>
          </tr>
        </thead>
        <tbody>
          {head && (
            <tr data-group="head">
              <td>head</td>
              <td>{head.state}</td>
              <td />
              <td />
            </tr>
          )}
          {cluster.groups.map(group => (
            <GroupRow
              key={group.name}
              group={group}
              cluster={cluster}
              draft={drafts[group.name] ?? {}}
              errors={errors[group.name] ?? {}}
              disabled={!running || busy}
              onChange={(key, value) => setDraft(group.name, key, value)}
            />
          ))}
        </tbody>
      </table>
      {running && (
        <div className="jp-RayKube-scaleRow">
          <span className="jp-RayKube-hint">
            {Object.keys(changed).length && !invalid ? 'Apply the new node counts' : ''}
          </span>
          <button
            className="jp-RayKube-button jp-mod-accept"
            disabled={busy || invalid || Object.keys(changed).length === 0}
            onClick={() => void scale()}
            title="Apply the new min/max node counts"
          >
            Scale
          </button>
        </div>
      )}
      {cardError && (
        <div className="jp-RayKube-cardError" role="alert">
          <span className="jp-RayKube-errorText">{cardError}</span>
          <button
            className="jp-RayKube-dismiss"
            aria-label="Dismiss"
            title="Dismiss"
            onClick={() => model.clearClusterError(cluster.name)}
          >
            ×
          </button>
        </div>
      )}
      {cluster.policy.summary && (
        <div className="jp-RayKube-hint jp-RayKube-limits">Limits: {cluster.policy.summary}</div>
      )}
      {cluster.cost && (
        <div className="jp-RayKube-hint jp-RayKube-cost">Cost: {formatCost(cluster.cost)}</div>
      )}
      {formatQuota(cluster.quota) && (
        <div
          className="jp-RayKube-hint jp-RayKube-quota"
          title={`ResourceQuota ${cluster.quota!.name} of namespace ${cluster.quota!.namespace}: what all your Pods may request`}
        >
          Quota: {formatQuota(cluster.quota)}
        </div>
      )}
      <ResourceBars cluster={cluster} />
      <DemandList demand={cluster.demand} />
      <div className="jp-RayKube-actions">
        <button
          className="jp-RayKube-button"
          disabled={!running || !cluster.dashboard_url}
          onClick={() =>
            void commands.execute(CommandIDs.openDashboard, {
              name: cluster.name,
              url: cluster.dashboard_url
            })
          }
          title="Open the Ray dashboard in a tab"
        >
          Dashboard
        </button>
        <button
          className="jp-RayKube-button"
          disabled={!running}
          onClick={() =>
            void commands.execute(CommandIDs.insertConnectCode, { name: cluster.name })
          }
          title="Insert %raycluster attach into the active notebook cell"
        >
          Connect code
        </button>
      </div>
      {running && <JobList cluster={cluster.name} />}
      {running && <NodeLogs cluster={cluster.name} nodes={cluster.nodes} />}
      <EventList events={cluster.events} />
    </section>
  );
}

interface IRowErrors {
  min?: string;
  max?: string;
  /** The message came from the server. */
  server?: boolean;
}

/** Browser-side errors of the drafts, plus the server's message on the field it names. */
function rowErrors(groups: IGroup[], drafts: Drafts, serverMessage: string): Record<string, IRowErrors> {
  const errors: Record<string, IRowErrors> = {};
  for (const group of groups) {
    const draft = drafts[group.name];
    if (draft) {
      errors[group.name] = validateBounds(draft.min ?? String(group.min), draft.max ?? String(group.max));
    }
  }
  const parsed = serverMessage ? parseFieldError(serverMessage) : null;
  const parts = parsed?.path.split('.') ?? [];
  if (parsed && parts[0] === 'groups' && (parts[2] === 'min' || parts[2] === 'max')) {
    const bound = parts[2] as Bound;
    const text = `${bound === 'min' ? 'Min' : 'Max'}: ${parsed.allowed}`;
    errors[parts[1]] = { ...errors[parts[1]], [bound]: text, server: true };
  }
  return errors;
}

interface IGroupRowProps {
  group: IGroup;
  cluster: ICluster;
  draft: Partial<Record<Bound, string>>;
  errors: IRowErrors;
  disabled: boolean;
  onChange: (key: Bound, value: string) => void;
}

function GroupRow(props: IGroupRowProps): React.ReactElement {
  const { group, cluster, draft, errors, disabled, onChange } = props;
  const extra = [];
  if (group.starting) {
    extra.push(`${group.starting} starting`);
  }
  if (group.draining) {
    extra.push(`${group.draining} draining`);
  }
  const removals = cluster.nodes
    .filter(n => n.group === group.name)
    .map(n => secondsUntilRemoval(n, cluster))
    .filter((s): s is number => s !== null);
  if (removals.length) {
    extra.push(`${removals.length} idle, removed in ${formatDuration(Math.min(...removals))}`);
  }
  const input = (key: Bound) => (
    <input
      className="jp-mod-styled jp-RayKube-number"
      type="number"
      min={0}
      step="1"
      name={`${group.name}-${key}`}
      aria-label={`${group.name} ${key} nodes`}
      aria-invalid={!!errors[key]}
      title={errors[key] || `${group.name} ${key} nodes`}
      value={draft[key] ?? String(group[key])}
      disabled={disabled}
      onChange={e => onChange(key, e.target.value)}
    />
  );
  return (
    <>
      <tr
        data-group={group.name}
        data-running={group.nodes}
        data-starting={group.starting}
        title={formatResources(group.resources)}
      >
        <td className="jp-RayKube-groupName">
          {group.name}
          {formatPlacement(group.labels) && (
            <div className="jp-RayKube-hint jp-RayKube-placement">{formatPlacement(group.labels)}</div>
          )}
        </td>
        <td className="jp-RayKube-nodeCounts">
          <span className="jp-RayKube-running">{group.nodes}</span>
          {extra.length > 0 && <div className="jp-RayKube-hint">{extra.join(', ')}</div>}
        </td>
        <td>{input('min')}</td>
        <td>{input('max')}</td>
      </tr>
      {(errors.min || errors.max) && (
        <tr className="jp-RayKube-rowError" data-error-group={group.name}>
          <td colSpan={4}>
            <FieldError message={errors.min} />
            <FieldError message={errors.max} />
          </td>
        </tr>
      )}
    </>
  );
}

function Bar(props: { label: string; used: number; total: number; text: string; resource: string }) {
  const fraction = props.total > 0 ? Math.min(1, props.used / props.total) : 0;
  return (
    <div className="jp-RayKube-barRow" data-resource={props.resource}>
      <span className="jp-RayKube-barLabel">{props.label}</span>
      <span
        className="jp-RayKube-bar"
        title={`${props.label}: ${props.text}`}
        role="progressbar"
        aria-label={props.label}
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={Math.round(fraction * 100)}
      >
        <span className="jp-RayKube-barFill" style={{ width: `${fraction * 100}%` }} />
      </span>
      <span className="jp-RayKube-barText">{props.text}</span>
    </div>
  );
}

function ResourceBars({ cluster }: { cluster: ICluster }): React.ReactElement {
  const cpu = sumResource(cluster.nodes, 'CPU');
  const gpu = sumResource(cluster.nodes, 'GPU');
  const storeUsed = cluster.nodes.reduce((sum, n) => sum + n.object_store_used_bytes, 0);
  const storeTotal = cluster.nodes.reduce((sum, n) => sum + n.object_store_total_bytes, 0);
  const count = (r: { used: number; total: number }) =>
    `${formatNumber(r.used)} / ${formatNumber(r.total)}`;
  return (
    <div className="jp-RayKube-resources">
      <Bar label="CPU" resource="CPU" used={cpu.used} total={cpu.total} text={count(cpu)} />
      {canHaveGpus(cluster) && (
        <Bar label="GPU" resource="GPU" used={gpu.used} total={gpu.total} text={count(gpu)} />
      )}
      <Bar
        label="Object store"
        resource="object_store"
        used={storeUsed}
        total={storeTotal}
        text={`${formatBytes(storeUsed)} / ${formatBytes(storeTotal)}`}
      />
    </div>
  );
}

function DemandList({ demand }: { demand: IDemand[] }): React.ReactElement | null {
  if (demand.length === 0) {
    return null;
  }
  return (
    <div className="jp-RayKube-demand">
      <div className="jp-RayKube-sectionTitle">Pending</div>
      <ul>
        {demand.map((d, i) => (
          <li key={i} data-status={d.status}>
            <span className="jp-RayKube-shape">{d.label || formatResources(d.shape)}</span>
            <span className="jp-RayKube-count">×{d.count}</span>
            <span className={`jp-RayKube-demandStatus jp-mod-${d.status}`}>{d.status}</span>
            <span className="jp-RayKube-reason">{d.reason}</span>
          </li>
        ))}
      </ul>
    </div>
  );
}

function EventList({ events }: { events: IEvent[] }): React.ReactElement | null {
  if (events.length === 0) {
    return null;
  }
  return (
    <details className="jp-RayKube-events">
      <summary>Events ({events.length}, newest first)</summary>
      <ol>
        {newestFirst(events).map((e, i) => (
          <li key={i} data-kind={e.kind}>
            <time dateTime={e.time}>{formatTime(e.time)}</time> {e.message}
          </li>
        ))}
      </ol>
    </details>
  );
}

/** The groups whose min/max the user changed, with only the changed bound(s). */
function changedBounds(groups: IGroup[], drafts: Drafts): GroupBounds {
  const changed: GroupBounds = {};
  for (const group of groups) {
    const draft = drafts[group.name];
    for (const key of ['min', 'max'] as const) {
      const text = draft?.[key];
      if (text !== undefined && Number(text) !== group[key]) {
        changed[group.name] = { ...changed[group.name], [key]: Number(text) };
      }
    }
  }
  return changed;
}
