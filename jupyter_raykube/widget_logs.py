"""The widget's node-log panel: pick a node and one of its Ray log files, see the last lines
(the same answer as the sidebar's node-log view and `GET .../nodes/NODE/logs`)."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import ipywidgets as w

NodeLog = Callable[[str, str, str, int], str]  # (cluster, node, file, lines) -> text
DEFAULT_FILE = "raylet.out"
LINES = 50
_ERROR = "color:var(--jp-error-color1,#d32f2f);font-size:12px"


class NodeLogPanel(w.VBox):
    """Node, file, a button; the answer below it. Reads only when asked, so an open widget
    sends nothing while nobody looks at logs."""

    def __init__(self, cluster: str, read: NodeLog | None) -> None:
        self.cluster = cluster
        self._read = read
        self.node = w.Dropdown(description="Node logs", options=[], layout=w.Layout(width="auto"))
        self.file = w.Text(value=DEFAULT_FILE, placeholder="raylet.out, worker-<id>.out",
                           layout=w.Layout(width="16em"))
        self.show = w.Button(description=f"Last {LINES} lines", icon="file-text-o",
                             disabled=read is None, tooltip="the node's Ray log file, as Ray's log API has it")
        self.show.on_click(lambda _: self.refresh())
        self.output = w.HTML()
        super().__init__([w.HBox([self.node, self.file, self.show]), self.output])
        self.add_class("raykube-node-logs")

    def follow_nodes(self, names: Sequence[str]) -> None:
        """Offer the cluster's current nodes (touching the widget only when they change)."""
        options = tuple(names)
        if options != tuple(self.node.options):
            chosen = self.node.value
            self.node.options = options
            self.node.value = chosen if chosen in options else (options[0] if options else None)

    def refresh(self) -> None:
        if self._read is None or not self.node.value:
            return
        try:
            text = self._read(self.cluster, str(self.node.value), self.file.value.strip() or DEFAULT_FILE, LINES)
        except Exception as exc:  # shown where it was asked for, as REST words it  # noqa: BLE001
            self.output.value = f"<div style='{_ERROR}'>{html.escape(str(exc))}</div>"
            return
        self.output.value = ("<pre style='max-height:20em;overflow:auto;font-size:11px;margin:4px 0'>"
                             f"{html.escape(text) or '(empty)'}</pre>")

    def disable(self) -> None:
        self.show.disabled = True
        self.node.disabled = True
        self.file.disabled = True
