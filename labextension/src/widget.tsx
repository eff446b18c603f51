/**
 * The sidebar view. It only reads the model's getters and calls the model (create, scale,
 * stop) or commands (dashboard, connect code); it holds no REST or lifecycle logic.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import {
  refreshIcon,
  stopIcon,
  ToolbarButtonComponent,
  VDomRenderer
} from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { Message } from '@lumino/messaging';
import * as React from 'react';

import { GroupBounds, ICluster, IDemand, IEvent, IGroup, INode } from './api';
import { CommandIDs } from './commands';
import { rayIcon } from './icon';
import { ClusterListModel } from './model';

/** Initial values of the create form (from the settings). */
export interface IFormDefaults {
  cpuMin: number;
  cpuMax: number;
  workerCpus: number;
  gpuMin: number;
  gpuMax: number;
  idleTimeout: number | null;
}

export const DEFAULT_FORM: IFormDefaults = {
  cpuMin: 0,
  cpuMax: 4,
  workerCpus: 1,
  gpuMin: 0,
  gpuMax: 0,
  idleTimeout: null
};

export class ClusterPanel extends VDomRenderer<ClusterListModel> {
  constructor(model: ClusterListModel, commands: CommandRegistry) {
    super(model);
    this._commands = commands;
    this.id = 'raykube-sidebar';
    this.addClass('jp-RayKube');
    this.title.icon = rayIcon;
    this.title.caption = 'Ray clusters';
  }

  get defaults(): IFormDefaults {
    return this._defaults;
  }
  set defaults(value: IFormDefaults) {
    this._defaults = value;
    this.update();
  }

  /** Open the create form and put the cursor in its name field. */
  focusCreateForm(): void {
    this._focusRequest += 1;
    this.update();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.model.active = true;
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.model.active = false;
  }

  protected render(): React.ReactElement {
    return (
      <ClusterList
        model={this.model}
        commands={this._commands}
        defaults={this._defaults}
        focusRequest={this._focusRequest}
      />
    );
  }

  private _commands: CommandRegistry;
  private _defaults: IFormDefaults = DEFAULT_FORM;
  private _focusRequest = 0;
}

interface IListProps {
  model: ClusterListModel;
  commands: CommandRegistry;
  defaults: IFormDefaults;
  focusRequest: number;
}

function ClusterList(props: IListProps): React.ReactElement {
  const { model, commands } = props;
  const error = model.error;
  return (
    <div className="jp-RayKube-body">
      <div className="jp-RayKube-header">
        <h2 className="jp-RayKube-title">Ray clusters</h2>
        <ToolbarButtonComponent
          icon={refreshIcon}
          tooltip="Refresh clusters"
          onClick={() => void commands.execute(CommandIDs.refresh)}
        />
      </div>
      {error && (
        <div className="jp-RayKube-error" role="alert">
          <span className="jp-RayKube-errorText">{error.message}</span>
          <button
            className="jp-RayKube-dismiss"
            aria-label="Dismiss"
            title="Dismiss"
            onClick={() => model.clearError()}
          >
            ×
          </button>
        </div>
      )}
      <CreateForm model={model} defaults={props.defaults} focusRequest={props.focusRequest} />
      <div className="jp-RayKube-clusters">
        {!model.loaded && !error && <div className="jp-RayKube-empty">Loading clusters…</div>}
        {model.loaded && model.clusters.length === 0 && (
          <div className="jp-RayKube-empty">No Ray clusters yet. Start one above.</div>
        )}
        {model.clusters.map(cluster => (
          <ClusterCard
            key={cluster.name}
            cluster={cluster}
            model={model}
            commands={commands}
            busy={model.busy.has(cluster.name)}
          />
        ))}
      </div>
    </div>
  );
}

// --- create form --------------------------------------------------------------------------

interface IFormProps {
  model: ClusterListModel;
  defaults: IFormDefaults;
  focusRequest: number;
}

