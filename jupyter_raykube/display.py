"""Plain-text and HTML renderings of the snapshot, for terminals, static notebook output and
the live `widgets.ClusterWidget` (which sets these HTML strings as its children's values).

Every figure comes from the one snapshot and is formatted by `formatting`; colours and sizes
use JupyterLab's theme variables, so the light and dark themes both read.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from . import formatting as fmt

Snapshot = Mapping[str, Any]


def _usage(node: Mapping[str, Any], key: str) -> str:
    total = node["resources_total"].get(key, 0)
    return fmt.usage(node["resources_used"].get(key, 0), total) if total else "-"


def status_lines(snap: Snapshot) -> list[str]:
    lines = [f"Ray cluster {snap['name']} ({snap['backend']}): {snap['state']}"
             + (f" - {snap['step']}" if snap.get("step") else "")
             + f"   Ray {snap['ray_version']}, Python {snap['python_version']}"]
    if snap.get("error"):
        lines.append(f"  error: {snap['error']}")
    lines.append(f"  address: {snap['address']}   dashboard: {snap['dashboard_url']}")
    if (snap.get("policy") or {}).get("summary"):
        lines.append(f"  limits: {snap['policy']['summary']}")
    if snap.get("cost"):
        lines.append(f"  cost: {fmt.cost_text(snap['cost'])}")
    if fmt.quota_text(snap.get("quota")):
        lines.append(f"  quota: {fmt.quota_text(snap['quota'])}")
    for group in snap["groups"]:
        placement = fmt.placement_text(group.get("labels"))
        lines.append(f"  group {group['name']}" + (f" [{placement}]" if placement else "")
                     + f": {group['nodes']} running, {group['starting']} starting"
                     f" (min {group['min']}, max {group['max']})")
    for node in snap["nodes"]:
        idle = fmt.idle_text(node, snap)
        lines.append(f"  node {node['name']} [{node['group']}] {node['state']}: CPU {_usage(node, 'CPU')}"
                     f", GPU {_usage(node, 'GPU')}, object store "
                     f"{fmt.bytes_usage(node['object_store_used_bytes'], node['object_store_total_bytes'])}"
                     + (f", {idle}" if idle else ""))
    for demand in snap["demand"]:
        lines.append(f"  pending {demand['count']} x {demand['label']} ({demand['kind']}): "
                     f"{demand['status']} - {demand['reason']}")
    for event in fmt.newest_first(snap["events"], 5):
        lines.append(f"  {fmt.local_time(event['time'])} {event['kind']}: {event['message']}")
    return lines


class ClusterStatus:
    """What `%raycluster status` returns: text in a terminal, a table in a notebook."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def __repr__(self) -> str:
        return "\n".join(status_lines(self.snapshot))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def _repr_html_(self) -> str:
        snap = self.snapshot
        return (header_html(snap) + totals_html(snap) + nodes_html(snap)
                + demand_html(snap["demand"]) + events_html(snap["events"]))


class ClusterTable:
    """What `%raycluster list` returns."""

    def __init__(self, snapshots: Sequence[Snapshot]) -> None:
        self.snapshots = list(snapshots)

    def rows(self) -> list[tuple[str, ...]]:
        return [(s["name"], s["backend"], s["state"], s["address"],
                 ", ".join(f"{g['name']} {g['nodes']}/{g['max']}" for g in s["groups"]))
                for s in self.snapshots]

    def __repr__(self) -> str:
        if not self.snapshots:
            return "No Ray clusters."
        return "\n".join("  ".join(row) for row in [("NAME", "BACKEND", "STATE", "ADDRESS", "WORKERS"), *self.rows()])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("name", "backend", "state", "address", "workers"))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in self.rows())
        return f"<table><tr>{head}</tr>{body}</table>" if self.snapshots else "<p>No Ray clusters.</p>"


# --- HTML pieces (the widget and ClusterStatus._repr_html_) ------------------------------------

_STATE_COLOURS = {"running": "var(--jp-success-color1,#388e3c)", "starting": "var(--jp-warn-color1,#f57c00)",
                  "draining": "var(--jp-warn-color1,#f57c00)", "stopping": "var(--jp-warn-color1,#f57c00)",
                  "failed": "var(--jp-error-color1,#d32f2f)", "stopped": "var(--jp-ui-font-color2,#757575)"}
