/**
 * The sidebar's model: the user's clusters, kept fresh by a Poll over the REST API, plus
 * the actions (create, scale, stop). After every action the list is re-fetched from the
 * server instead of being patched locally. Errors are kept as messages for the view.
 */
import { VDomModel } from '@jupyterlab/ui-components';
import { Poll } from '@lumino/polling';

import {
  errorMessage,
  GroupBounds,
  ICluster,
  ICreateRequest,
  RayKubeAPI
} from './api';

/** Slowest poll interval while the API keeps failing (backoff ceiling). */
const MAX_INTERVAL_MS = 60_000;

/** An error to show: where it came from and the server's message. */
export interface IErrorMessage {
  /** "poll" for list refreshes, otherwise the action ("create alice-1", ...). */
  source: string;
  message: string;
}

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

  /** The last error to show, or null. */
  get error(): IErrorMessage | null {
    return this._error;
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

  /** Create a cluster; resolves to whether the server accepted it. */
  create(request: ICreateRequest): Promise<boolean> {
    return this._act(request.name, `create ${request.name}`, () =>
      this._api.createCluster(request)
    );
  }

  /** Set new min/max bounds for some groups of a cluster. */
  scale(name: string, groups: GroupBounds): Promise<boolean> {
    return this._act(name, `scale ${name}`, () => this._api.scaleCluster(name, groups));
  }

  /** Stop a cluster (its nodes are drained and removed by the server). */
  stop(name: string): Promise<boolean> {
    return this._act(name, `stop ${name}`, () => this._api.stopCluster(name));
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    super.dispose();
  }

  private async _act(
    name: string,
    source: string,
    action: () => Promise<unknown>
  ): Promise<boolean> {
    this._busy.add(name);
    this.stateChanged.emit();
    let ok = true;
    try {
      await action();
      if (this._error?.source === source) {
        this._error = null;
      }
    } catch (error) {
      ok = false;
      this._error = { source, message: `Could not ${source}: ${errorMessage(error)}` };
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
  private _busy = new Set<string>();
  private _active = false;
}
