/**
 * The sidebar's model: the user's clusters, kept fresh by a Poll over the REST API, the
 * server's default request for the create form, and the actions (create, scale, stop).
 * After every action the list is re-fetched from the server instead of being patched locally.
 * An action's error belongs to the cluster it was about (the view shows it on that card);
 * only a failed list refresh is a panel-wide banner.
 */
import { VDomModel } from '@jupyterlab/ui-components';
import { Poll } from '@lumino/polling';

import {
  errorMessage,
  GroupBounds,
  ICluster,
  ICreateRequest,
  IServerInfo,
  RayKubeAPI
} from './api';

/** Slowest poll interval while the API keeps failing (backoff ceiling). */
const MAX_INTERVAL_MS = 60_000;

/** An error to show: where it came from and the server's message. */
export interface IErrorMessage {
  /** "poll" for list refreshes, "info" for the server's defaults. */
  source: string;
  message: string;
}

/** What a create attempt gave: ok, or the server's message for the form to place. */
export type CreateResult = { ok: true; name: string } | { ok: false; message: string };

export class ClusterListModel extends VDomModel {
  constructor(
    private readonly _api: RayKubeAPI,
    interval = 2000
  ) {
    super();
    this._poll = new Poll<ICluster[], unknown>({
      name: 'jupyter-raykube:clusters',
      factory: () => this._api.listClusters(),
      frequency: { interval, backoff: true, max: MAX_INTERVAL_MS },
      // Rest while nobody looks: the panel is collapsed or the browser tab is hidden.
      standby: () => !this._active || 'when-hidden'
    });
    this._poll.ticked.connect((_, state) => {
      if (state.phase === 'resolved') {
        this._clusters = (state.payload as ICluster[] | null) ?? [];
        this._loaded = true;
        if (this._error?.source === 'poll') {
          this._error = null;
        }
        this.stateChanged.emit();
      } else if (state.phase === 'rejected') {
        // Keep the last list; say why it is stale.
        this._error = {
          source: 'poll',
          message: `Cannot list Ray clusters: ${errorMessage(state.payload)}`
        };
        this.stateChanged.emit();
      }
    });
  }

  /** The clusters from the last successful poll. */
  get clusters(): readonly ICluster[] {
    return this._clusters;
  }

  /** Whether the list has been fetched at least once. */
  get loaded(): boolean {
    return this._loaded;
  }

  /** The last panel-wide error (a failed refresh), or null. */
  get error(): IErrorMessage | null {
    return this._error;
  }

  /** The server's owner, backend and default request; null until fetched. */
  get info(): IServerInfo | null {
    return this._info;
  }

  /** The last failed action on a cluster (scale, stop), for its card; '' when none. */
  clusterError(name: string): string {
    return this._clusterErrors.get(name) ?? '';
  }

  /** Forget a card's error (its dismiss button). */
  clearClusterError(name: string): void {
    this._clusterErrors.delete(name);
    this.stateChanged.emit();
  }

  /** Fetch the default request again (its suggested name changes after every create). */
  async loadInfo(): Promise<void> {
    try {
      this._info = await this._api.info();
      if (this._error?.source === 'info') {
        this._error = null;
      }
    } catch (error) {
      this._error = {
        source: 'info',
        message: `Cannot read the server's cluster defaults: ${errorMessage(error)}`
      };
    }
    this.stateChanged.emit();
  }

  /** Names of clusters with an action in flight (their buttons are disabled). */
  get busy(): ReadonlySet<string> {
    return this._busy;
  }

  /** Poll interval in ms (from the settings). */
  get interval(): number {
    return this._poll.frequency.interval;
  }
  set interval(ms: number) {
    this._poll.frequency = { interval: ms, backoff: true, max: MAX_INTERVAL_MS };
  }

  /** Whether the list is on screen; polling rests while it is not. */
  get active(): boolean {
    return this._active;
  }
  set active(value: boolean) {
    if (value === this._active) {
      return;
    }
    this._active = value;
    if (value) {
      void this._poll.refresh();
      if (!this._info) {
        void this.loadInfo();
      }
    }
  }

  clearError(): void {
    this._error = null;
    this.stateChanged.emit();
  }

  /** Re-fetch the list now. */
  async refresh(): Promise<void> {
    await this._poll.refresh();
    await this._poll.tick;
  }

  /** Create a cluster from the changes to the defaults; errors go back to the form. */
  async create(request: ICreateRequest): Promise<CreateResult> {
    let result: CreateResult;
    try {
      const cluster = await this._api.createCluster(request);
      result = { ok: true, name: cluster.name };
    } catch (error) {
      result = { ok: false, message: errorMessage(error) };
    }
    await Promise.all([this.refresh(), result.ok ? this.loadInfo() : Promise.resolve()]);
    return result;
  }

  /** Set new min/max bounds for some groups of a cluster. */
  scale(name: string, groups: GroupBounds): Promise<boolean> {
    return this._act(name, () => this._api.scaleCluster(name, groups));
  }

  /** Stop a cluster (its nodes are drained and removed by the server). */
  stop(name: string): Promise<boolean> {
    return this._act(name, () => this._api.stopCluster(name));
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    super.dispose();
  }

  private async _act(name: string, action: () => Promise<unknown>): Promise<boolean> {
    this._busy.add(name);
    this._clusterErrors.delete(name);
    this.stateChanged.emit();
    let ok = true;
    try {
      await action();
    } catch (error) {
      ok = false;
      this._clusterErrors.set(name, errorMessage(error));
    } finally {
      this._busy.delete(name);
    }
    this.stateChanged.emit();
    await this.refresh();
    return ok;
  }

  private _poll: Poll<ICluster[], unknown>;
  private _clusters: ICluster[] = [];
  private _loaded = false;
  private _error: IErrorMessage | null = null;
  private _info: IServerInfo | null = null;
  private _clusterErrors = new Map<string, string>();
  private _busy = new Set<string>();
  private _active = false;
}
