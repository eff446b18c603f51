/**
 * The REST client: every call to the jupyter_raykube server extension goes through
 * `requestAPI()`, which uses the server's auth (token + XSRF) via ServerConnection.
 * The interfaces mirror the TypedDicts of jupyter_raykube/snapshot.py (the snapshot) and
 * spec.py `ClusterSpec.to_dict()` (a request) field for field.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export type ClusterState = 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';
export type NodeState = 'starting' | 'running' | 'draining';
export type DemandStatus = 'waiting' | 'capped' | 'infeasible';

/** Resource name to amount, e.g. `{CPU: 1, memory: 2e9}`. */
export type Resources = Record<string, number>;

/** One worker group of a cluster, with its node counts (snapshot.py `GroupJson`). */
export interface IGroup {
  name: string;
  min: number;
  max: number;
  /** What one node of the group offers (memory only when the group sets it). */
  resources: Resources;
  /** Ray node labels of its nodes (ray.io/accelerator-type, ray.io/market-type, its own). */
  labels: Record<string, string>;
  /** Nodes of the group that are running. */
  nodes: number;
  starting: number;
  draining: number;
}

/** One Ray node, the head or a worker (snapshot.py `NodeJson`). */
export interface INode {
  id: string;
  name: string;
  group: string;
  state: NodeState;
  head: boolean;
  resources_total: Resources;
  resources_used: Resources;
  object_store_used_bytes: number;
  object_store_total_bytes: number;
  /** Seconds Ray has seen the node idle (0 while busy). */
  idle_s: number;
  activity: string[];
  message: string;
  age_s: number;
}

/** A pending resource shape and why it is not served yet (reconciler.py `describe_pending`). */
export interface IDemand {
  kind: 'task' | 'placement_group' | 'request_resources';
  shape: Resources;
  /** Present for placement groups: the gang's bundles. */
  bundles?: Resources[];
  label: string;
  count: number;
  status: DemandStatus;
  reason: string;
}

/** One autoscaler or lifecycle event; `time` is ISO 8601 in UTC (snapshot.py `EventJson`). */
export interface IEvent {
  id: number;
  time: string;
  kind: string;
  message: string;
}

/** The administrator's caps (policy.py `Policy.to_json()` + `summary`). */
export interface IPolicy {
  max_clusters: number | null;
  max_cpus: number | null;
  max_gpus: number | null;
  max_workers: number | null;
  max_lifetime_s: number | null;
  idle_scale_down_s: number | null;
  idle_stop_s: number | null;
  budget: number | null;
  /** One line for people; empty without limits. */
  summary: string;
}

/** A cluster snapshot (snapshot.py `SnapshotJson`), oldest event first. Extend-only. */
export interface ICluster {
  name: string;
  backend: string;
  state: ClusterState;
  step: string;
  error: string;
  owner: string;
  owned_here: boolean;
  address: string;
  client_address: string;
  image: string;
  dashboard_url: string;
  ray_version: string;
  python_version: string;
  created_at: number | null;
  idle_timeout_s: number;
  /** Seconds the whole cluster has been idle. */
  idle_s: number;
  policy: IPolicy;
  max_workers: number | null;
  groups: IGroup[];
  nodes: INode[];
  demand: IDemand[];
  events: IEvent[];
  /** When a group is priced or the policy sets a budget (cost.py `CostJson`). */
  cost: ICost | null;
  /** The namespace's ResourceQuota `raykube` (snapshot.py `QuotaJson`); null: none. */
  quota: IQuota | null;
}

/** The platform's limit on everything the user runs, which their own config cannot raise. */
export interface IQuota {
  name: string;
  namespace: string;
  /** Base units: cores, bytes, devices, objects. */
  resources: { resource: string; used: number; hard: number }[];
}

/** What the cluster costs, in the unit of the groups' `cost` per node-hour. */
export interface ICost {
  per_hour: number;
  so_far: number;
  /** All of the user's clusters on this server. */
  user_so_far: number;
  budget: number | null;
}

/** A worker group as a request states it (spec.py `WorkerGroup`). */
export interface IGroupSpec {
  name: string;
  cpus: number;
  gpus: number;
  memory: number | null;
  object_store_memory: number | null;
  custom: Resources;
  min: number;
  max: number;
  cost: number | null;
  /** null: the cluster's idle timeout. */
  idle_timeout_s: number | null;
  labels: Record<string, string>;
}

