"""The live ClusterWidget and the formatting it shares with the text status.

The first tests drive the widget with a scripted snapshot source (a dict the test edits, as
another front-end would through the server), so the rules are checked without Ray; the last
two run it on a real local cluster."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_raykube import formatting as fmt
from jupyter_raykube.backends.base import ClusterNotFound
from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.client import LocalClient
from jupyter_raykube.display import nodes_html, status_lines, totals_html
from jupyter_raykube.widgets import ClusterWidget

from .conftest import cluster_processes, wait_for

GiB = 2**30


def _node(name: str, group: str, *, idle_s: float = 0.0, memory_used: float = 0.0) -> dict[str, Any]:
    return {"id": name, "name": name, "group": group, "state": "running", "head": group == "head",
            "resources_total": {"CPU": 1, "memory": 2 * GiB}, "resources_used": {"CPU": 0, "memory": memory_used},
            "object_store_used_bytes": GiB / 4, "object_store_total_bytes": GiB, "idle_s": idle_s,
            "activity": [], "message": "", "age_s": 5.0}


def _snapshot() -> dict[str, Any]:
    return {"name": "w-1", "backend": "local", "state": "running", "step": "", "error": "", "owner": "me",
            "owned_here": True, "address": "127.0.0.1:1", "client_address": "", "image": "",
            "dashboard_url": "/raykube/clusters/w-1/dashboard/", "ray_version": "2.60.0", "python_version": "3.11",
            "created_at": 0.0, "idle_timeout_s": 60.0, "idle_s": 0.0, "policy": {"summary": ""},
            "max_workers": None,
            "groups": [{"name": "cpu", "min": 0, "max": 4, "resources": {"CPU": 1}, "nodes": 2, "starting": 0,
                        "draining": 0}],
            "nodes": [_node("w-1-head", "head"), _node("w-1-cpu-a", "cpu", idle_s=20.0),
                      _node("w-1-cpu-b", "cpu", memory_used=GiB)],
            "demand": [],
            "events": [{"time": "2026-11-22T10:00:00Z", "kind": "scale_up", "message": "first"},
                       {"time": "2026-11-22T10:00:05Z", "kind": "scale_up", "message": "second"}]}


class Server:
    """What the widget's callbacks reach: one snapshot, changed by the test or by `scale`."""

    def __init__(self) -> None:
        self.snap = _snapshot()
        self.scaled: list[tuple[str, int, int]] = []
        self.stopped: list[str] = []

    def fetch(self, name: str) -> dict[str, Any]:
        if self.stopped:
            raise ClusterNotFound(name)
        return copy.deepcopy(self.snap)

    def scale(self, name: str, group: str, low: int, high: int) -> None:
        if high < low:
            raise ValueError(f"groups.{group}.max={high} is not allowed: must be >= min ({low})")
        self.scaled.append((group, low, high))
        self.snap["groups"][0].update(min=low, max=high)

    def stop(self, name: str) -> None:
        self.stopped.append(name)

    def set_bounds(self, low: int, high: int) -> None:
        """Another front-end (the sidebar) changes the group."""
        self.snap["groups"][0].update(min=low, max=high)


@pytest.fixture
def server() -> Server:
    return Server()


@pytest.fixture
def widget(server: Server) -> Iterator[ClusterWidget]:
    view = ClusterWidget("w-1", server.fetch, scale=server.scale, stop=server.stop, interval_s=0.05)
    try:
        yield view
    finally:
        view.close()


def test_fields_follow_the_snapshot_until_edited_and_apply_sends_only_the_change(
        server: Server, widget: ClusterWidget) -> None:
    cpu = widget.group_controls("cpu")
    server.set_bounds(2, 4)  # the sidebar sets min
    wait_for(lambda: cpu.fields["min"].value == 2, 5, "the min field to follow the snapshot")
    cpu.fields["max"].value = 6  # the user edits max only
    server.set_bounds(3, 4)  # meanwhile min changes again elsewhere
    wait_for(lambda: cpu.fields["min"].value == 3, 5, "min to keep following")
    time.sleep(0.2)
    assert cpu.fields["max"].value == 6, "an edited field must not be overwritten by a refresh"
    widget._on_apply("cpu")  # what the Apply button does
    assert server.scaled == [("cpu", 3, 6)], "Apply must not write back a stale min"
    assert "set to 3–6" in cpu.message.value
    server.set_bounds(1, 5)
    wait_for(lambda: (cpu.fields["min"].value, cpu.fields["max"].value) == (1, 5), 5,
             "both fields to follow again after Apply")


def test_apply_checks_min_max_next_to_the_row_and_clears_on_success(server: Server, widget: ClusterWidget) -> None:
    cpu = widget.group_controls("cpu")
    cpu.fields["min"].value = 5
    cpu.fields["max"].value = 3
    widget._on_apply("cpu")
    assert server.scaled == []
    assert "max must be at least min (5)" in cpu.message.value and "raykube-error" in cpu.message.value
    assert widget.message.value == ""  # not in the widget-wide line
    cpu.fields["max"].value = 6
    assert "raykube-error" not in cpu.message.value  # editing clears it
    widget._on_apply("cpu")
    assert server.scaled == [("cpu", 5, 6)] and "raykube-error" not in cpu.message.value