_MUTED = "color:var(--jp-ui-font-color2,#757575)"
_CELL = "padding:1px 8px 1px 0;text-align:left;white-space:nowrap"


def state_badge(state: str) -> str:
    colour = _STATE_COLOURS.get(state, _STATE_COLOURS["stopped"])
    return (f"<span data-state='{html.escape(state)}' style='color:{colour};font-weight:600'>"
            f"&#9679; {html.escape(state)}</span>")


def bar(used: float, total: float, text: str, width: str = "56px") -> str:
    """A small bar with its figures beside it; an empty bar and '-' when there is no total."""
    if not total:
        return f"<span style='{_MUTED}'>-</span>"
    pct = max(0.0, min(100.0, 100.0 * used / total))
    return (f"<span style='display:inline-flex;align-items:center;gap:4px' title='{html.escape(text)}'>"
            f"<span style='display:inline-block;width:{width};height:6px;border-radius:3px;"
            f"background:var(--jp-layout-color3,#ddd);overflow:hidden'><span style='display:block;"
            f"width:{pct:.0f}%;height:100%;background:var(--jp-brand-color1,#1976d2)'></span></span>"
            f"<span style='font-size:11px'>{html.escape(text)}</span></span>")


def header_html(snap: Snapshot) -> str:
    step = f" <span style='{_MUTED}'>({html.escape(snap['step'])})</span>" if snap.get("step") else ""
    link = (f" &middot; <a href='{html.escape(snap['dashboard_url'])}' target='_blank'>dashboard</a>"
            if snap.get("dashboard_url") and snap["state"] == "running" else "")
    limits = (snap.get("policy") or {}).get("summary")
    return (f"<div style='font-size:13px'><b>Ray cluster {html.escape(snap['name'])}</b> "
            f"{state_badge(snap['state'])}{step}</div>"
            f"<div style='font-size:11px;{_MUTED}'>{html.escape(snap['backend'])} &middot; "
            f"Ray {html.escape(snap['ray_version'])} &middot; Python {html.escape(snap['python_version'])}"
            f"{link}{' &middot; limits: ' + html.escape(limits) if limits else ''}</div>")


def _sum(nodes: Sequence[Mapping[str, Any]], key: str) -> tuple[float, float]:
    return (sum(n["resources_used"].get(key, 0) for n in nodes),
            sum(n["resources_total"].get(key, 0) for n in nodes))


def _any_gpus(snap: Snapshot) -> bool:
    """Whether a group may grow GPU nodes or a node has one (else GPU columns are left out)."""
    return (any(g["max"] > 0 and g["resources"].get("GPU", 0) > 0 for g in snap["groups"])
            or any(n["resources_total"].get("GPU", 0) > 0 for n in snap["nodes"]))


def totals_html(snap: Snapshot) -> str:
    """One line of cluster totals: CPU, GPU (when a group can have GPUs), memory, object store,
    then what it costs and the namespace quota, when there are such."""
    nodes = snap["nodes"]
    parts = [("CPU", bar(*_sum(nodes, "CPU"), fmt.usage(*_sum(nodes, "CPU"))))]
    if _any_gpus(snap):
        parts.append(("GPU", bar(*_sum(nodes, "GPU"), fmt.usage(*_sum(nodes, "GPU")))))
    parts.append(("memory", bar(*_sum(nodes, "memory"), fmt.bytes_usage(*_sum(nodes, "memory")))))
    store = (sum(n["object_store_used_bytes"] for n in nodes), sum(n["object_store_total_bytes"] for n in nodes))
    parts.append(("object store", bar(*store, fmt.bytes_usage(*store))))
    if snap.get("cost"):
        parts.append(("cost", html.escape(fmt.cost_text(snap["cost"]))))
    if fmt.quota_text(snap.get("quota")):
        quota = snap["quota"]
        parts.append(("quota", f"<span title='ResourceQuota {html.escape(quota['name'])} of namespace "
                               f"{html.escape(quota['namespace'])}: what all your Pods may request'>"
                               f"{html.escape(fmt.quota_text(quota))}</span>"))
    cells = "".join(f"<span style='white-space:nowrap'><span style='{_MUTED}'>{label}</span> {b}</span>"
                    for label, b in parts)
    return f"<div class='raykube-totals' style='display:flex;flex-wrap:wrap;gap:2px 14px;margin:4px 0;font-size:12px'>{cells}</div>"


