"""`ClusterWidget`: a live view of one cluster, built once and then only updated.

Like tqdm's notebook bar, the widget tree is created once and a refresh only sets `.value`s.
A daemon thread re-reads the snapshot every second, so the kernel never blocks; it holds the
widget weakly and ends when the widget is closed or the cluster is gone. Buttons only call the
client (scale, stop): the widget owns no lifecycle logic.
"""

from __future__ import annotations

import html
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as w

from .backends.base import ClusterNotFound
from .display import status_lines

Snapshot = Mapping[str, Any]
Fetch = Callable[[str], Snapshot]

_BAR = ("<div style='display:flex;align-items:center;gap:4px;font-size:11px'>"
        "<span style='width:6.5em'>{label}</span>"
        "<div style='flex:1;background:var(--jp-layout-color3,#ddd);height:8px;border-radius:2px'>"
        "<div style='width:{pct:.0f}%;background:var(--jp-brand-color1,#2196f3);height:8px;"
        "border-radius:2px'></div></div><span style='width:9em;text-align:right'>{text}</span></div>")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB"


def _bar(label: str, used: float, total: float, text: str) -> str:
    pct = 100.0 * used / total if total else 0.0
    return _BAR.format(label=label, pct=min(pct, 100.0), text=text)


def _node_html(node: Mapping[str, Any]) -> str:
    total, used = node["resources_total"], node["resources_used"]
    bars = [_bar(key, used.get(key, 0), total[key], f"{_fmt(used.get(key, 0))}/{_fmt(total[key])}")
            for key in ("CPU", "GPU") if total.get(key)]
    if total.get("memory"):
        bars.append(_bar("memory", used.get("memory", 0), total["memory"],
                         f"{_gb(used.get('memory', 0))}/{_gb(total['memory'])}"))
    store_used, store_total = node["object_store_used_bytes"], node["object_store_total_bytes"]
    bars.append(_bar("object store", store_used, store_total, f"{_gb(store_used)}/{_gb(store_total)}"))
    title = (f"<b>{html.escape(node['name'])}</b> <span style='opacity:.7'>[{html.escape(node['group'])}]"
             f" {html.escape(node['state'])}</span>")
    return f"<div style='margin:4px 0'>{title}{''.join(bars)}</div>"


def _demand_html(demand: list[Mapping[str, Any]]) -> str:
    if not demand:
        return "<i>No pending demand.</i>"
    rows = "".join(
        f"<tr><td>{d['count']} &times; {html.escape(d['label'])}</td><td>{html.escape(d['kind'])}</td>"
        f"<td><b>{html.escape(d['status'])}</b></td><td>{html.escape(d['reason'])}</td></tr>" for d in demand)
    return f"<table style='font-size:12px'>{rows}</table>"


def _events_html(events: list[Mapping[str, Any]]) -> str:
    rows = "".join(f"<div><span style='opacity:.6'>{html.escape(e['time'][11:19])}</span> "
                   f"{html.escape(e['message'])}</div>" for e in events[-8:])
    return f"<div style='font-size:12px'>{rows or '<i>No events yet.</i>'}</div>"