/** A whole cluster request (spec.py `ClusterSpec.to_dict()`), as `GET /` `defaults` gives it. */
export interface IClusterSpec {
  name: string;
  backend: string;
  head: { cpus: number; memory: number | null; object_store_memory: number | null };
  groups: IGroupSpec[];
  idle_timeout_s: number;
  max_workers: number | null;
  image: string | null;
  labels: Record<string, string>;
  env: Record<string, string>;
}

/** `GET /`: who owns the clusters and what a new one gets (with the next free name). */
export interface IServerInfo {
  owner: string;
  backend: string;
  max_clusters: number | null;
  defaults: IClusterSpec;
}

/** Changed fields of one group, the shape PATCH and POST share. */
export type GroupChanges = Record<string, Partial<Omit<IGroupSpec, 'name'>>>;

/** Body of `POST clusters`: only what differs from the server's defaults. */
export interface ICreateRequest {
  name?: string;
  groups?: GroupChanges;
  idle_timeout_s?: number;
}

/** Body of `PATCH clusters/{name}`: new bounds per group name. */
export type GroupBounds = Record<string, { min?: number; max?: number }>;

/**
 * Call the raykube REST API.
 *
 * @param endPoint - path below `{base}raykube/api/`
 * @param init - fetch options (method, body)
 * @returns the decoded JSON body (undefined for an empty body, e.g. 204)
 * @throws ServerConnection.NetworkError when the server cannot be reached, and
 *   ServerConnection.ResponseError (message: the server's `message`) for non-2xx replies.
 */
export async function requestAPI<T>(
  endPoint: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, 'raykube', 'api', endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = undefined;
  let isJSON = false;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
      isJSON = true;
    } catch (error) {
      // Not JSON: e.g. the HTML 404 page when the server extension is not enabled.
    }
  }
  if (!response.ok) {
    const message =
      (isJSON && data && (data.message || data.reason)) ||
      `${response.status} ${response.statusText || 'error'} from ${url}`;
    throw new ServerConnection.ResponseError(response, message);
  }
  if (text.length > 0 && !isJSON) {
    throw new ServerConnection.ResponseError(response, `the reply from ${url} is not JSON`);
  }
  return data as T;
}

/** Typed functions over the cluster endpoints. */
export class RayKubeAPI {
  constructor(
    readonly serverSettings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  /** The owner, backend and the default request (with the next free name). */
  info(): Promise<IServerInfo> {
    return this._request<IServerInfo>('');
  }

  async listClusters(): Promise<ICluster[]> {
    const reply = await this._request<{ clusters: ICluster[] }>('clusters');
    return reply.clusters;
  }

  getCluster(name: string): Promise<ICluster> {
    return this._request<ICluster>(clusterPath(name));
  }

  createCluster(request: ICreateRequest): Promise<ICluster> {
    return this._request<ICluster>('clusters', {
      method: 'POST',
      body: JSON.stringify(request)
    });
  }

  scaleCluster(name: string, groups: GroupBounds): Promise<ICluster> {
    return this._request<ICluster>(clusterPath(name), {
      method: 'PATCH',
      body: JSON.stringify({ groups })
    });
  }

  async stopCluster(name: string): Promise<void> {
    await this._request<void>(clusterPath(name), { method: 'DELETE' });
  }

  async clusterEvents(name: string): Promise<IEvent[]> {
    const reply = await this._request<{ events: IEvent[] }>(
      URLExt.join(clusterPath(name), 'events')
    );
    return reply.events;
  }

  private _request<T>(endPoint: string, init: RequestInit = {}): Promise<T> {
    return requestAPI<T>(endPoint, init, this.serverSettings);
  }
}

function clusterPath(name: string): string {
  return URLExt.join('clusters', encodeURIComponent(name));
}

/** The human message of an error thrown by `requestAPI` (or anything else). */
export function errorMessage(error: unknown): string {
  if (error instanceof ServerConnection.ResponseError) {
    return error.message || `${error.response.status} ${error.response.statusText}`;
  }
  if (error instanceof Error) {
    return error.message;
  }
  return String(error);
}