def test_stop_asks_first_and_then_disables_everything(server: Server, widget: ClusterWidget) -> None:
    cpu = widget.group_controls("cpu")
    cpu.message.value = "<span class='raykube-error'>old</span>"
    widget.stop_button.click()
    assert server.stopped == [] and widget.confirm.layout.display == "flex"
    widget.cancel_button.click()
    assert server.stopped == [] and widget.confirm.layout.display == "none"
    assert not widget.stop_button.disabled
    widget.stop_button.click()
    widget.confirm_button.click()
    assert server.stopped == ["w-1"]
    assert not widget.live and widget.stop_button.disabled and widget.confirm.layout.display == "none"
    assert cpu.apply.disabled and cpu.fields["min"].disabled and cpu.fields["max"].disabled
    assert cpu.message.value == "" and "stopped" in widget.header.value


def test_node_table_totals_and_status_share_one_set_of_numbers() -> None:
    snap = _snapshot()
    table = nodes_html(snap)
    assert table.count("<tr data-node=") == 3
    assert table.index("w-1-head") < table.index("w-1-cpu-a")  # head first, then each group
    assert "idle 20 s, removed in 40 s" in table  # 2 nodes > min 0: the idle one goes at 60 s
    assert "1 GiB / 2 GiB" in table  # memory in use reads as such, in GiB
    assert ">GPU<" not in table  # no group can have GPUs
    totals = totals_html(snap)
    assert "3 / 3" not in totals and "0 / 3" in totals and "1 GiB / 6 GiB" in totals
    lines = status_lines(snap)
    assert any("idle 20 s, removed in 40 s" in line for line in lines)
    events = [line for line in lines if "scale_up" in line]
    assert "second" in events[0] and "first" in events[1]  # newest first
    assert fmt.local_time("2026-11-22T10:00:05Z") in events[0]


def test_formatting_rules() -> None:
    assert [fmt.number(x) for x in (4.0, 0.5, 1.256, float("nan"))] == ["4", "0.5", "1.26", "-"]
    assert [fmt.nbytes(x) for x in (512, 1536, 1.5 * GiB, 3 * 2**40)] == ["512 B", "1.5 KiB", "1.5 GiB", "3 TiB"]
    assert [fmt.duration(x) for x in (0.4, 40, 185, 3600, 7800)] == ["0 s", "40 s", "3 min 5 s", "1 h", "2 h 10 min"]
    snap = _snapshot()
    at_min = {**snap, "groups": [{**snap["groups"][0], "min": 2}]}
    idle = snap["nodes"][1]
    assert fmt.seconds_until_removal(idle, snap) == 40.0
    assert fmt.seconds_until_removal(idle, at_min) is None  # the group may not shrink
    assert fmt.idle_text(snap["nodes"][2], snap) == "busy"
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        assert fmt.local_time("2026-11-22T10:00:05Z") == "10:00:05"
    finally:
        os.environ.pop("TZ")
        time.tzset()


def _quota(**resources: tuple[float, float]) -> dict[str, Any]:
    return {"name": "raykube", "namespace": "jhub-alice",
            "resources": [{"resource": k.replace("_", ".").replace(".com.", ".com/"), "used": u, "hard": h}
                          for k, (u, h) in resources.items()]}


# (the snapshot's quota, the line every front-end shows)
QUOTA_LINES = [
    (_quota(requests_nvidia_com_gpu=(2, 4), requests_cpu=(6, 16), requests_memory=(20 * GiB, 64 * GiB),
            pods=(3, 20)), "2 of 4 GPUs used, 6 of 16 CPUs, 20 of 64 GiB memory, 3 of 20 pods"),
    # what the hub hook writes: the server's own requests on top of the caps (8.25 GiB reads 8.3)
    (_quota(requests_cpu=(1.6, 4.1), requests_memory=(640 * 2**20, 8 * GiB + 256 * 2**20)),
     "1.6 of 4.1 CPUs used, 0.6 of 8.3 GiB memory"),
    (_quota(requests_amd_com_gpu=(1, 2), requests_nvidia_com_gpu=(0, 2), limits_cpu=(1, 3)),
     "1 of 2 amd.com GPUs used, 0 of 2 nvidia.com GPUs"),  # limits.* has no words: left out
    (_quota(**{"requests_aws_amazon_com_neuron": (0, 1)}), "0 of 1 aws.amazon.com/neuron used"),
    (_quota(services=(1, 5)), ""),
    (None, ""),
]
LABEXTENSION = Path(__file__).resolve().parents[1] / "labextension"


