"""`ClusterWidget`: a live view of one cluster, built once and then only updated.

Like tqdm's notebook bar, the widget tree is created once and a refresh only sets `.value`s.
A daemon thread re-reads the snapshot every second, so the kernel never blocks; it holds the
widget weakly and ends when the widget is closed or the cluster is gone. A refresh that finds
nothing changed sends nothing (idle nodes show clock times, not ticking seconds): every widget
update is kernel activity, which would keep an unattended server from being culled. Buttons only
call the client (scale, stop): the widget owns no lifecycle logic.

Two rules keep it from undoing other front-ends' work: a min/max field follows the snapshot
until the user edits it, and Apply sends only the fields the user changed (the other bound is
the cluster's current one). Stopping asks first, then disables every control.
"""

from __future__ import annotations

import html
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as w

from . import connect
from .backends.base import ClusterNotFound
from .display import demand_html, events_html, header_html, nodes_html, status_lines, totals_html
from .formatting import placement_text
from .widget_logs import NodeLog, NodeLogPanel

Snapshot = Mapping[str, Any]
Fetch = Callable[[str], Snapshot]
Scale = Callable[[str, str, int, int], Any]
BOUNDS = ("min", "max")
_ERROR = "color:var(--jp-error-color1,#d32f2f);font-size:12px"
_NOTE = "color:var(--jp-ui-font-color2,#757575);font-size:12px"
_IDLE_JITTER_S = 5.0  # how far a snapshot's idle time may wander before a node's idle clock moves


def _error(text: str) -> str:
    return f"<span class='raykube-error' style='{_ERROR}'>{html.escape(text)}</span>"


def _note(text: str) -> str:
    return f"<span style='{_NOTE}'>{html.escape(text)}</span>"


class GroupControls:
    """One worker group's row: node counts, min/max fields, Apply, and the row's own message.

    `edited` holds the bounds the user changed and has not applied; only those stop following
    the snapshot, and only those are sent."""

    def __init__(self, name: str, on_apply: Callable[[str], None], enabled: bool) -> None:
        self.name = name
        self.edited: set[str] = set()
        self._snap_values = {"min": 0, "max": 0}
        self._syncing = False
        self.counts = w.HTML(layout=w.Layout(width="15em"))
        self.fields = {b: w.BoundedIntText(min=0, max=10_000, description=b, layout=w.Layout(width="9em"),
                                           style={"description_width": "2.5em"}) for b in BOUNDS}
        for bound, field in self.fields.items():
            field.add_class(f"raykube-{bound}")
            field.observe(lambda change, b=bound: self._on_edit(b, change["new"]), names="value")
        self.apply = w.Button(description="Apply", disabled=not enabled, layout=w.Layout(width="6em"),
                              tooltip=f"Set the {name} group's min/max node counts")
        self.apply.on_click(lambda _: on_apply(name))
        self.message = w.HTML()
        self.box = w.HBox([w.HTML(f"<b title='{html.escape(name)}'>{html.escape(name)}</b>",
                                  layout=w.Layout(width="6em")),
                           self.counts, self.fields["min"], self.fields["max"], self.apply, self.message])
        self.box.add_class("raykube-group")
        self.box.add_class(f"raykube-group-{name}")

    def follow(self, group: Mapping[str, Any], counts_html: str) -> None:
        """Show the snapshot's bounds in every field the user is not editing."""
        self.counts.value = counts_html
        self._snap_values = {b: int(group[b]) for b in BOUNDS}
        self._syncing = True
        try:
            for bound in BOUNDS:
                if bound not in self.edited:
                    self.fields[bound].value = self._snap_values[bound]
        finally:
            self._syncing = False

    def changes(self) -> dict[str, int]:
        return {b: int(self.fields[b].value) for b in sorted(self.edited)}

    def applied(self) -> None:
        self.edited.clear()

    def disable(self) -> None:
        for control in (self.apply, *self.fields.values()):  # Apply first: nothing sends after
            control.disabled = True
        self.message.value = ""

    def _on_edit(self, bound: str, value: int) -> None:
        if self._syncing:
            return
        if value == self._snap_values[bound]:
            self.edited.discard(bound)
        else:
            self.edited.add(bound)
        self.message.value = ""