function CreateForm({ model, defaults, focusRequest }: IFormProps): React.ReactElement {
  const [open, setOpen] = React.useState(true);
  const [name, setName] = React.useState('');
  const [cpuMin, setCpuMin] = React.useState(String(defaults.cpuMin));
  const [cpuMax, setCpuMax] = React.useState(String(defaults.cpuMax));
  const [workerCpus, setWorkerCpus] = React.useState(String(defaults.workerCpus));
  const [gpuMin, setGpuMin] = React.useState(String(defaults.gpuMin));
  const [gpuMax, setGpuMax] = React.useState(String(defaults.gpuMax));
  const [submitting, setSubmitting] = React.useState(false);
  const nameInput = React.useRef<HTMLInputElement>(null);

  React.useEffect(() => {
    setCpuMin(String(defaults.cpuMin));
    setCpuMax(String(defaults.cpuMax));
    setWorkerCpus(String(defaults.workerCpus));
    setGpuMin(String(defaults.gpuMin));
    setGpuMax(String(defaults.gpuMax));
  }, [defaults]);

  React.useEffect(() => {
    if (focusRequest > 0) {
      setOpen(true);
      // The input exists once the <details> is open.
      requestAnimationFrame(() => nameInput.current?.focus());
    }
  }, [focusRequest]);

  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    setSubmitting(true);
    const ok = await model.create({
      name: name.trim(),
      groups: [
        { name: 'cpu', min: toInt(cpuMin), max: toInt(cpuMax), cpus: toNumber(workerCpus) },
        { name: 'gpu', min: toInt(gpuMin), max: toInt(gpuMax) }
      ],
      ...(defaults.idleTimeout !== null ? { idle_timeout_s: defaults.idleTimeout } : {})
    });
    setSubmitting(false);
    if (ok) {
      setName('');
    }
  };

  return (
    <details
      className="jp-RayKube-create"
      open={open}
      onToggle={event => setOpen((event.target as HTMLDetailsElement).open)}
    >
      <summary>New cluster</summary>
      <form className="jp-RayKube-form" onSubmit={submit}>
        <label className="jp-RayKube-label" htmlFor="raykube-new-name">
          Name
        </label>
        <input
          id="raykube-new-name"
          ref={nameInput}
          className="jp-mod-styled jp-RayKube-nameInput"
          name="name"
          placeholder="e.g. ray-1"
          autoComplete="off"
          spellCheck={false}
          value={name}
          onChange={e => setName(e.target.value)}
        />
        <span className="jp-RayKube-label">CPU nodes</span>
        <span className="jp-RayKube-range">
          <NumberInput name="cpu-min" label="CPU nodes min" value={cpuMin} onChange={setCpuMin} />
          <span className="jp-RayKube-dash">–</span>
          <NumberInput name="cpu-max" label="CPU nodes max" value={cpuMax} onChange={setCpuMax} />
        </span>
        <label className="jp-RayKube-label" htmlFor="raykube-new-worker-cpus">
          CPUs per node
        </label>
        <NumberInput
          id="raykube-new-worker-cpus"
          name="worker-cpus"
          label="CPUs per CPU node"
          value={workerCpus}
          onChange={setWorkerCpus}
          step="any"
        />
        <span className="jp-RayKube-label">GPU nodes</span>
        <span className="jp-RayKube-range">
          <NumberInput name="gpu-min" label="GPU nodes min" value={gpuMin} onChange={setGpuMin} />
          <span className="jp-RayKube-dash">–</span>
          <NumberInput name="gpu-max" label="GPU nodes max" value={gpuMax} onChange={setGpuMax} />
        </span>
        <span />
        <button
          type="submit"
          className="jp-RayKube-button jp-mod-accept"
          disabled={submitting || !name.trim()}
        >
          {submitting ? 'Creating…' : 'Create'}
        </button>
      </form>
    </details>
  );
}

interface INumberInputProps {
  id?: string;
  name: string;
  label: string;
  value: string;
  onChange: (value: string) => void;
  step?: string;
  disabled?: boolean;
}

function NumberInput(props: INumberInputProps): React.ReactElement {
  return (
    <input
      id={props.id}
      className="jp-mod-styled jp-RayKube-number"
      type="number"
      min={0}
      step={props.step ?? '1'}
      name={props.name}
      aria-label={props.label}
      title={props.label}
      value={props.value}
      disabled={props.disabled}
      onChange={e => props.onChange(e.target.value)}
    />
  );
}

// --- one cluster --------------------------------------------------------------------------

interface ICardProps {
  cluster: ICluster;
  model: ClusterListModel;
  commands: CommandRegistry;
  busy: boolean;
}

function ClusterCard({ cluster, model, commands, busy }: ICardProps): React.ReactElement {
  // Unsaved min/max edits per group; polled values show where there is no edit.
  const [drafts, setDrafts] = React.useState<Record<string, { min?: string; max?: string }>>({});
  const changed = changedBounds(cluster.groups, drafts);
  const transitioning = cluster.state === 'starting' || cluster.state === 'stopping';
  const running = cluster.state === 'running';
  const head = cluster.nodes.find(node => node.head);

  const setDraft = (group: string, key: 'min' | 'max', value: string) =>
    setDrafts(d => ({ ...d, [group]: { ...d[group], [key]: value } }));

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
        <span className="jp-RayKube-clusterName" title={cluster.address}>
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
            <th title="Running nodes (and nodes starting or draining)">Running</th>
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
              draft={drafts[group.name] ?? {}}
              disabled={!running || busy}
              onChange={(key, value) => setDraft(group.name, key, value)}
            />
          ))}
        </tbody>
      </table>
      {running && (
        <div className="jp-RayKube-scaleRow">
          <span className="jp-RayKube-hint">
            {Object.keys(changed).length ? 'Apply the new node counts' : ''}
          </span>
          <button
            className="jp-RayKube-button jp-mod-accept"
            disabled={busy || Object.keys(changed).length === 0}
            onClick={() => void scale()}
            title="Apply the new min/max node counts"
          >
            Scale
          </button>
        </div>
      )}
      {cluster.policy?.summary && (
        <div className="jp-RayKube-hint jp-RayKube-limits">
          Limits: {cluster.policy.summary}
        </div>
      )}
      <ResourceSummary nodes={cluster.nodes} />
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
      <EventList events={cluster.events} />
    </section>
  );
}

