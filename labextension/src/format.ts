/**
 * The sidebar's only number, byte, duration and time formatting, with the same rules as
 * jupyter_raykube/formatting.py (the notebook widget): GiB for bytes, at most 2 decimals,
 * local clock time, newest event first. One module, so the widget and the sidebar agree.
 */
import type { ICluster, ICost, IEvent, IGroup, INode, IQuota, Resources } from './api';

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** `4` for integers, else at most two decimals without trailing zeros (`0.5`, `1.25`). */
export function formatNumber(value: number): string {
  if (!Number.isFinite(value)) {
    return '-';
  }
  return Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/\.?0+$/, '');
}

/** Binary units, at most one decimal: `512 B`, `1.5 GiB`, `4 GiB`. */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0
    ? `${Math.round(value)} B`
    : `${formatNumber(Math.round(value * 10) / 10)} ${BYTE_UNITS[unit]}`;
}

/** Whole seconds, minutes and hours: `40 s`, `3 min 5 s`, `2 h 10 min`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  if (s < 3600) {
    const rest = s % 60;
    return rest ? `${Math.floor(s / 60)} min ${rest} s` : `${s / 60} min`;
  }
  const minutes = Math.floor((s % 3600) / 60);
  return minutes ? `${Math.floor(s / 3600)} h ${minutes} min` : `${s / 3600} h`;
}

/** An ISO time (UTC) as the browser's local clock time. */
export function formatTime(iso: string): string {
  const date = new Date(iso);
  return isNaN(date.getTime()) ? iso : date.toLocaleTimeString();
}

/** `{CPU: 1, GPU: 1}`: a resource shape without the memory keys. */
export function formatResources(resources: Resources): string {
  const parts = Object.entries(resources)
    .filter(([key]) => key !== 'memory' && key !== 'object_store_memory')
    .map(([key, value]) => `${key}: ${formatNumber(value)}`);
  return `{${parts.join(', ')}}`;
}

/** The last `count` events, newest first (the snapshot lists them oldest first). */
export function newestFirst(events: readonly IEvent[], count = 10): IEvent[] {
  return events.slice(-count).reverse();
}

/** Used and total of one resource over some nodes. */
export function sumResource(nodes: readonly INode[], key: string): { used: number; total: number } {
  let used = 0;
  let total = 0;
  for (const node of nodes) {
    used += node.resources_used[key] ?? 0;
    total += node.resources_total[key] ?? 0;
  }
  return { used, total };
}

/** Whether any node could ever carry a GPU: a group may grow GPU nodes, or a node has one. */
export function canHaveGpus(cluster: ICluster): boolean {
  return (
    cluster.groups.some((g: IGroup) => g.max > 0 && (g.resources.GPU ?? 0) > 0) ||
    cluster.nodes.some(n => (n.resources_total.GPU ?? 0) > 0)
  );
}

/**
 * Seconds until the reconciler removes an idle worker node, or null when it will not: the
 * head, a busy node, a node not running, or a group already at its min. Uses the cluster's
 * idle timeout (the snapshot's groups do not carry their own).
 */
export function secondsUntilRemoval(node: INode, cluster: ICluster): number | null {
  if (node.head || node.state !== 'running' || node.idle_s <= 0) {
    return null;
  }
  const group = cluster.groups.find(g => g.name === node.group);
  if (!group || group.nodes <= group.min) {
    return null;
  }
  return Math.max(0, cluster.idle_timeout_s - node.idle_s);
}

/** `2.4/h now, 0.35 so far; 3.1 of your budget of 10` (formatting.py `cost_text`), or ''. */
export function formatCost(cost: ICost | null | undefined): string {
  if (!cost) {
    return '';
  }
  let text = `${formatNumber(cost.per_hour)}/h now, ${formatNumber(cost.so_far)} so far`;
  if (cost.budget !== null) {
    text += `; ${formatNumber(cost.user_so_far)} of your budget of ${formatNumber(cost.budget)}`;
  }
  return text;
}

const PLACEMENT_LABELS = ['ray.io/accelerator-type', 'ray.io/market-type'];

/** `A100, spot`: what a group's nodes run on (formatting.py `placement_text`); '' if unsaid. */
export function formatPlacement(labels: Record<string, string> | undefined): string {
  return PLACEMENT_LABELS.map(k => labels?.[k] ?? '')
    .filter(v => v)
    .join(', ');
}

const DEVICE_WORDS: Record<string, string> = { gpu: 'GPUs', tpu: 'TPUs' };

/**
 * `2 of 4 GPUs used, 6 of 16 CPUs, 20 of 64 GiB memory, 3 of 20 pods` (formatting.py
 * `quota_text`, the same rules): accelerators first, then CPUs, memory in the unit of its
 * limit, Pods; keys without words are left out. '' without a quota.
 */
export function formatQuota(quota: IQuota | null | undefined): string {
  if (!quota) {
    return '';
  }
  const byKey = new Map(quota.resources.map(r => [r.resource, r]));
  const of = (used: number, hard: number, word: string) =>
    `${formatNumber(used)} of ${formatNumber(hard)} ${word}`;
  const accelerators = [...byKey.keys()]
    .filter(k => k.startsWith('requests.') && k.includes('/'))
    .sort();
  const words = accelerators.map(k => {
    const name = k.slice('requests.'.length);
    return DEVICE_WORDS[name.slice(name.lastIndexOf('/') + 1)] ?? name;
  });
  const parts: string[] = [];
  accelerators.forEach((key, i) => {
    let word = words[i];
    if (words.filter(w => w === word).length > 1) {
      word = `${key.slice('requests.'.length).split('/')[0]} ${word}`; // two vendors' GPUs: say whose
    }
    parts.push(of(byKey.get(key)!.used, byKey.get(key)!.hard, word));
  });
  const cpu = byKey.get('requests.cpu') ?? byKey.get('cpu');
  if (cpu) {
    parts.push(of(cpu.used, cpu.hard, 'CPUs'));
  }
  const memory = byKey.get('requests.memory') ?? byKey.get('memory');
  if (memory) {
    let unit = 0;
    while (memory.hard >= 1024 ** (unit + 1) && unit < BYTE_UNITS.length - 1) {
      unit += 1;
    }
    const scaled = (bytes: number) => Math.round((bytes / 1024 ** unit) * 10) / 10;
    parts.push(of(scaled(memory.used), scaled(memory.hard), `${BYTE_UNITS[unit]} memory`));
  }
  const pods = byKey.get('pods');
  if (pods) {
    parts.push(of(pods.used, pods.hard, 'pods'));
  }
  return parts.length ? [`${parts[0]} used`, ...parts.slice(1)].join(', ') : '';
}
