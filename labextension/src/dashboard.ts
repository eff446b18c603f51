/**
 * A cluster's Ray dashboard in a Lab tab. The dashboard's own page polls its API every few
 * seconds; once the cluster stops (or is gone), the tab says so and drops its iframe, so
 * nothing keeps polling a proxy route that no longer leads anywhere.
 */
import { IFrame } from '@jupyterlab/ui-components';

import type { ICluster } from './api';

export class DashboardView extends IFrame {
  constructor(
    readonly clusterName: string,
    url: string
  ) {
    // The dashboard is served by the server's proxy (same origin); it is a script app.
    super({ sandbox: ['allow-scripts', 'allow-same-origin'] });
    this.addClass('jp-RayKube-dashboard');
    this.url = url;
  }

  /** Whether the dashboard is gone (its cluster stopped). */
  get ended(): boolean {
    return this._ended;
  }

  /** Follow the cluster list: end the dashboard when this cluster stops or disappears. */
  follow(clusters: readonly ICluster[]): void {
    if (this._ended) {
      return;
    }
    const cluster = clusters.find(c => c.name === this.clusterName);
    const state = cluster?.state ?? 'stopped';
    if (state !== 'stopping' && state !== 'stopped' && state !== 'failed') {
      return;
    }
    this._ended = true;
    this.node.querySelector('iframe')?.remove();
    const notice = document.createElement('div');
    notice.className = 'jp-RayKube-dashboardEnded';
    notice.setAttribute('role', 'status');
    notice.textContent =
      `Ray cluster ${this.clusterName} is ${state}; its dashboard is no longer served. ` +
      'Close this tab, or open the dashboard of a running cluster from the sidebar.';
    this.node.appendChild(notice);
  }

  private _ended = false;
}