class ClusterWidget(w.VBox):
    """Header and totals, one control row per group, a node table, pending demand, events."""

    def __init__(self, name: str, fetch: Fetch, *, initial: Snapshot | None = None,
                 scale: Scale | None = None, stop: Callable[[str], Any] | None = None,
                 node_log: NodeLog | None = None, interval_s: float = 1.0) -> None:
        self.cluster_name = name
        self._fetch = fetch
        self._scale = scale
        self._stop = stop
        self.header = w.HTML()
        self.totals = w.HTML()
        self.groups_box = w.VBox()
        self.nodes = w.HTML()
        self.demand = w.HTML()
        self.events = w.HTML()
        self.logs = NodeLogPanel(name, node_log)
        self.message = w.HTML()
        self.stop_button = w.Button(description="Stop cluster", button_style="danger", icon="stop",
                                    disabled=stop is None, tooltip=f"Stop {name} (asks first)")
        self.stop_button.on_click(lambda _: self._ask_stop())
        self.confirm_button = w.Button(description="Stop", button_style="danger")
        self.cancel_button = w.Button(description="Cancel")
        self.confirm_button.on_click(lambda _: self._on_stop())
        self.cancel_button.on_click(lambda _: self._cancel_stop())
        self.confirm = w.HBox([w.HTML(f"<b>Stop {html.escape(name)}?</b> Its Ray nodes shut down; running "
                                      "tasks and stored objects are lost."),
                               self.confirm_button, self.cancel_button],
                              layout=w.Layout(display="none"))
        self.confirm.add_class("raykube-confirm-stop")
        self._groups: dict[str, GroupControls] = {}
        self._idle_since: dict[str, float] = {}
        super().__init__([self.header, self.totals, self.groups_box, self.nodes, self.demand, self.events,
                          self.logs, w.HBox([self.stop_button, self.message]), self.confirm])
        self.add_class("raykube-widget")
        self._stopped = threading.Event()
        self.snapshot: Snapshot = initial or fetch(name)
        self._render(self.snapshot)
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

    def group_controls(self, group: str) -> GroupControls:
        return self._groups[group]

    # --- rendering ---------------------------------------------------------------------------

    def _render(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.header.value = header_html(snap) + (
            f"<div style='{_ERROR}'>{html.escape(snap['error'])}</div>" if snap.get("error") else "")
        self.totals.value = totals_html(snap)
        for group in snap["groups"]:
            extra = [f"{group[k]} {k}" for k in ("starting", "draining") if group.get(k)]
            counts = f"{group['nodes']} running" + (f", {', '.join(extra)}" if extra else "")
            placement = placement_text(group.get("labels"))
            counts += f" · {placement}" if placement else ""
            self._controls(group["name"]).follow(group, _note(counts))
        self.nodes.value = nodes_html(snap, self._anchor_idle_times(snap))
        self.demand.value = demand_html(snap["demand"])
        self.events.value = events_html(snap["events"])
        self.logs.follow_nodes([n["name"] for n in snap["nodes"]])

    def _anchor_idle_times(self, snap: Snapshot) -> dict[str, float]:
        """When each idle node became idle, kept from refresh to refresh (moved only when the
        snapshot disagrees by more than a few seconds), so the table shows fixed clock times
        and an unchanged cluster sends no widget update: each one would count as kernel
        activity and keep an unattended server from being culled."""
        now, anchors = time.time(), {}
        for node in snap["nodes"]:
            if node["state"] == "running" and node["idle_s"] > 0:
                estimate, known = now - node["idle_s"], self._idle_since.get(node["name"])
                anchors[node["name"]] = known if known is not None and abs(known - estimate) < _IDLE_JITTER_S else estimate
        self._idle_since = anchors
        return anchors

    def _controls(self, name: str) -> GroupControls:
        if name not in self._groups:
            enabled = self._scale is not None and not self._stopped.is_set()
            self._groups[name] = GroupControls(name, self._on_apply, enabled=enabled)
            self.groups_box.children = (*self.groups_box.children, self._groups[name].box)
        return self._groups[name]

    def _show_stopped(self) -> None:
        """The cluster is gone: final view, every control disabled, old errors cleared."""
        self._stopped.set()
        self._render({**self.snapshot, "state": "stopped", "step": "", "error": "", "nodes": [], "demand": []})
        for controls in self._groups.values():
            controls.disable()
        self.stop_button.disabled = True
        self.logs.disable()
        self.confirm.layout.display = "none"
        self.message.value = ""

    # --- controls ----------------------------------------------------------------------------

    def _on_apply(self, group: str) -> None:
        """Send only the bounds the user changed; the other one is the cluster's current."""
        controls = self._groups[group]
        changes = controls.changes()
        if not changes:
            controls.message.value = _note("nothing changed")
            return
        try:
            current = next(g for g in self._fetch(self.cluster_name)["groups"] if g["name"] == group)
            low, high = changes.get("min", current["min"]), changes.get("max", current["max"])
            if high < low:
                controls.message.value = _error(f"max must be at least min ({low})")
                return
            assert self._scale is not None
            self._scale(self.cluster_name, group, low, high)
        except Exception as exc:  # shown next to the control, like the REST API's message  # noqa: BLE001
            controls.message.value = _error(str(exc))
            return
        controls.applied()
        controls.message.value = _note(f"set to {low}–{high}")

    def _ask_stop(self) -> None:
        self.confirm.layout.display = "flex"
        self.stop_button.disabled = True

    def _cancel_stop(self) -> None:
        self.confirm.layout.display = "none"
        self.stop_button.disabled = self._stop is None

    def _on_stop(self) -> None:
        assert self._stop is not None
        self.confirm_button.disabled = True
        _disconnect_driver_from(self.snapshot)  # first, as %raycluster stop does
        try:
            self._stop(self.cluster_name)
        except ClusterNotFound:
            pass  # already gone: the same end
        except Exception as exc:  # noqa: BLE001
            self.confirm_button.disabled = False
            self.message.value = _error(f"could not stop: {exc}")
            return
        self._show_stopped()
        self.confirm_button.disabled = False


def _disconnect_driver_from(snap: Snapshot) -> None:
    """`ray.shutdown` when this kernel's driver is connected to the stopped cluster, so it
    neither hangs on a dead GCS nor keeps a stale connection (another cluster's is kept)."""
    targets = {snap.get("address") or None}
    if snap.get("client_address"):
        targets.add(f"ray://{snap['client_address']}")
    # connect.py records the target it connected to (the GCS address is not available from
    # Ray's runtime context under Ray Client).
    if connect._connected_to and connect._connected_to in targets:  # noqa: SLF001
        connect.disconnect_driver()


def _refresh_loop(ref: Callable[[], ClusterWidget | None], interval_s: float, stopped: threading.Event) -> None:
    """Refresh until the widget is closed or collected, or the cluster is gone."""
    while not stopped.wait(interval_s):
        widget = ref()
        if widget is None:
            return
        try:
            snap = widget._fetch(widget.cluster_name)
        except ClusterNotFound:
            widget._show_stopped()
            return
        except Exception as exc:  # keep the last view; say why it is stale  # noqa: BLE001
            widget.message.value = _note(f"not refreshed: {exc}")
            continue
        if not stopped.is_set():
            widget._render(snap)
            if widget.message.value.startswith(f"<span style='{_NOTE}'>not refreshed"):
                widget.message.value = ""
        del widget