interface IGroupRowProps {
  group: IGroup;
  draft: { min?: string; max?: string };
  disabled: boolean;
  onChange: (key: 'min' | 'max', value: string) => void;
}

function GroupRow({ group, draft, disabled, onChange }: IGroupRowProps): React.ReactElement {
  const extra = [];
  if (group.starting) {
    extra.push(`+${group.starting} starting`);
  }
  if (group.draining) {
    extra.push(`${group.draining} draining`);
  }
  return (
    <tr
      data-group={group.name}
      data-running={group.nodes}
      data-starting={group.starting}
      title={formatResources(group.resources)}
    >
      <td>{group.name}</td>
      <td className="jp-RayKube-nodeCounts">
        <span className="jp-RayKube-running">{group.nodes}</span>
        {extra.length > 0 && <span className="jp-RayKube-hint"> {extra.join(', ')}</span>}
      </td>
      <td>
        <NumberInput
          name={`${group.name}-min`}
          label={`${group.name} min nodes`}
          value={draft.min ?? String(group.min)}
          disabled={disabled}
          onChange={value => onChange('min', value)}
        />
      </td>
      <td>
        <NumberInput
          name={`${group.name}-max`}
          label={`${group.name} max nodes`}
          value={draft.max ?? String(group.max)}
          disabled={disabled}
          onChange={value => onChange('max', value)}
        />
      </td>
    </tr>
  );
}

function ResourceSummary({ nodes }: { nodes: INode[] }): React.ReactElement {
  const cpu = sumResource(nodes, 'CPU');
  const gpu = sumResource(nodes, 'GPU');
  const storeUsed = nodes.reduce((sum, n) => sum + (n.object_store_used_bytes || 0), 0);
  const storeTotal = nodes.reduce((sum, n) => sum + (n.object_store_total_bytes || 0), 0);
  const fraction = storeTotal > 0 ? Math.min(1, storeUsed / storeTotal) : 0;
  return (
    <div className="jp-RayKube-resources">
      <span className="jp-RayKube-resource" data-resource="CPU">
        CPU {formatNumber(cpu.used)} / {formatNumber(cpu.total)}
      </span>
      <span className="jp-RayKube-resource" data-resource="GPU">
        GPU {formatNumber(gpu.used)} / {formatNumber(gpu.total)}
      </span>
      <div
        className="jp-RayKube-store"
        title={`Object store: ${formatBytes(storeUsed)} of ${formatBytes(storeTotal)} used`}
      >
        <span className="jp-RayKube-storeLabel">Object store</span>
        <span
          className="jp-RayKube-bar"
          role="progressbar"
          aria-valuemin={0}
          aria-valuemax={100}
          aria-valuenow={Math.round(fraction * 100)}
        >
          <span className="jp-RayKube-barFill" style={{ width: `${fraction * 100}%` }} />
        </span>
        <span className="jp-RayKube-storeText">
          {formatBytes(storeUsed)} / {formatBytes(storeTotal)}
        </span>
      </div>
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
  const recent = events.slice(-10).reverse();
  return (
    <details className="jp-RayKube-events">
      <summary>Events ({events.length})</summary>
      <ol>
        {recent.map((e, i) => (
          <li key={i} data-kind={e.kind}>
            <time dateTime={e.time}>{formatTime(e.time)}</time> {e.message}
          </li>
        ))}
      </ol>
    </details>
  );
}

// --- formatting helpers -------------------------------------------------------------------

function changedBounds(
  groups: IGroup[],
  drafts: Record<string, { min?: string; max?: string }>
): GroupBounds {
  const changed: GroupBounds = {};
  for (const group of groups) {
    const draft = drafts[group.name];
    if (!draft) {
      continue;
    }
    const min = draft.min !== undefined ? toInt(draft.min) : group.min;
    const max = draft.max !== undefined ? toInt(draft.max) : group.max;
    if (min !== group.min || max !== group.max) {
      changed[group.name] = { min, max };
    }
  }
  return changed;
}

function sumResource(nodes: INode[], key: string): { used: number; total: number } {
  let used = 0;
  let total = 0;
  for (const node of nodes) {
    used += node.resources_used?.[key] ?? 0;
    total += node.resources_total?.[key] ?? 0;
  }
  return { used, total };
}

/** An integer from a form field; NaN (sent as null) lets the server name the bad field. */
function toInt(value: string): number {
  return value.trim() === '' ? NaN : Math.trunc(Number(value));
}

function toNumber(value: string): number {
  return value.trim() === '' ? NaN : Number(value);
}

function formatNumber(value: number): string {
  return Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/\.?0+$/, '');
}

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

function formatResources(resources: Record<string, number>): string {
  const parts = Object.entries(resources)
    .filter(([key]) => key !== 'memory')
    .map(([key, value]) => `${key}: ${formatNumber(value)}`);
  return `{${parts.join(', ')}}`;
}

function formatTime(iso: string): string {
  const date = new Date(iso);
  return isNaN(date.getTime()) ? iso : date.toLocaleTimeString();
}