def in_typescript(function: str, inputs: list[Any]) -> list[str]:
    """`function` of the sidebar's format.ts applied to each input, compiled here with the
    labextension's own TypeScript (skips without node and labextension/node_modules)."""
    typescript = LABEXTENSION / "node_modules" / "typescript"
    if not typescript.exists() or shutil.which("node") is None:
        pytest.skip("needs node and labextension/node_modules (npm install in labextension/)")
    program = """
const ts = require(process.argv[1]);
const source = require('fs').readFileSync(process.argv[2], 'utf8');
const js = ts.transpileModule(source, {compilerOptions: {module: ts.ModuleKind.ESNext,
                                                         target: ts.ScriptTarget.ES2020}}).outputText;
import('data:text/javascript,' + encodeURIComponent(js)).then(m =>
  console.log(JSON.stringify(JSON.parse(process.argv[3]).map(x => m[process.argv[4]](x)))));
"""
    out = subprocess.run(["node", "-e", program, str(typescript), str(LABEXTENSION / "src" / "format.ts"),
                          json.dumps(inputs), function], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def test_quota_line_is_one_formatter_in_status_totals_and_sidebar() -> None:
    """formatting.quota_text and the sidebar's formatQuota read every quota the same; the text
    status and the widget's totals show that line, and a snapshot without a quota shows none."""
    assert [fmt.quota_text(q) for q, _ in QUOTA_LINES] == [line for _, line in QUOTA_LINES]
    assert in_typescript("formatQuota", [q for q, _ in QUOTA_LINES]) == [line for _, line in QUOTA_LINES]

    snap = {**_snapshot(), "quota": QUOTA_LINES[0][0]}
    assert "  quota: 2 of 4 GPUs used, 6 of 16 CPUs, 20 of 64 GiB memory, 3 of 20 pods" in status_lines(snap)
    assert "2 of 4 GPUs used, 6 of 16 CPUs" in totals_html(snap) and "namespace jhub-alice" in totals_html(snap)
    local = {**_snapshot(), "quota": None}
    assert not [line for line in status_lines(local) if "quota" in line] and "quota" not in totals_html(local)


PLACEMENTS = [
    ({"ray.io/market-type": "spot", "ray.io/accelerator-type": "A100", "team": "ml"}, "A100, spot"),
    ({"ray.io/market-type": "on-demand"}, "on-demand"),
    ({"team": "ml"}, ""),
    ({}, ""),
]


def test_a_groups_placement_reads_the_same_in_status_widget_and_sidebar() -> None:
    """What a group's nodes run on (its accelerator and market Ray labels): one formatter in
    Python and TypeScript, shown beside the group in the status text and the widget's row."""
    assert [fmt.placement_text(labels) for labels, _ in PLACEMENTS] == [text for _, text in PLACEMENTS]
    assert in_typescript("formatPlacement", [labels for labels, _ in PLACEMENTS]) == [t for _, t in PLACEMENTS]
    snap = _snapshot()
    snap["groups"][0]["labels"] = PLACEMENTS[0][0]
    assert any(line.startswith(f"  group {snap['groups'][0]['name']} [A100, spot]: ") for line in status_lines(snap))
    widget = ClusterWidget(snap["name"], lambda name: snap, initial=snap)
    try:
        assert "A100, spot" in widget.group_controls(snap["groups"][0]["name"]).counts.value
    finally:
        widget.close()


def test_widget_follows_a_scale_up_and_the_stop(blocking_manager: BlockingManager) -> None:
    client = LocalClient(blocking_manager)
    snap = client.start({"name": "t-widget", "idle_timeout_s": 30, "groups": [{"name": "cpu", "cpus": 1, "max": 1}]},
                        lambda *_: None)
    uid = blocking_manager.manager.backend.store.read("t-widget")["uid"]
    widget = ClusterWidget("t-widget", client.status, initial=snap, stop=client.stop, node_log=client.node_log,
                           scale=lambda n, g, lo, hi: client.scale(n, g, lo, hi, lambda *_: None, wait=False))
    try:
        assert "t-widget-head" in widget.nodes.value and "t-widget-cpu" not in widget.nodes.value
        # The head's raylet log, through Ray's log API; a file it does not have is said where asked
        assert widget.logs.node.options == ("t-widget-head",)
        widget.logs.show.click()
        assert "<pre" in widget.logs.output.value and "raylet" in widget.logs.output.value.lower()
        widget.logs.file.value = "no-such.log"
        widget.logs.show.click()
        assert "file=&#x27;no-such.log&#x27; is not allowed" in widget.logs.output.value and "/tmp" not in widget.logs.output.value
        cpu = widget.group_controls("cpu")
        assert "0 running" in cpu.counts.value
        cpu.fields["min"].value = 1
        widget._on_apply("cpu")  # what the Apply button does; returns at once
        assert "set to 1–1" in cpu.message.value
        wait_for(lambda: "t-widget-cpu" in widget.nodes.value, 120, "the new cpu node in the widget")
        wait_for(lambda: "1 running" in cpu.counts.value, 60, "the group row to count the node")
        assert "launched 1 cpu node" in widget.events.value
        assert len(widget.logs.node.options) == 2  # the new node's logs are offered too
        widget.stop_button.click()
        widget.confirm_button.click()
        assert not widget.live and widget.logs.show.disabled
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
        assert "stopped" in widget.header.value and widget.stop_button.disabled
    finally:
        widget.close()