class ClusterWidget(w.VBox):
    """Header, one control row per group, node bars, pending demand and recent events."""

    def __init__(self, name: str, fetch: Fetch, *, initial: Snapshot | None = None,
                 scale: Callable[[str, str, int, int], Any] | None = None,
                 stop: Callable[[str], Any] | None = None, interval_s: float = 1.0) -> None:
        self.cluster_name = name
        self._fetch = fetch
        self._scale = scale
        self._stop = stop
        self.header = w.HTML()
        self.groups_box = w.VBox()
        self.nodes = w.HTML()
        self.demand = w.HTML()
        self.events = w.HTML()
        self.message = w.HTML()
        self.stop_button = w.Button(description="Stop cluster", button_style="danger", icon="stop",
                                    disabled=stop is None)
        self.stop_button.on_click(lambda _: self._on_stop())
        self._group_rows: dict[str, tuple[w.BoundedIntText, w.BoundedIntText, w.HTML]] = {}
        super().__init__([self.header, self.groups_box, w.HTML("<b>Nodes</b>"), self.nodes,
                          w.HTML("<b>Pending demand</b>"), self.demand, w.HTML("<b>Events</b>"),
                          self.events, w.HBox([self.stop_button, self.message])])
        self.snapshot: Snapshot = initial or fetch(name)
        self._render(self.snapshot)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=_refresh_loop, args=(weakref.ref(self), interval_s, self._stopped),
                                        name=f"raykube-widget-{name}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:  # what a terminal shows
        return "\n".join(status_lines(self.snapshot))

    def close(self) -> None:
        self._stopped.set()
        super().close()

    @property
    def live(self) -> bool:
        return not self._stopped.is_set()

    # --- rendering ---------------------------------------------------------------------------

    def _render(self, snap: Snapshot) -> None:
        self.snapshot = snap
        state = snap["state"] + (f" ({snap['step']})" if snap.get("step") else "")
        link = (f" &middot; <a href='{html.escape(snap['dashboard_url'])}' target='_blank'>dashboard</a>"
                if snap.get("dashboard_url") else "")
        error = f"<div style='color:var(--jp-error-color1,red)'>{html.escape(snap['error'])}</div>" if snap.get("error") else ""
        limits = (snap.get("policy") or {}).get("summary")
        error += f"<div style='font-size:12px'>Limits: {html.escape(limits)}</div>" if limits else ""
        self.header.value = (f"<h4 style='margin:4px 0'>Ray cluster {html.escape(snap['name'])} "
                             f"&middot; {html.escape(state)}</h4><div style='font-size:12px'>"
                             f"{html.escape(snap['backend'])} &middot; Ray {html.escape(snap['ray_version'])}"
                             f" &middot; Python {html.escape(snap['python_version'])}{link}</div>{error}")
        for group in snap["groups"]:
            self._group_row(group)
        self.nodes.value = "".join(_node_html(n) for n in snap["nodes"]) or "<i>No nodes.</i>"
        self.demand.value = _demand_html(snap["demand"])
        self.events.value = _events_html(snap["events"])

    def _group_row(self, group: Mapping[str, Any]) -> None:
        name = group["name"]
        if name not in self._group_rows:
            low = w.BoundedIntText(value=group["min"], min=0, max=10_000, description="min",
                                   layout=w.Layout(width="11em"))
            high = w.BoundedIntText(value=group["max"], min=0, max=10_000, description="max",
                                    layout=w.Layout(width="11em"))
            count = w.HTML()
            apply = w.Button(description="Apply", disabled=self._scale is None, layout=w.Layout(width="6em"))
            apply.on_click(lambda _, g=name: self._on_scale(g))
            self._group_rows[name] = (low, high, count)
            self.groups_box.children = (*self.groups_box.children,
                                        w.HBox([w.HTML(f"<b>{html.escape(name)}</b>", layout=w.Layout(width="4em")),
                                                count, low, high, apply]))
        count = self._group_rows[name][2]
        count.value = (f"<span style='display:inline-block;width:11em'>{group['nodes']} running, "
                       f"{group['starting']} starting</span>")

    # --- controls ----------------------------------------------------------------------------

    def _on_scale(self, group: str) -> None:
        low, high, _ = self._group_rows[group]
        try:
            assert self._scale is not None
            self._scale(self.cluster_name, group, low.value, high.value)
            self.message.value = f"{html.escape(group)} set to {low.value}..{high.value}"
        except Exception as exc:  # shown to the user, like the REST API's message  # noqa: BLE001
            self.message.value = f"<span style='color:var(--jp-error-color1,red)'>{html.escape(str(exc))}</span>"

    def _on_stop(self) -> None:
        assert self._stop is not None
        self.stop_button.disabled = True
        self._stop(self.cluster_name)
        self._stopped.set()
        self._render({**self.snapshot, "state": "stopped", "step": "", "nodes": [], "demand": []})


def _refresh_loop(ref: Callable[[], ClusterWidget | None], interval_s: float, stopped: threading.Event) -> None:
    """Refresh until the widget is closed or collected, or the cluster is gone."""
    while not stopped.wait(interval_s):
        widget = ref()
        if widget is None:
            return
        try:
            snap = widget._fetch(widget.cluster_name)
        except ClusterNotFound:
            widget._render({**widget.snapshot, "state": "stopped", "step": "", "nodes": [], "demand": []})
            stopped.set()
            return
        except Exception as exc:  # keep the last view; say why it is stale  # noqa: BLE001
            widget.message.value = f"<span style='opacity:.7'>not refreshed: {html.escape(str(exc))}</span>"
            continue
        widget._render(snap)
        del widget
