"""The live ClusterWidget: its model changes by itself when the cluster changes."""

from __future__ import annotations

from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.client import LocalClient
from jupyter_raykube.widgets import ClusterWidget

from .conftest import cluster_processes, wait_for


def test_widget_follows_a_scale_up_and_the_stop(blocking_manager: BlockingManager) -> None:
    client = LocalClient(blocking_manager)
    snap = client.start({"name": "t-widget", "idle_timeout_s": 30, "groups": [{"name": "cpu", "cpus": 1, "max": 1}]},
                        lambda *_: None)
    uid = blocking_manager.manager.backend.store.read("t-widget")["uid"]
    widget = ClusterWidget("t-widget", client.status, initial=snap, stop=client.stop,
                           scale=lambda n, g, lo, hi: client.scale(n, g, lo, hi, lambda *_: None, wait=False))
    try:
        assert "t-widget-head" in widget.nodes.value and "[cpu]" not in widget.nodes.value
        low, high, count = widget._group_rows["cpu"]
        assert "0 running" in count.value
        low.value, high.value = 1, 1
        widget._on_scale("cpu")  # what the Apply button does; returns at once
        assert "cpu set to 1..1" in widget.message.value
        wait_for(lambda: "[cpu]" in widget.nodes.value, 120, "the new cpu node in the widget")
        wait_for(lambda: "1 running" in count.value, 60, "the group row to count the node")
        assert "launched 1 cpu node" in widget.events.value
        widget._on_stop()
        assert not widget.live
        assert cluster_processes(uid) == []
    finally:
        widget.close()


def test_widget_notices_a_cluster_stopped_elsewhere(blocking_manager: BlockingManager) -> None:
    client = LocalClient(blocking_manager)
    client.start({"name": "t-widget2", "groups": [{"name": "cpu", "cpus": 1, "max": 1}]}, lambda *_: None)
    widget = ClusterWidget("t-widget2", client.status, interval_s=0.2)
    try:
        client.stop("t-widget2")
        wait_for(lambda: not widget.live, 30, "the refresh loop to end")
        assert "stopped" in widget.header.value
    finally:
        widget.close()
