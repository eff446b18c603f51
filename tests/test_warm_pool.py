"""A group's warm pool (`warm`): idle nodes kept ready beyond demand, so the first tasks start
without waiting for a node. The planner's rules on snapshots, the spec's parsing, and one real
local cluster where a first task runs on the warm node with no launch for it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import ray

from jupyter_raykube.autoscaler.planner import NodeGroup, NodeView, PlanRequest, ResourceDemand, plan
from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.connect import connect_driver
from jupyter_raykube.manager import Cluster
from jupyter_raykube.spec import ClusterSpec, SpecError, WorkerGroup

from .conftest import cluster_processes, wait_for

CPU = NodeGroup("cpu", {"CPU": 1}, min_nodes=0, max_nodes=3, idle_timeout_s=5.0, warm_nodes=1)


def node(name: str, *, busy: bool = False, idle_s: float = 1.0, state: str = "running") -> NodeView:
    return NodeView(name, "cpu", state, {"CPU": 1}, {"CPU": 0 if busy else 1},  # type: ignore[arg-type]
                    idle_s=0.0 if busy or state != "running" else idle_s)


# --- the planner ------------------------------------------------------------------------------


def test_warm_node_is_launched_with_no_demand_and_named_in_the_reason() -> None:
    reply = plan(PlanRequest(groups=(CPU,)))
    assert reply.launch == {"cpu": 1}
    assert reply.launch_reasons["cpu"] == "the group's warm pool of 1 idle node"


def test_an_idle_or_starting_node_is_the_warm_pool() -> None:
    assert plan(PlanRequest(groups=(CPU,), nodes=(node("a"),))).launch == {}
    assert plan(PlanRequest(groups=(CPU,), nodes=(node("s", state="starting"),))).launch == {}


def test_a_node_that_just_joined_is_warm_before_ray_reports_it_idle() -> None:
    joined = NodeView("a", "cpu", "running", {"CPU": 1, "memory": 1e9}, {"CPU": 1, "memory": 1e9}, idle_s=0.0)
    assert plan(PlanRequest(groups=(CPU,), nodes=(joined,))).launch == {}


def test_warm_node_is_kept_past_its_idle_timeout_and_extra_idle_nodes_are_drained() -> None:
    alone = plan(PlanRequest(groups=(CPU,), nodes=(node("a", idle_s=60),)))
    assert alone.terminate == () and alone.launch == {}
    two = plan(PlanRequest(groups=(CPU,), nodes=(node("a", idle_s=60), node("b", idle_s=30))))
    assert [t.node_id for t in two.terminate] == ["a"]  # the longest idle goes, one stays warm


def test_a_task_on_the_warm_node_is_replaced_by_a_new_warm_node() -> None:
    reply = plan(PlanRequest(groups=(CPU,), nodes=(node("a"),), demand=(ResourceDemand({"CPU": 1}, 1),)))
    assert reply.launch == {"cpu": 1}  # the task takes "a"; one more node keeps the pool at 1
    assert "warm pool" in reply.launch_reasons["cpu"] and "pending" not in reply.launch_reasons["cpu"]
    assert [p.reason for p in reply.pending] == ["fits on free capacity of running nodes"]


def test_warm_pool_stays_within_max_and_max_workers() -> None:
    full = NodeGroup("cpu", {"CPU": 1}, max_nodes=1, warm_nodes=1)
    assert plan(PlanRequest(groups=(full,), nodes=(node("a", busy=True),))).launch == {}
    assert plan(PlanRequest(groups=(CPU,), nodes=(node("a", busy=True),), max_workers=1)).launch == {}


def test_warm_nodes_count_in_the_launched_cost_like_any_node() -> None:
    priced = NodeGroup("cpu", {"CPU": 1}, max_nodes=3, warm_nodes=2, cost=5.0)
    assert plan(PlanRequest(groups=(priced,))).launch == {"cpu": 2}


# --- the spec ---------------------------------------------------------------------------------


def test_warm_is_parsed_like_the_other_group_fields() -> None:
    spec = ClusterSpec.from_dict({"name": "w", "groups": {"cpu": {"max": 2, "warm": 1}}})
    assert spec.group("cpu").warm == 1
    assert ClusterSpec.decode(spec.to_dict()).group("cpu").warm == 1
    with pytest.raises(SpecError, match=r"groups\.cpu\.warm=3 .*from 0 to the group's max \(2\)"):
        ClusterSpec.from_dict({"name": "w", "groups": {"cpu": {"max": 2, "warm": 3}}})
    with pytest.raises(SpecError, match=r"groups\.cpu\.warm='1' .*a whole number"):
        ClusterSpec.from_dict({"name": "w", "groups": {"cpu": {"max": 2, "warm": "1"}}})


# --- a real local cluster ---------------------------------------------------------------------


@pytest.fixture
def warm_cluster() -> Iterator[tuple[BlockingManager, Cluster]]:
    bm = BlockingManager()
    spec = ClusterSpec(name="t-warm", idle_timeout_s=3.0,
                       groups=(WorkerGroup("cpu", cpus=1, min=0, max=2, warm=1),))
    cluster = bm.call(bm.manager.create, spec)
    uid = cluster.handle.details["uid"]
    try:
        connect_driver(cluster.handle.address, bm.manager.token)
        yield bm, cluster
    finally:
        ray.shutdown()
        bm.close()
    assert cluster_processes(uid) == []


def test_first_task_runs_on_the_warm_node_without_a_launch(warm_cluster: tuple[BlockingManager, Cluster]) -> None:
    bm, cluster = warm_cluster

    def snapshot() -> dict:
        async def take() -> dict:
            return dict(cluster.snapshot())

        return bm.call(take)

    def running() -> list[dict]:
        return [n for n in snapshot()["nodes"] if n["group"] == "cpu" and n["state"] == "running"]

    warm = wait_for(running, 120, "the warm node to join with no demand")
    assert len(warm) == 1
    time.sleep(5)  # past the 3 s idle timeout: the warm node stays
    assert [n["name"] for n in running()] == [warm[0]["name"]], [e.message for e in cluster.events]

    @ray.remote(num_cpus=1)
    def where() -> str:
        time.sleep(3)  # busy long enough for the autoscaler to see the warm node taken
        return ray.get_runtime_context().get_node_id()

    assert ray.get(where.remote(), timeout=60) == warm[0]["id"]

    def launches() -> list[str]:
        return [e.message for e in cluster.events if e.kind == "scale_up"]

    # The task took the warm node, so another is launched for the pool (none for the task);
    # once both are idle, the one above the warm count is drained past its timeout.
    wait_for(lambda: len(launches()) == 2, 60, "a second warm launch after the task took the first")
    assert all("warm pool" in m and "pending" not in m for m in launches()), launches()
    wait_for(lambda: any(e.kind == "scale_down" and e.message.startswith("removed idle cpu node")
                         for e in cluster.events), 90, "the extra idle node to be removed")
    wait_for(lambda: len(running()) == 1 and all(
        n["state"] == "running" for n in snapshot()["nodes"] if n["group"] == "cpu"), 60, "one warm node left")
    assert len(launches()) == 2, launches()


def test_no_removal_countdown_for_the_nodes_a_warm_pool_keeps() -> None:
    from jupyter_raykube import formatting as fmt

    def node(name: str, idle_s: float) -> dict:
        return {"name": name, "group": "cpu", "state": "running", "head": False, "idle_s": idle_s}

    snap = {"idle_timeout_s": 60.0, "nodes": [node("a", 20.0), node("b", 0.0)],
            "groups": [{"name": "cpu", "min": 0, "max": 3, "warm": 1, "nodes": 2}]}
    assert fmt.seconds_until_removal(snap["nodes"][0], snap) is None  # the one idle node is the pool
    two_idle = {**snap, "nodes": [node("a", 20.0), node("b", 50.0)]}
    assert fmt.seconds_until_removal(two_idle["nodes"][0], two_idle) is None  # the least idle stays
    assert fmt.seconds_until_removal(two_idle["nodes"][1], two_idle) == 10.0
