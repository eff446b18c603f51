/**
 * A running cluster's Ray jobs in its sidebar card: state, entrypoint and start time of each,
 * a log view (the job's last lines, then its new output as the server hands it) and Stop. Everything goes
 * through the server extension's job routes (server/job_handlers.py), under Jupyter's auth.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import * as React from 'react';

import { errorMessage, requestAPI } from './api';
import { formatTime } from './format';

export type JobState = 'PENDING' | 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'STOPPED';

/** One Ray job (jobs.py `job_json`); times are epoch seconds. */
export interface IJob {
  id: string;
  state: JobState;
  entrypoint: string;
  start_time: number | null;
  end_time: number | null;
  message: string;
}

const FINAL: ReadonlySet<string> = new Set(['SUCCEEDED', 'FAILED', 'STOPPED']);
const LIST_INTERVAL_MS = 3000;
const LOG_LINES = 200;
/** How long the server holds each read of a running job's log for new output. */
const LOG_WAIT_S = 25;
const LOG_RETRY_MS = 3000;

function jobsPath(cluster: string, ...rest: string[]): string {
  return URLExt.join('clusters', encodeURIComponent(cluster), 'jobs', ...rest.map(encodeURIComponent));
}

/** Calls `tick` now and every `ms` until unmounted or the inputs change. */
function usePoll(tick: () => Promise<void>, ms: number, inputs: React.DependencyList): void {
  React.useEffect(() => {
    let active = true;
    const run = () => void (active ? tick() : undefined);
    run();
    const id = window.setInterval(run, ms);
    return () => {
      active = false;
      window.clearInterval(id);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, inputs);
}

export function JobList({ cluster }: { cluster: string }): React.ReactElement {
  const [jobs, setJobs] = React.useState<IJob[]>([]);
  const [error, setError] = React.useState('');
  const [shown, setShown] = React.useState<string | null>(null);

  const refresh = async () => {
    try {
      const reply = await requestAPI<{ jobs: IJob[] }>(jobsPath(cluster));
      setJobs(reply.jobs);
      setError('');
    } catch (e) {
      setError(errorMessage(e));
    }
  };
  usePoll(refresh, LIST_INTERVAL_MS, [cluster]);

  const stop = async (job: IJob) => {
    const result = await showDialog({
      title: `Stop job ${job.id}?`,
      body: job.entrypoint,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Stop job' })]
    });
    if (!result.button.accept) {
      return;
    }
    try {
      await requestAPI(jobsPath(cluster, job.id, 'stop'), { method: 'POST' });
    } catch (e) {
      setError(errorMessage(e));
    }
    await refresh();
  };

  return (
    <details className="jp-RayKube-jobs" open={jobs.length > 0}>
      <summary>Jobs ({jobs.length})</summary>
      {error && (
        <div className="jp-RayKube-cardError" role="alert">
          <span className="jp-RayKube-errorText">{error}</span>
        </div>
      )}
      {jobs.length === 0 ? (
        <div className="jp-RayKube-hint">No jobs yet: submit one with %rayjob or %%rayjob.</div>
      ) : (
        <ul className="jp-RayKube-jobList">
          {jobs.map(job => (
            <li key={job.id} data-job={job.id} data-state={job.state}>
              <span className={`jp-RayKube-jobState jp-mod-${job.state.toLowerCase()}`}>{job.state}</span>
              <span className="jp-RayKube-jobEntrypoint" title={`${job.id}: ${job.entrypoint}`}>
                {job.entrypoint}
              </span>
              <time className="jp-RayKube-jobTime">
                {job.start_time ? formatTime(new Date(job.start_time * 1000).toISOString()) : ''}
              </time>
              <button
                className="jp-RayKube-button"
                aria-pressed={shown === job.id}
                title={`Show the output of ${job.id}`}
                onClick={() => setShown(shown === job.id ? null : job.id)}
              >
                Logs
              </button>
              <button
                className="jp-RayKube-button jp-mod-warn"
                disabled={FINAL.has(job.state)}
                title={`Stop ${job.id}`}
                onClick={() => void stop(job)}
              >
                Stop
              </button>
            </li>
          ))}
        </ul>
      )}
      {shown && <JobLog cluster={cluster} job={shown} onClose={() => setShown(null)} />}
    </details>
  );
}

/** One answer of the logs route (job_logs.py): what follows the offset asked for. */
interface ILogPage {
  job: IJob;
  logs: string;
  /** Where the next read starts. */
  next_offset: number;
  /** Characters after the offset asked for that the server no longer keeps. */
  dropped?: number;
}

/** The last `count` lines of `text` (a trailing newline does not count as a line). */
function lastLines(text: string, count: number): string {
  const lines = text.split('\n');
  return lines.length > count + 1 ? lines.slice(-(count + 1)).join('\n') : text;
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise(resolve => {
    const id = window.setTimeout(resolve, ms);
    signal.addEventListener('abort', () => (window.clearTimeout(id), resolve()), { once: true });
  });
}

/**
 * Follows a job's output: its last lines first, then each read is held by the server until
 * the job prints more or ends (`?offset=N&wait=S`), so nothing is polled and nothing is read
 * twice. Stops when the job ends or the view closes (the read in flight is aborted).
 */
function useJobLog(cluster: string, job: string): { text: string; state: string; error: string } {
  const [text, setText] = React.useState('');
  const [state, setState] = React.useState('');
  const [error, setError] = React.useState('');
  React.useEffect(() => {
    const abort = new AbortController();
    const logs = jobsPath(cluster, job, 'logs');
    const follow = async () => {
      let shown = '';
      let query = `tail=${LOG_LINES}`;
      while (!abort.signal.aborted) {
        try {
          const page = await requestAPI<ILogPage>(`${logs}?${query}`, { signal: abort.signal });
          const gap = page.dropped ? `[… ${page.dropped} characters not kept by the server …]\n` : '';
          shown = lastLines(shown + gap + page.logs, LOG_LINES);
          setText(shown);
          setState(page.job.state);
          setError('');
          if (FINAL.has(page.job.state)) {
            return;
          }
          query = `offset=${page.next_offset}&wait=${LOG_WAIT_S}`;
        } catch (e) {
          if (abort.signal.aborted) {
            return;
          }
          setError(errorMessage(e));
          await pause(LOG_RETRY_MS, abort.signal);
        }
      }
    };
    void follow();
    return () => abort.abort();
  }, [cluster, job]);
  return { text, state, error };
}

function JobLog(props: { cluster: string; job: string; onClose: () => void }): React.ReactElement {
  const { text, state, error } = useJobLog(props.cluster, props.job);
  return (
    <div className="jp-RayKube-jobLog" data-job={props.job} data-state={state} aria-label={`Output of ${props.job}`}>
      <div className="jp-RayKube-jobLogHeader">
        <span className="jp-RayKube-sectionTitle">
          {props.job} ({state || '…'}), last {LOG_LINES} lines
        </span>
        <button className="jp-RayKube-dismiss" aria-label="Close the log" title="Close" onClick={props.onClose}>
          ×
        </button>
      </div>
      {error && (
        <div className="jp-RayKube-cardError" role="alert">
          <span className="jp-RayKube-errorText">{error}</span>
        </div>
      )}
      <pre className="jp-RayKube-jobLogText">{text}</pre>
    </div>
  );
}
