"""Idle culling works with a cluster widget open: a real `jupyter server` whose kernel shows a live
ClusterWidget of a real local Ray cluster reports no new activity while only the widget polls.
jupyterhub-idle-culler reads exactly this (`/api/status` `last_activity`, which jupyterhub-singleuser
reports to the hub), so a poll counted as activity would keep the server alive forever.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

from jupyter_raykube.widgets import ClusterWidget

from .conftest import cluster_processes, wait_for
from .test_server_process import _run, _start_cluster, _start_server, _stop_server
from .test_widgets import _snapshot

POLL_PERIOD_S = 20  # ~20 widget refreshes (one a second): long enough that any counted read shows


def test_an_unchanged_cluster_sends_no_widget_updates() -> None:
    """Idle times tick every second; the widget shows when each node became idle and when it
    will be removed (clock times) instead, so polling an unchanged cluster changes no widget
    value, and no comm message reaches the kernel's IOPub (where the server counts activity)."""
    start = time.time()
    fetches: list[float] = []

    def fetch(name: str) -> dict[str, object]:
        snap = _snapshot()
        for node in snap["nodes"]:
            if node["idle_s"]:
                node["idle_s"] += time.time() - start  # as Ray reports it: growing
        fetches.append(time.time())
        return snap

    widget = ClusterWidget("w-1", fetch, interval_s=0.05)
    changes: list[object] = []
    try:
        first = widget.nodes.value
        assert "idle since " in first and ", removed at " in first
        for child in (widget.header, widget.totals, widget.nodes, widget.demand, widget.events):
            child.observe(changes.append, names="value")
        wait_for(lambda: len(fetches) >= 30, 30, "30 refreshes")
        assert changes == [] and widget.nodes.value == first
    finally:
        widget.close()


def test_widget_polling_is_not_server_activity(tmp_path: Path) -> None:
    server = _start_server(tmp_path)
    headers = {"Authorization": f"token {server.token}"}

    def last_activity() -> str:
        return requests.get(f"{server.url}api/status", headers=headers, timeout=60).json()["last_activity"]

    kernel = requests.post(f"{server.url}api/kernels", json={"name": "python3"}, headers=headers, timeout=60).json()
    client = server.kernel_client(kernel["id"])
    uid = ""
    try:
        _start_cluster(server, {"name": "k-idle", "groups": [{"name": "cpu", "max": 1}]})
        record = json.loads((server.runtime_dir / "raykube" / "clusters" / "k-idle.json").read_text())
        uid = record["uid"]
        _run(client, "import os, time\n"
                     "from jupyter_raykube.client import ServerClient\n"
                     "from jupyter_raykube.widgets import ClusterWidget\n"
                     "api = ServerClient(os.environ['RAYKUBE_SERVER_URL'], os.environ['RAYKUBE_SERVER_TOKEN'])\n"
                     "polls = []\n"
                     "def fetch(name):\n"
                     "    polls.append(time.time())\n"
                     "    return api.status(name)\n"
                     "widget = ClusterWidget('k-idle', fetch)\n"
                     "display(widget)")
        time.sleep(3)  # the kernel's reply and idle status are in; the cluster has settled
        before = last_activity()
        time.sleep(POLL_PERIOD_S)
        after = last_activity()
        polled = _run(client, "print(sum(1 for t in polls if time.time() - t < %d))" % (POLL_PERIOD_S + 3))
        assert int(polled) >= POLL_PERIOD_S // 2, polled  # the widget really polled meanwhile
        assert after == before, (before, after)

        # A change is still activity: the culler must see the user at work.
        assert server.api("PATCH", "clusters/k-idle", {"groups": {"cpu": {"max": 2}}}).status_code == 200
        assert last_activity() > after
        _run(client, "widget.close()")
    finally:
        client.stop_channels()
        requests.delete(f"{server.url}api/kernels/{kernel['id']}", headers=headers, timeout=60)
        server.api("DELETE", "clusters/k-idle")
        _stop_server(server, tmp_path / "server.log")
    if uid:
        assert cluster_processes(uid) == []
