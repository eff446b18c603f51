"""The autoscaler planner scaling down: which nodes it terminates and which it keeps
(draining, idle longest first down to the minimum, kept for pending demand, busy and starting
nodes never, a lowered max), and request_resources held against total resources.

No Ray needed: the planner is a pure function. The properties over random snapshots, which
include terminations, are in test_planner_scale_up.py.
"""

from __future__ import annotations

from jupyter_raykube.autoscaler.planner import NodeGroup, NodeView, PlanRequest, ResourceDemand, plan

from .planner_cases import by_status, running, starting


def test_draining_nodes_offer_nothing_and_do_not_count_toward_min():
    cpu = NodeGroup("cpu", {"CPU": 4}, min_nodes=1, max_nodes=5)
    draining = NodeView("d", "cpu", "draining", {"CPU": 4}, {"CPU": 4}, 500.0)
    reply = plan(PlanRequest((cpu,), nodes=(draining,), demand=(ResourceDemand({"CPU": 4}, 2),)))
    assert reply.launch == {"cpu": 2}  # min is met by the nodes launched for demand
    assert reply.terminate == ()


def test_idle_nodes_are_released_longest_idle_first_down_to_min():
    cpu = NodeGroup("cpu", {"CPU": 4}, min_nodes=2, max_nodes=10, idle_timeout_s=60)
    nodes = tuple(running(f"n{i}", cpu, {"CPU": 4}, idle_s=s)
                  for i, s in enumerate([100.0, 300.0, 30.0, 200.0, 65.0]))
    reply = plan(PlanRequest((cpu,), nodes=nodes))
    assert [t.node_id for t in reply.terminate] == ["n1", "n3", "n0"]
    assert reply.terminate[0].reason == "idle for 5 min (timeout 1 min)"
    assert reply.launch == {}


def test_idle_node_is_kept_when_pending_demand_fits_on_it():
    cpu = NodeGroup("cpu", {"CPU": 4}, max_nodes=10)
    nodes = (running("a", cpu, {"CPU": 4}, idle_s=500), running("b", cpu, {"CPU": 4}, idle_s=400))
    reply = plan(PlanRequest((cpu,), nodes=nodes, demand=(ResourceDemand({"CPU": 2}, 1),)))
    # The demand goes on the less idle node, so the idlest one can still go.
    assert [t.node_id for t in reply.terminate] == ["a"]
    assert reply.launch == {}


def test_busy_and_starting_nodes_are_never_terminated():
    cpu = NodeGroup("cpu", {"CPU": 4}, max_nodes=10)
    nodes = (running("busy", cpu, {"CPU": 4}, {"CPU": 0}), starting("new", cpu))
    assert plan(PlanRequest((cpu,), nodes=nodes)).terminate == ()


def test_nodes_over_a_lowered_max_are_released_only_when_idle():
    cpu = NodeGroup("cpu", {"CPU": 4}, max_nodes=1, idle_timeout_s=600)
    nodes = (running("a", cpu, {"CPU": 4}, {"CPU": 0}), running("b", cpu, {"CPU": 4}, idle_s=5),
             running("c", cpu, {"CPU": 4}, {"CPU": 1}))
    reply = plan(PlanRequest((cpu,), nodes=nodes, demand=(ResourceDemand({"CPU": 4}, 1),)))
    assert [(t.node_id, t.reason) for t in reply.terminate] == [
        ("b", "cpu group is over its max of 1 node; idle for 5 s")]
    assert reply.launch == {}
    assert by_status(reply) == {("capped", 1): "cpu group is at its max of 1 node"}


def test_request_resources_is_packed_against_total_resources():
    cpu = NodeGroup("cpu", {"CPU": 4}, max_nodes=10)
    busy = tuple(running(f"n{i}", cpu, {"CPU": 4}, {"CPU": 0}) for i in range(2))
    held = plan(PlanRequest((cpu,), nodes=busy, constraints=(ResourceDemand({"CPU": 1}, 8),)))
    assert held.launch == {}
    assert held.pending == ()
    more = plan(PlanRequest((cpu,), nodes=busy, constraints=(ResourceDemand({"CPU": 1}, 12),)))
    assert more.launch == {"cpu": 1}
    assert more.launch_reasons == {"cpu": "request_resources(4 x {CPU: 1})"}
    assert by_status(more, "request_resources") == {("waiting", 4): "1 cpu node starting"}


def test_request_resources_keeps_idle_nodes_it_needs():
    cpu = NodeGroup("cpu", {"CPU": 4}, max_nodes=10)
    nodes = tuple(running(f"n{i}", cpu, {"CPU": 4}, idle_s=100.0 + i) for i in range(3))
    reply = plan(PlanRequest((cpu,), nodes=nodes, constraints=(ResourceDemand({"CPU": 4}, 2),)))
    assert [t.node_id for t in reply.terminate] == ["n2"]
