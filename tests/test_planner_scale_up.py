"""The autoscaler planner scaling up: how many nodes of which group a snapshot's demand
launches, and what each pending shape is told (waiting, capped, infeasible, backed off), from
examples of the issue; then properties over random snapshots: the same input gives the same
plan in any order, and every plan keeps the invariants of planner_checks.py.

No Ray needed: the planner is a pure function. ``planner_detail.assign`` exposes where the plan
puts every unit of demand, so "whatever the plan says fits really fits" is checked from outside.
Scaling down is in test_planner_scale_down.py; gangs, costs and label selectors in
test_planner_placement.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_raykube.autoscaler.planner import NodeGroup, PlanRequest, ResourceDemand, format_shape, plan

from .planner_cases import CPU1, CPU4, GPU, by_status, requests, running, starting
from .planner_checks import check_no_gpu_nodes_for_cpu_demand, check_plan


# --- examples from the issue --------------------------------------------------------------------


def test_group_max_caps_launch_and_names_the_max():
    reply = plan(PlanRequest((CPU1,), demand=(ResourceDemand({"CPU": 1}, 6),)))
    assert reply.launch == {"cpu": 3}
    assert by_status(reply) == {
        ("waiting", 3): "3 cpu nodes starting",
        ("capped", 3): "cpu group is at its max of 3 nodes",
    }
    assert reply.launch_reasons == {"cpu": "3 pending {CPU: 1} tasks"}


def test_infeasible_shape_names_the_largest_group_and_launches_nothing():
    reply = plan(PlanRequest((CPU1,), demand=(ResourceDemand({"CPU": 64}, 2),)))
    assert reply.launch == {}
    assert by_status(reply) == {
        ("infeasible", 2): "no worker group can hold {CPU: 64}: the largest is cpu with {CPU: 1}"}


def test_resource_no_group_offers_is_infeasible():
    reply = plan(PlanRequest((CPU4, GPU), demand=(ResourceDemand({"TPU": 1}, 1),)))
    assert reply.launch == {}
    assert by_status(reply) == {("infeasible", 1): "no worker group offers TPU (needed by {TPU: 1})"}


def test_gpu_demand_launches_a_gpu_node():
    reply = plan(PlanRequest((CPU4, GPU), demand=(ResourceDemand({"CPU": 1, "GPU": 1}, 1),)))
    assert reply.launch == {"gpu": 1}
    assert reply.launch_reasons == {"gpu": "1 pending {CPU: 1, GPU: 1} task"}


def test_cpu_demand_never_launches_gpu_nodes_while_a_cpu_group_exists():
    reply = plan(PlanRequest((CPU4, GPU), demand=(ResourceDemand({"CPU": 1}, 20),)))
    assert reply.launch == {"cpu": 5}
    # Decision: a capped CPU group is reported as capped; GPU nodes are not spent on CPU work.
    capped = PlanRequest((NodeGroup("cpu", {"CPU": 4}, max_nodes=1), GPU),
                         demand=(ResourceDemand({"CPU": 1}, 20),))
    reply = plan(capped)
    assert reply.launch == {"cpu": 1}
    assert by_status(reply)[("capped", 16)] == "cpu group is at its max of 1 node"


def test_cpu_demand_uses_gpu_nodes_when_no_other_group_could_ever_hold_it():
    reply = plan(PlanRequest((GPU,), demand=(ResourceDemand({"CPU": 2}, 4),)))
    assert reply.launch == {"gpu": 1}
    too_big = plan(PlanRequest((CPU4, GPU), demand=(ResourceDemand({"CPU": 6}, 1),)))
    assert too_big.launch == {"gpu": 1}


def test_cpu_demand_fills_spare_cpus_of_gpu_nodes_launched_for_gpu_work():
    reply = plan(PlanRequest((CPU4, GPU), demand=(ResourceDemand({"CPU": 1, "GPU": 1}, 1),
                                                  ResourceDemand({"CPU": 1}, 7))))
    assert reply.launch == {"gpu": 1}


def test_starting_nodes_count_as_capacity():
    cpu = NodeGroup("cpu", {"CPU": 4}, max_nodes=10)
    reply = plan(PlanRequest((cpu,), nodes=(starting("n1", cpu),), demand=(ResourceDemand({"CPU": 1}, 4),)))
    assert reply.launch == {}
    assert by_status(reply) == {("waiting", 4): "1 cpu node starting"}
    reply = plan(PlanRequest((cpu,), nodes=(starting("n1", cpu),), demand=(ResourceDemand({"CPU": 1}, 5),)))
    assert reply.launch == {"cpu": 1}


def test_free_capacity_of_running_nodes_is_used_and_reported():
    cpu = NodeGroup("cpu", {"CPU": 4}, max_nodes=10)
    node = running("n1", cpu, {"CPU": 4}, {"CPU": 2})
    reply = plan(PlanRequest((cpu,), nodes=(node,), demand=(ResourceDemand({"CPU": 1}, 2),)))
    assert reply.launch == {}
    assert by_status(reply) == {("waiting", 2): "fits on free capacity of running nodes"}


def test_min_nodes_is_enforced_without_demand():
    cpu = NodeGroup("cpu", {"CPU": 4}, min_nodes=2, max_nodes=5)
    assert plan(PlanRequest((cpu,))).launch == {"cpu": 2}
    assert plan(PlanRequest((cpu,))).launch_reasons == {"cpu": "the group's minimum of 2"}
    one = plan(PlanRequest((cpu,), nodes=(running("a", cpu, {"CPU": 4}, idle_s=5),)))
    assert one.launch == {"cpu": 1}


def test_blocked_group_launches_nothing_and_says_why():
    reply = plan(PlanRequest((CPU4, GPU), demand=(ResourceDemand({"GPU": 1}, 2),),
                             blocked_groups={"gpu": "quota exceeded"}))
    assert reply.launch == {}
    assert by_status(reply) == {("capped", 2): "gpu group is backed off: quota exceeded"}


def test_global_max_workers():
    cpu = NodeGroup("cpu", {"CPU": 1}, max_nodes=10)
    reply = plan(PlanRequest((cpu,), nodes=(running("a", cpu, {"CPU": 1}, {"CPU": 0}),),
                             demand=(ResourceDemand({"CPU": 1}, 5),), max_workers=3))
    assert reply.launch == {"cpu": 2}
    assert by_status(reply)[("capped", 3)] == "cluster is at max_workers=3"


def test_cost_of_a_plan_does_not_grow_with_identical_tasks():
    # One object per (shape, count): a trillion pending tasks is as cheap to plan as one.
    cpu = NodeGroup("cpu", {"CPU": 4}, max_nodes=10**15)
    reply = plan(PlanRequest((cpu,), demand=(ResourceDemand({"CPU": 1}, 10**12),)))
    assert reply.launch == {"cpu": 25 * 10**10}


def test_format_shape():
    assert format_shape({"GPU": 1.0, "CPU": 1}) == "{CPU: 1, GPU: 1}"
    assert format_shape({"CPU": 2, "memory": 4 * 2**30}) == "{CPU: 2, memory: 4 GiB}"
    assert format_shape({"CPU": 0.0001, "memory": 4e9}) == "{CPU: 0.0001, memory: 3.7 GiB}"
    assert format_shape({"CPU": 0.5, "object_store_memory": 2**30, "custom": 1}) == (
        "{CPU: 0.5, object_store_memory: 1 GiB, custom: 1}")
    assert format_shape({"memory": 1.5 * 2**30}) == "{memory: 1.5 GiB}"


def test_empty_request_plans_nothing():
    assert plan(PlanRequest((CPU4,))) == plan(PlanRequest((CPU4,)))
    assert plan(PlanRequest((CPU4,))).launch == {}


def test_duplicate_group_names_are_rejected():
    with pytest.raises(ValueError, match="duplicate node group name 'cpu'"):
        plan(PlanRequest((CPU1, CPU4)))


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(requests(), st.randoms(use_true_random=False))
def test_same_input_same_plan_in_any_order(req, rnd):
    def shuffled(items):
        items = list(items)
        rnd.shuffle(items)
        return tuple(items)

    first = plan(req)
    assert plan(req) == first
    permuted = PlanRequest(shuffled(req.groups), shuffled(req.nodes), shuffled(req.demand),
                           shuffled(req.gangs), shuffled(req.constraints), req.max_workers,
                           dict(req.blocked_groups))
    assert plan(permuted) == first


@settings(max_examples=200, deadline=None)
@given(requests())
def test_plan_invariants(req):
    # One generated snapshot serves every check: generating it costs more than planning.
    detail = check_plan(req)
    check_no_gpu_nodes_for_cpu_demand(req, detail.reply)
