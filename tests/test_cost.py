"""Cost in view: groups priced per node-hour, what a cluster costs now and so far, and the
user's budget (a warning at 80 %, every group scaled to 0 at 100 %), on a real local cluster."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from jupyter_raykube import formatting as fmt
from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.cost import CostMeter, hourly_rate
from jupyter_raykube.display import status_lines
from jupyter_raykube.manager import Cluster, ClusterManager
from jupyter_raykube.policy import Policy, PolicyError
from jupyter_raykube.spec import ClusterSpec, WorkerGroup

from .conftest import cluster_processes, wait_for


def test_the_meter_counts_existing_priced_nodes_by_the_hour() -> None:
    spec = ClusterSpec(name="c", groups=(WorkerGroup("cpu", max=4, cost=2.0), WorkerGroup("big", max=1)))
    nodes = [SimpleNamespace(group=g, state=s) for g, s in
             (("cpu", "starting"), ("cpu", "running"), ("cpu", "draining"), ("cpu", "failed"), ("big", "running"),
              ("head", "running"))]
    assert hourly_rate(spec, nodes) == 6.0  # starting machines are billed; unpriced groups and the head are not
    meter = CostMeter()
    meter.advance(1000.0, 6.0)
    meter.advance(1000.0 + 1800, 2.0)  # half an hour at 6/h
    meter.stop(1000.0 + 3600)  # then half an hour at 2/h
    assert (meter.so_far, meter.per_hour) == (4.0, 0.0)
    assert fmt.cost_text({"per_hour": 2.4, "so_far": 0.35, "user_so_far": 3.1, "budget": 10}) == (
        "2.4/h now, 0.35 so far; 3.1 of your budget of 10")
    assert fmt.cost_text(None) == ""


def _cost(bm: BlockingManager, cluster: Cluster) -> dict:  # type: ignore[type-arg]
    async def read() -> dict:  # type: ignore[type-arg]
        return dict(cluster.snapshot()["cost"] or {})

    return bm.call(read)


def _events(bm: BlockingManager, cluster: Cluster) -> list[str]:
    async def read() -> list[str]:
        return [f"{e['kind']}: {e['message']}" for e in cluster.events.to_json()]

    return bm.call(read)


def test_a_priced_cluster_shows_its_cost_and_stops_growing_at_the_budget() -> None:
    # 3600 per node-hour is 1 per second: a budget of 6 is spent a few seconds after the node starts
    bm = BlockingManager(lambda: ClusterManager(policy=Policy(budget=6), autoscale_interval_s=0.5))
    try:
        spec = ClusterSpec(name="t-cost", groups=(WorkerGroup("cpu", cpus=1, min=1, max=1, cost=3600),))
        cluster = bm.call(bm.manager.create, spec)
        assert cluster.handle is not None
        uid = cluster.handle.details["uid"]
        wait_for(lambda: _cost(bm, cluster).get("per_hour") == 3600, 30, "the node to be priced")
        snap = bm.call(bm.manager.refresh, cluster).snapshot()
        assert any(line.startswith("  cost: 3600/h now, ") and "of your budget of 6" in line
                   for line in status_lines(snap)), status_lines(snap)

        wait_for(lambda: any(e.startswith("info: ") and "of your budget of 6 is spent (" in e
                             for e in _events(bm, cluster)), 60, "the 80 % warning")
        wait_for(lambda: any(e.startswith("scale_down: ") and "every group scaled to 0 workers" in e
                             for e in _events(bm, cluster)), 60, "the budget to scale the groups to 0")
        assert [(g.min, g.max) for g in cluster.spec.groups] == [(0, 0)]
        # Spent: a change that could add workers is refused up front; one that adds none is not
        with pytest.raises(PolicyError, match="of your budget of 6: no workers can be added"):
            bm.call(bm.manager.scale, "t-cost", "cpu", 0, 1)
        bm.call(bm.manager.scale, "t-cost", "cpu", 0, 0)
        wait_for(lambda: _cost(bm, cluster).get("per_hour") == 0, 90, "the worker to be removed")
        cost = _cost(bm, cluster)
        assert cost["so_far"] >= 6 and cost["user_so_far"] >= cost["so_far"] and cost["budget"] == 6, cost
        spent = cost["so_far"]
        bm.call(bm.manager.stop, "t-cost")
        wait_for(lambda: not cluster_processes(uid), 60, "the stopped cluster's processes to exit")
        assert bm.manager._user_spent() >= spent  # a stopped cluster's cost still counts for the budget
    finally:
        bm.close()
