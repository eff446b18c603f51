"""The embedded autoscaler against real Ray: grow on demand, explain what waits, drain safely.

One cluster serves the module: cpu workers 0..3 of 1 CPU, a gpu group 0..1 whose node fakes a
GPU with `--num-gpus` (Ray accepts it on a CPU-only machine), an a100 group labelled
`ray.io/accelerator-type=A100` that stays at max 0 until the label test opens it, idle timeout 5 s.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group

from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.connect import connect_driver
from jupyter_raykube.manager import Cluster
from jupyter_raykube.spec import ClusterSpec, WorkerGroup

from .conftest import cluster_processes, wait_for

IDLE_S = 5.0


class Handle:
    """The test's view of the shared cluster: snapshots taken on the manager's own loop."""

    def __init__(self, bm: BlockingManager, cluster: Cluster) -> None:
        self.bm, self.cluster = bm, cluster

    def snapshot(self) -> dict[str, Any]:
        async def take() -> dict[str, Any]:
            return self.cluster.snapshot()

        return self.bm.call(take)

    def nodes(self, group: str, state: str | None = None) -> list[dict[str, Any]]:
        return [n for n in self.snapshot()["nodes"] if n["group"] == group and (state is None or n["state"] == state)]

    def events(self, kind: str | None = None) -> list[str]:
        return [e.message for e in self.cluster.events if kind is None or e.kind == kind]

    def wait(self, predicate: Callable[[], Any], timeout: float = 90.0, what: str = "condition") -> Any:
        try:
            return wait_for(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; snapshot: {self.snapshot()}") from None

    def settle(self) -> None:
        """No workers left from an earlier test."""
        self.wait(lambda: not self.nodes("cpu") and not self.nodes("gpu"), timeout=60, what="workers to drain")


@pytest.fixture(scope="module")
def scaled() -> Iterator[Handle]:
    bm = BlockingManager()
    spec = ClusterSpec(name="t-autoscale", idle_timeout_s=IDLE_S, groups=(
        WorkerGroup("cpu", cpus=1, min=0, max=3), WorkerGroup("gpu", cpus=1, gpus=1, min=0, max=1),
        WorkerGroup("a100", cpus=1, min=0, max=0, labels={"ray.io/accelerator-type": "A100"})))
    cluster = bm.call(bm.manager.create, spec)
    uid = cluster.handle.details["uid"]
    connect_driver(cluster.handle.address, bm.manager.token)
    try:
        yield Handle(bm, cluster)
    finally:
        ray.shutdown()
        bm.close()
    assert cluster_processes(uid) == []


def test_burst_grows_to_max_and_drains_back(scaled: Handle) -> None:
    scaled.settle()
    launched_before = len(scaled.events("scale_up"))

    @ray.remote(num_cpus=1)
    def work(i: int) -> int:
        time.sleep(8)  # outlasts a node start, so the demand is still there when nodes join
        return i

    refs = [work.remote(i) for i in range(6)]
    scaled.wait(lambda: len(scaled.nodes("cpu", "running")) == 3, what="3 cpu workers")
    assert ray.get(refs, timeout=120) == list(range(6))
    launches = scaled.events("scale_up")[launched_before:]
    assert sum(int(m.split()[1]) for m in launches) == 3, launches  # exactly 3, never more
    assert "pending {CPU: 1} task" in " ".join(launches)
    assert not scaled.nodes("gpu"), "CPU-only work must not start a GPU node while the cpu group has room"
    scaled.wait(lambda: not scaled.nodes("cpu"), timeout=IDLE_S + 40, what="idle workers to be removed")
    assert any(m.startswith("draining cpu node") for m in scaled.events("scale_down"))


def test_infeasible_demand_is_explained_and_launches_nothing(scaled: Handle) -> None:
    scaled.settle()
    launched_before = len(scaled.events("scale_up"))

    @ray.remote(num_cpus=64)
    def huge() -> None:
        return None

    ref = huge.remote()
    entry = scaled.wait(lambda: next((d for d in scaled.snapshot()["demand"] if d["shape"].get("CPU") == 64), None),
                        what="the {CPU: 64} demand to appear")
    assert entry["status"] == "infeasible"
    assert "largest" in entry["reason"] and "{CPU: 64}" in entry["reason"]
    time.sleep(2)
    assert len(scaled.events("scale_up")) == launched_before
    ray.cancel(ref, force=True)


def test_gpu_demand_starts_a_gpu_node(scaled: Handle) -> None:
    scaled.settle()

    @ray.remote(num_gpus=1)
    def on_gpu() -> str:
        return ",".join(map(str, ray.get_gpu_ids()))

    assert ray.get(on_gpu.remote(), timeout=120) != ""
    assert scaled.nodes("gpu"), "the task ran on a gpu-group node"
    assert any(m.startswith("launched 1 gpu node") and "GPU: 1" in m for m in scaled.events("scale_up"))


def test_node_with_primary_copy_or_running_task_is_kept(scaled: Handle) -> None:
    scaled.settle()

    @ray.remote(num_cpus=1)
    def make_block() -> np.ndarray:
        return np.ones(4_000_000)  # 32 MB: stored in the worker node's object store

    block = make_block.remote()
    ray.wait([block], fetch_local=False, timeout=120)
    node = scaled.wait(lambda: scaled.nodes("cpu", "running"), what="the worker")[0]["name"]
    time.sleep(IDLE_S + 6)  # well past the idle timeout
    assert node in [n["name"] for n in scaled.nodes("cpu")], "a node holding a primary copy must stay"
    assert not any(node in m and m.startswith("removed") for m in scaled.events("scale_down"))

    @ray.remote(num_cpus=1)
    def slow() -> int:
        time.sleep(IDLE_S + 4)
        return 1

    slow_ref = slow.remote()
    del block  # the primary copy is released; the running task keeps a node busy instead
    assert ray.get(slow_ref, timeout=120) == 1
    scaled.wait(lambda: not scaled.nodes("cpu"), timeout=IDLE_S + 40, what="released nodes to be removed")


def test_strict_spread_placement_group_gets_two_nodes(scaled: Handle) -> None:
    scaled.settle()
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(timeout_seconds=120)
    scaled.wait(lambda: len(scaled.nodes("cpu", "running")) == 2, timeout=10, what="two nodes in the snapshot")
    assert len(scaled.nodes("cpu")) == 2  # one bundle per node, no spare node
    remove_placement_group(pg)


def test_killed_worker_is_replaced_and_the_task_retried(scaled: Handle) -> None:
    scaled.settle()

    @ray.remote(num_cpus=1, max_retries=3)
    def long_task() -> str:
        time.sleep(10)
        return "done"

    ref = long_task.remote()
    victim = scaled.wait(lambda: [n for n in scaled.nodes("cpu", "running") if n["resources_used"].get("CPU")],
                         what="a busy worker")[0]["name"]
    entry = scaled.cluster.handle and scaled.bm.manager.backend.store.read("t-autoscale")["nodes"][victim]
    os.killpg(entry["pid"], signal.SIGKILL)
    assert ray.get(ref, timeout=180) == "done"
    failures = [m for m in scaled.events("node_failed") if victim in m]
    assert failures, scaled.events()
    assert victim not in [n["name"] for n in scaled.nodes("cpu")]


def test_label_selector_launches_only_in_the_matching_group(scaled: Handle) -> None:
    scaled.settle()
    launched_before = len(scaled.events("scale_up"))

    @ray.remote(num_cpus=1)
    def node_labels() -> dict[str, str]:
        return dict(ray.get_runtime_context().get_node_labels())

    def demand_entry(text: str) -> dict[str, Any] | None:
        return next((d for d in scaled.snapshot()["demand"] if text in d["reason"]), None)

    # No group is labelled H100: reported infeasible, the selector named, nothing launched.
    h100 = node_labels.options(label_selector={"ray.io/accelerator-type": "H100"}).remote()
    entry = scaled.wait(lambda: demand_entry("H100"), what="the H100 demand to be explained")
    assert (entry["shape"], entry["status"], entry["reason"]) == (
        {"CPU": 1}, "infeasible",
        "no worker group has labels matching {ray.io/accelerator-type: H100} (needed by {CPU: 1})")
    ray.cancel(h100, force=True)

    # Only the a100 group matches A100; the cpu group has room but never gets this task.
    scaled.bm.call(scaled.bm.manager.scale, "t-autoscale", "a100", 0, 1)
    try:
        labels = ray.get(node_labels.options(label_selector={"ray.io/accelerator-type": "A100"}).remote(),
                         timeout=120)
        assert labels["ray.io/accelerator-type"] == "A100"
        assert labels["raykube.io/group"] == "a100"
        launches = scaled.events("scale_up")[launched_before:]
        assert launches and all(m.startswith("launched 1 a100 node") for m in launches), launches
        assert not scaled.nodes("cpu") and not scaled.nodes("gpu")
    finally:
        scaled.bm.call(scaled.bm.manager.scale, "t-autoscale", "a100", 0, 0)
    scaled.wait(lambda: not scaled.nodes("a100"), timeout=IDLE_S + 40, what="the a100 node to be released")
