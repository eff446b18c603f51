"""Plain-text and HTML renderings of the snapshot, for terminals and static notebook output.

The live view is `widgets.ClusterWidget`; these are what a terminal, `jupyter execute` or a
saved notebook shows.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

Snapshot = Mapping[str, Any]


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return ""


def _usage(node: Mapping[str, Any], key: str) -> str:
    total = node["resources_total"].get(key, 0)
    return f"{_num(node['resources_used'].get(key, 0))}/{_num(total)}" if total else "-"


def status_lines(snap: Snapshot) -> list[str]:
    lines = [f"Ray cluster {snap['name']} ({snap['backend']}): {snap['state']}"
             + (f" - {snap['step']}" if snap.get("step") else "")
             + f"   Ray {snap['ray_version']}, Python {snap['python_version']}"]
    if snap.get("error"):
        lines.append(f"  error: {snap['error']}")
    lines.append(f"  address: {snap['address']}   dashboard: {snap['dashboard_url']}")
    if (snap.get("policy") or {}).get("summary"):
        lines.append(f"  limits: {snap['policy']['summary']}")
    for group in snap["groups"]:
        lines.append(f"  group {group['name']}: {group['nodes']} running, {group['starting']} starting"
                     f" (min {group['min']}, max {group['max']})")
    for node in snap["nodes"]:
        lines.append(f"  node {node['name']} [{node['group']}] {node['state']}: CPU {_usage(node, 'CPU')}"
                     f", GPU {_usage(node, 'GPU')}, object store "
                     f"{_bytes(node['object_store_used_bytes'])}/{_bytes(node['object_store_total_bytes'])}")
    for demand in snap["demand"]:
        lines.append(f"  pending {demand['count']} x {demand['label']} ({demand['kind']}): "
                     f"{demand['status']} - {demand['reason']}")
    for event in snap["events"][-5:]:
        lines.append(f"  {event['time']} {event['kind']}: {event['message']}")
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
        return "<pre>" + html.escape(repr(self)) + "</pre>"


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