def _idle_cell(node: Mapping[str, Any], snap: Snapshot, idle_since: Mapping[str, float] | None) -> str:
    """Relative ("idle 20 s, removed in 40 s"), or with `idle_since` (node name -> epoch s) clock
    times that do not tick: a live widget then sends nothing while nothing changes."""
    since = (idle_since or {}).get(node["name"])
    if since is None or node["state"] != "running" or node["idle_s"] <= 0:
        return fmt.idle_text(node, snap)
    left = fmt.seconds_until_removal(node, snap)
    text = f"idle since {fmt.clock(since)}"
    return text if left is None else f"{text}, removed at {fmt.clock(since + node['idle_s'] + left)}"


def _node_row(node: Mapping[str, Any], snap: Snapshot, idle_since: Mapping[str, float] | None = None) -> str:
    total, used = node["resources_total"], node["resources_used"]

    def count(key: str) -> str:
        return bar(used.get(key, 0), total.get(key, 0), fmt.usage(used.get(key, 0), total.get(key, 0)), "36px")

    cells = [f"<span title='{html.escape(node['name'])}'>{html.escape(node['name'])}</span>",
             html.escape(node["group"]), state_badge(node["state"]), count("CPU")]
    if _any_gpus(snap):
        cells.append(count("GPU"))
    cells += [bar(used.get("memory", 0), total.get("memory", 0),
                  fmt.bytes_usage(used.get("memory", 0), total.get("memory", 0)), "36px"),
              bar(node["object_store_used_bytes"], node["object_store_total_bytes"],
                  fmt.bytes_usage(node["object_store_used_bytes"], node["object_store_total_bytes"]), "36px"),
              html.escape(_idle_cell(node, snap, idle_since))]
    return ("<tr data-node='" + html.escape(node["name"]) + "'>"
            + "".join(f"<td style='{_CELL}'>{c}</td>" for c in cells) + "</tr>")


def nodes_html(snap: Snapshot, idle_since: Mapping[str, float] | None = None) -> str:
    """A table, one row per node, the head first and then each worker group's nodes together
    (`idle_since`: see `_idle_cell`)."""
    if not snap["nodes"]:
        return f"<div style='{_MUTED};font-size:12px'>No nodes.</div>"
    order = {"head": -1, **{g["name"]: i for i, g in enumerate(snap["groups"])}}
    nodes = sorted(snap["nodes"], key=lambda n: (order.get(n["group"], len(order)), n["name"]))
    heads = ["node", "group", "state", "CPU"] + (["GPU"] if _any_gpus(snap) else []) + [
        "<span title='Ray memory reserved by tasks'>memory</span>", "object store", "idle"]
    head = "".join(f"<th style='{_CELL};font-weight:normal;{_MUTED}'>{h}</th>" for h in heads)
    rows = "".join(_node_row(n, snap, idle_since) for n in nodes)
    return (f"<table class='raykube-nodes' style='font-size:12px;border-collapse:collapse'>"
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")


def demand_html(demand: Sequence[Mapping[str, Any]]) -> str:
    if not demand:
        return ""
    rows = "".join(
        f"<tr><td style='{_CELL}'>{d['count']} &times; {html.escape(d['label'])}</td>"
        f"<td style='{_CELL}'><b>{html.escape(d['status'])}</b></td>"
        f"<td style='padding:1px 0'>{html.escape(d['reason'])}</td></tr>" for d in demand)
    return f"<div style='font-size:12px;margin-top:4px'><b>Pending</b><table>{rows}</table></div>"


def events_html(events: Sequence[Mapping[str, Any]], count: int = 6) -> str:
    """The last events, newest first, in local time."""
    rows = "".join(f"<div><span style='{_MUTED}'>{html.escape(fmt.local_time(e['time']))}</span> "
                   f"{html.escape(e['message'])}</div>" for e in fmt.newest_first(events, count))
    if not rows:
        return ""
    return f"<div class='raykube-events' style='font-size:12px;margin-top:4px'><b>Events</b> (newest first){rows}</div>"
