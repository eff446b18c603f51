"""The autoscaler planner: examples from the issue, then properties over random snapshots.

No Ray needed: the planner is a pure function. ``planner_detail.assign`` exposes where the plan
puts every unit of demand, so "whatever the plan says fits really fits" is checked from outside.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_raykube.autoscaler.planner import (
    ACCELERATOR_WEIGHT,
    GangDemand,
    LabelConstraint,
    NodeGroup,
    NodeView,
    PlanRequest,
    ResourceDemand,
    default_cost,
    format_shape,
    node_costs,
    plan,
)

from jupyter_raykube.autoscaler.planner.labels import format_selectors, resource_name

from .planner_detail import assign, cost_first

CPU1 = NodeGroup("cpu", {"CPU": 1}, max_nodes=3)
CPU4 = NodeGroup("cpu", {"CPU": 4, "memory": 16e9}, max_nodes=10)
GPU = NodeGroup("gpu", {"CPU": 8, "GPU": 1, "memory": 32e9}, max_nodes=4)


def running(node_id, group, total, available=None, idle_s=0.0):
    return NodeView(node_id, group.name if isinstance(group, NodeGroup) else group, "running",
                    dict(total), dict(total if available is None else available), idle_s)


def starting(node_id, group):
    return NodeView(node_id, group.name, "starting", dict(group.resources), dict(group.resources))


def by_status(reply, kind="task"):
    return {(p.status, p.count): p.reason for p in reply.pending if p.kind == kind}


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


def test_strict_spread_puts_each_bundle_on_its_own_node():
    big = NodeGroup("cpu", {"CPU": 16}, max_nodes=10)
    gang = GangDemand("pg1", "STRICT_SPREAD", ({"CPU": 1}, {"CPU": 1}))
    reply = plan(PlanRequest((big,), gangs=(gang,)))
    assert reply.launch == {"cpu": 2}
    assert reply.launch_reasons == {"cpu": "placement group pg1"}
    (status,) = reply.pending
    assert (status.kind, status.status, status.reason) == ("placement_group", "waiting", "2 cpu nodes starting")
    assert status.bundles == ({"CPU": 1}, {"CPU": 1})


def test_strict_spread_uses_distinct_existing_nodes_first():
    big = NodeGroup("cpu", {"CPU": 16}, max_nodes=10)
    gang = GangDemand("pg1", "STRICT_SPREAD", ({"CPU": 1},) * 3)
    reply = plan(PlanRequest((big,), nodes=(running("a", big, {"CPU": 16}),), gangs=(gang,)))
    assert reply.launch == {"cpu": 2}


def test_strict_pack_sums_bundles_onto_one_node():
    small, large = NodeGroup("s", {"CPU": 4}, max_nodes=10), NodeGroup("l", {"CPU": 16}, max_nodes=10)
    gang = GangDemand("pg", "STRICT_PACK", ({"CPU": 4},) * 3)
    assert plan(PlanRequest((small, large), gangs=(gang,))).launch == {"l": 1}
    pack = GangDemand("pk", "PACK", ({"CPU": 4},) * 2)  # may share nodes, need not
    assert plan(PlanRequest((small, large), gangs=(pack,))).launch == {"s": 2}
    too_big = plan(PlanRequest((small,), gangs=(gang,)))
    assert too_big.launch == {}
    (status,) = too_big.pending
    assert status.status == "infeasible"
    assert status.reason == ("no worker group can hold all bundles on one node (STRICT_PACK, "
                             "{CPU: 12} in total): the largest is s with {CPU: 4}")


def test_gang_is_all_or_nothing():
    cpu = NodeGroup("cpu", {"CPU": 4}, max_nodes=2)
    gang = GangDemand("pg", "STRICT_SPREAD", ({"CPU": 1},) * 3)
    reply = plan(PlanRequest((cpu,), gangs=(gang,), demand=(ResourceDemand({"CPU": 1}, 1),)))
    assert reply.launch == {"cpu": 1}  # for the task only: the gang reserved nothing
    assert by_status(reply, "placement_group") == {
        ("capped", 1): "needs 3 distinct nodes (STRICT_SPREAD): cpu group is at its max of 2 nodes"}


def test_identical_gangs_are_packed_together_and_capped_gang_by_gang():
    groups = (NodeGroup("cpu4", {"CPU": 4}, max_nodes=1000), NodeGroup("cpu16", {"CPU": 16}, max_nodes=1000))
    many = tuple(GangDemand(f"t{i:04d}", "PACK", ({"CPU": 1},) * 2) for i in range(1000))
    reply = plan(PlanRequest(groups, gangs=many))
    assert reply.launch == {"cpu16": 125}  # one at a time, each would open a small node
    assert reply.launch_reasons == {"cpu16": "placement groups t0000, t0001 and 998 more"}
    spread = tuple(GangDemand(f"s{i}", "STRICT_SPREAD", ({"CPU": 2},) * 3) for i in range(5))
    reply = plan(PlanRequest((NodeGroup("cpu", {"CPU": 4}, max_nodes=4),), gangs=spread))
    assert reply.launch == {"cpu": 3}  # 2 gangs; node j holds bundle j of both
    assert by_status(reply, "placement_group") == {
        ("waiting", 2): "3 cpu nodes starting",
        ("capped", 3): "needs 3 distinct nodes (STRICT_SPREAD): cpu group is at its max of 4 nodes"}


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


def test_fragmentation_prone_shapes_pack_tightly():
    groups = tuple(NodeGroup(f"cpu{c}", {"CPU": c}, max_nodes=1000) for c in (4, 8, 16))
    reply = plan(PlanRequest(groups, demand=(ResourceDemand({"CPU": 3}, 700), ResourceDemand({"CPU": 5}, 500))))
    launched_cpus = sum(n * int(name[3:]) for name, n in reply.launch.items())
    assert launched_cpus <= 4640  # 4,600 CPUs of demand; 5+5+3+3 fills a 16-CPU node exactly


def test_small_tails_go_to_small_nodes():
    groups = (NodeGroup("cpu4", {"CPU": 4}, max_nodes=100), NodeGroup("cpu16", {"CPU": 16}, max_nodes=100))
    assert plan(PlanRequest(groups, demand=(ResourceDemand({"CPU": 1}, 33),))).launch == {"cpu16": 2, "cpu4": 1}


def test_one_larger_gpu_node_wins_when_it_saves_nodes_for_one_idle_gpu():
    cpu8 = NodeGroup("cpu8", {"CPU": 8}, max_nodes=10)
    gpu1 = NodeGroup("gpu1", {"CPU": 8, "GPU": 1}, max_nodes=10)
    gpu4 = NodeGroup("gpu4", {"CPU": 32, "GPU": 4}, max_nodes=10)
    gpu_tasks = ResourceDemand({"CPU": 8, "GPU": 1}, 3)
    # Cheapest: 3 gpu1 + 1 cpu8 (4 nodes, 3*61 + 11 = 194). One gpu4 holds it all with a GPU
    # idle (1 node, 235): 41 more for 3 nodes fewer.
    reply = plan(PlanRequest((cpu8, gpu1, gpu4), demand=(gpu_tasks, ResourceDemand({"CPU": 1}, 8))))
    assert reply.launch == {"gpu4": 1}
    # Three idle GPUs to save one node is too dear: gpu1 + cpu8 (72) stays.
    one = plan(PlanRequest((cpu8, gpu1, gpu4), demand=(ResourceDemand({"CPU": 8, "GPU": 1}, 1),
                                                       ResourceDemand({"CPU": 1}, 8))))
    assert one.launch == {"cpu8": 1, "gpu1": 1}
    # CPU-only sizes stay cost-first: two small nodes are not merged into a half-empty big one.
    cpu16 = NodeGroup("cpu16", {"CPU": 16}, max_nodes=10)
    assert plan(PlanRequest((cpu8, cpu16), demand=(ResourceDemand({"CPU": 3}, 2),))).launch == {"cpu8": 1}
    # With the larger group at its max the cheapest plan stands.
    full = NodeGroup("gpu4", {"CPU": 32, "GPU": 4}, max_nodes=0)
    assert plan(PlanRequest((cpu8, gpu1, full), demand=(gpu_tasks, ResourceDemand({"CPU": 1}, 8)))).launch == {
        "cpu8": 1, "gpu1": 3}


def test_default_cost_weighs_gpus_far_above_cpus():
    assert default_cost({"CPU": 8, "GPU": 1}) > 4 * default_cost({"CPU": 8})
    assert default_cost({"CPU": 16}) < 4 * default_cost({"CPU": 4})  # per-node overhead
    custom = NodeGroup("cheap", {"CPU": 8, "GPU": 1}, max_nodes=2, cost=1.0)
    reply = plan(PlanRequest((CPU4, custom), demand=(ResourceDemand({"CPU": 1, "GPU": 1}, 1),)))
    assert reply.launch == {"cheap": 1}


def test_equal_cost_goes_to_fewer_nodes():
    # cost = CPUs: twelve 16-CPU nodes cost exactly three 64-CPU ones; the overhead every node
    # carries (Ray's processes, a Pod, a start-up) breaks the tie toward fewer nodes.
    sized = (NodeGroup("cpu16", {"CPU": 16}, max_nodes=100, cost=16.0),
             NodeGroup("cpu64", {"CPU": 64}, max_nodes=100, cost=64.0))
    reply = plan(PlanRequest(sized, demand=(ResourceDemand({"CPU": 3}, 41), ResourceDemand({"CPU": 2}, 30))))
    assert reply.launch == {"cpu64": 3}
    # The tail of 4-CPU tasks plus 0.5-CPU fillers fits two large nodes; small ones would
    # cost as much and add nodes.
    three = (NodeGroup("cpu1", {"CPU": 1}, max_nodes=100, cost=2.5),) + tuple(
        NodeGroup(g.name, g.resources, max_nodes=100, cost=2.5 * g.resources["CPU"]) for g in sized)
    reply = plan(PlanRequest(three, demand=(ResourceDemand({"CPU": 4}, 26), ResourceDemand({"CPU": 0.5}, 25))))
    assert reply.launch == {"cpu64": 2}


def test_shapes_mixed_in_proportion_run_out_together():
    # 700 x 3 CPUs and 500 x 5 CPUs fill 72 64-CPU nodes (8 CPUs spare) only if each node mixes
    # the two in about the demand's proportion (8 + 8, 13 + 5, 18 + 2); the fullest pattern for
    # the 5s first (11 + 3) leaves 3s that waste a CPU per node and two small nodes at the end.
    groups = tuple(NodeGroup(f"cpu{c}", {"CPU": c}, max_nodes=500, cost=0.05 * c) for c in (4, 8, 16, 64))
    reply = plan(PlanRequest(groups, demand=(ResourceDemand({"CPU": 3}, 700), ResourceDemand({"CPU": 5}, 500))))
    assert reply.launch == {"cpu64": 72}


def test_node_overhead_counts_in_the_unit_of_explicit_costs():
    groups = (NodeGroup("small", {"CPU": 4}, cost=0.2), NodeGroup("big", {"CPU": 16}, cost=0.8),
              NodeGroup("free", {"custom": 1}), NodeGroup("gpu", {"CPU": 8, "GPU": 1}))
    # $0.05 per CPU-hour: the 3-CPU overhead is $0.15 a node; groups without a cost keep theirs.
    assert node_costs(groups) == pytest.approx({"small": 0.35, "big": 0.95, "free": 3.0, "gpu": 61.0})
    assert node_costs((NodeGroup("tag", {"custom": 1}, cost=2.0),)) == pytest.approx({"tag": 2.0 + 3 * 2 / 3})


A100 = (LabelConstraint("ray.io/accelerator-type", "in", ("A100",)),)
A100_GROUP = NodeGroup("a100", {"CPU": 8, "GPU": 1}, max_nodes=4, labels={"ray.io/accelerator-type": "A100"})
T4_GROUP = NodeGroup("t4", {"CPU": 8, "GPU": 1}, max_nodes=4, cost=1.0, labels={"ray.io/accelerator-type": "T4"})


def test_label_selector_launches_only_in_a_matching_group():
    # t4 is far cheaper, but only a100's labels match the selector.
    reply = plan(PlanRequest((CPU4, T4_GROUP, A100_GROUP),
                             demand=(ResourceDemand({"CPU": 1, "GPU": 1}, 2, selectors=(A100,)),
                                     ResourceDemand({"CPU": 1, "GPU": 1}, 1))))
    assert reply.launch == {"a100": 2, "t4": 1}
    selected = [p for p in reply.pending if p.selector]
    assert [(p.shape, p.count, p.status, p.selector) for p in selected] == [
        ({"CPU": 1, "GPU": 1}, 2, "waiting", "{ray.io/accelerator-type: A100}")]
    assert reply.launch_reasons["a100"] == (
        "2 pending {CPU: 1, GPU: 1, label_selector: {ray.io/accelerator-type: A100}} tasks")


def test_label_selector_no_group_matches_is_infeasible_and_named():
    reply = plan(PlanRequest((CPU4, T4_GROUP), demand=(ResourceDemand({"CPU": 1}, 3, selectors=(A100,)),)))
    assert reply.launch == {}
    (status,) = reply.pending
    assert (status.shape, status.count, status.status, status.selector) == (
        {"CPU": 1}, 3, "infeasible", "{ray.io/accelerator-type: A100}")
    assert status.reason == "no worker group has labels matching {ray.io/accelerator-type: A100} (needed by {CPU: 1})"
    # Matching labels but too small a node: the reason names both.
    big = plan(PlanRequest((A100_GROUP, CPU4), demand=(ResourceDemand({"CPU": 16}, 1, selectors=(A100,)),)))
    assert by_status(big) == {("infeasible", 1): (
        "no worker group with labels matching {ray.io/accelerator-type: A100} can hold {CPU: 16}: "
        "the largest is a100 with {CPU: 8, GPU: 1}")}


def test_label_operators_and_fallbacks_follow_rays_rules():
    spot = NodeGroup("spot", {"CPU": 4}, max_nodes=4, cost=1.0, labels={"ray.io/market-type": "spot"})
    plain = NodeGroup("plain", {"CPU": 4}, max_nodes=4)  # no label: passes "!spot", fails "spot"
    not_spot = (LabelConstraint("ray.io/market-type", "not_in", ("spot",)),)
    assert plan(PlanRequest((spot, plain), demand=(ResourceDemand({"CPU": 4}, 1, selectors=(not_spot,)),))
                ).launch == {"plain": 1}
    either = (LabelConstraint("ray.io/accelerator-type", "in", ("A100", "H100")),)
    assert plan(PlanRequest((T4_GROUP, A100_GROUP), demand=(ResourceDemand({"GPU": 1}, 1, selectors=(either,)),))
                ).launch == {"a100": 1}
    # A fallback (fallback_strategy) widens the choice: H100 first, else A100.
    h100 = (LabelConstraint("ray.io/accelerator-type", "in", ("H100",)),)
    reply = plan(PlanRequest((T4_GROUP, A100_GROUP), demand=(ResourceDemand({"GPU": 1}, 1, selectors=(h100, A100)),)))
    assert reply.launch == {"a100": 1}
    assert reply.pending[0].selector == "{ray.io/accelerator-type: H100} or {ray.io/accelerator-type: A100}"


def test_label_selector_uses_free_capacity_only_on_matching_nodes():
    nodes = (running("t4-1", T4_GROUP, T4_GROUP.resources), running("a100-1", A100_GROUP, A100_GROUP.resources))
    reply = plan(PlanRequest((T4_GROUP, A100_GROUP), nodes=nodes,
                             demand=(ResourceDemand({"GPU": 1}, 2, selectors=(A100,)),)))
    assert reply.launch == {"a100": 1}  # one on a100-1's free GPU; t4-1's GPU is not for it
    detail = assign(PlanRequest((T4_GROUP, A100_GROUP), nodes=nodes,
                                demand=(ResourceDemand({"GPU": 1}, 2, selectors=(A100,)),)))
    assert {n.node_id: bool(n.demand) for n in detail.nodes} == {"t4-1": False, "a100-1": True, "+a100-0": True}


def test_placement_group_bundle_selectors():
    gang = GangDemand("pg1", "STRICT_PACK", ({"GPU": 1}, {"CPU": 2}), bundle_selectors=((A100,), ()))
    reply = plan(PlanRequest((CPU4, T4_GROUP, A100_GROUP), gangs=(gang,)))
    assert reply.launch == {"a100": 1}
    (status,) = reply.pending
    assert (status.status, status.selector, status.bundles) == (
        "waiting", "{ray.io/accelerator-type: A100}", ({"GPU": 1}, {"CPU": 2}))


def test_strict_pack_bundles_whose_selectors_no_one_group_meets_are_infeasible():
    not_a100 = (LabelConstraint("ray.io/accelerator-type", "not_in", ("A100",)),)
    gang = GangDemand("pg1", "STRICT_PACK", ({"GPU": 1}, {"GPU": 1}), bundle_selectors=((A100,), (not_a100,)))
    reply = plan(PlanRequest((T4_GROUP, A100_GROUP), gangs=(gang,)))
    assert reply.launch == {}
    (status,) = reply.pending
    assert status.status == "infeasible"
    assert status.reason.startswith("no worker group has labels matching {ray.io/accelerator-type: !A100} and "
                                    "{ray.io/accelerator-type: A100} (needed by all bundles on one node")


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

CPUS = st.sampled_from([1, 2, 4, 8, 16])
GROUP_NAMES = ["a", "b", "c", "d"]


@st.composite
def groups(draw):
    n = draw(st.integers(1, 4))
    out = []
    for name in GROUP_NAMES[:n]:
        res = {"CPU": draw(CPUS)}
        if draw(st.booleans()):
            res["GPU"] = draw(st.sampled_from([1, 2, 4]))
        if draw(st.booleans()):
            res["memory"] = draw(st.sampled_from([4e9, 16e9]))
        if draw(st.integers(0, 5)) == 0:
            res["custom"] = 1
        lo = draw(st.integers(0, 2))
        out.append(NodeGroup(name, res, min_nodes=lo, max_nodes=draw(st.integers(lo, 6)),
                             cost=draw(st.sampled_from([None, None, 3.0, 50.0])),
                             idle_timeout_s=draw(st.sampled_from([30.0, 60.0]))))
    return tuple(out)


@st.composite
def shapes(draw):
    s = {"CPU": draw(st.sampled_from([0.5, 1, 2, 3, 4, 5, 8]))}
    if draw(st.integers(0, 3)) == 0:
        s["GPU"] = draw(st.sampled_from([1, 2]))
    if draw(st.integers(0, 3)) == 0:
        s["memory"] = draw(st.sampled_from([1e9, 4e9]))
    if draw(st.integers(0, 10)) == 0:
        s["custom"] = 1
    return s


@st.composite
def requests(draw):
    gs = draw(groups())
    nodes = []
    for i in range(draw(st.integers(0, 8))):
        g = draw(st.sampled_from(gs))
        state = draw(st.sampled_from(["running", "running", "starting", "draining"]))
        total = dict(g.resources)
        if state == "running" and draw(st.booleans()):
            avail = {**total, "CPU": draw(st.integers(0, int(total["CPU"])))}
            idle = 0.0 if avail != total else draw(st.sampled_from([0.0, 10.0, 45.0, 100.0]))
        else:
            avail = total
            idle = draw(st.sampled_from([0.0, 10.0, 100.0, 400.0])) if state != "starting" else 0.0
        nodes.append(NodeView(f"n{i}", g.name, state, total, avail, idle))
    demand = tuple(ResourceDemand(draw(shapes()), draw(st.integers(1, 40)))
                   for _ in range(draw(st.integers(0, 5))))
    gangs = []
    for _ in range(draw(st.integers(0, 3))):  # identical gangs are batched: make some
        strategy = draw(st.sampled_from(["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]))
        bundles = tuple(draw(shapes()) for _ in range(draw(st.integers(1, 4))))
        for _ in range(draw(st.integers(1, 3))):
            gangs.append(GangDemand(f"pg{len(gangs)}", strategy, bundles))
    constraints = tuple(ResourceDemand(draw(shapes()), draw(st.integers(1, 12)))
                        for _ in range(draw(st.integers(0, 2))))
    max_workers = draw(st.one_of(st.none(), st.integers(0, 15)))
    blocked = {g.name: "backed off after a failed launch" for g in gs if draw(st.integers(0, 5)) == 0}
    return PlanRequest(gs, tuple(nodes), demand, tuple(gangs), constraints, max_workers, blocked)


def _alive_after(req, reply):
    gone = {t.node_id for t in reply.terminate}
    alive = Counter(n.group for n in req.nodes if n.state != "draining" and n.node_id not in gone)
    return alive, sum(alive.values())


def check_limits(req, reply):
    """Never above a group's max or max_workers; blocked groups launch nothing."""
    alive, total = _alive_after(req, reply)
    for g in req.groups:
        n = reply.launch.get(g.name, 0)
        assert n >= 0
        if n:
            assert alive[g.name] + n <= g.max_nodes
            assert g.name not in req.blocked_groups
    if req.max_workers is not None and reply.launch:
        assert total + sum(reply.launch.values()) <= req.max_workers
    assert all(n > 0 for n in reply.launch.values())
    assert set(reply.launch_reasons) == set(reply.launch)


def _add(acc, shape, times):
    for k, v in shape.items():
        acc[k] += v * times


def _fits(capacity, used):
    return all(used[k] <= capacity.get(k, 0) + 1e-6 * max(1.0, capacity.get(k, 0)) for k in used)


def _capacities(req, detail):
    groups = {g.name: g for g in req.groups}
    nodes = {n.node_id: n for n in req.nodes}
    out = {}
    for node in detail.nodes:
        if node.origin == "new":
            out[node.node_id] = (dict(groups[node.group].resources), dict(groups[node.group].resources))
        else:
            n = nodes[node.node_id]
            out[node.node_id] = (dict(n.available if n.state == "running" else n.total), dict(n.total))
    return out


def check_fits(req, detail):
    """Place what the plan assigned on free capacity (totals for request_resources): no
    resource goes negative; gangs are all-or-nothing; task statuses add up to the demand."""
    reply = detail.reply
    caps = _capacities(req, detail)
    gone = {t.node_id for t in reply.terminate}
    draining = {n.node_id for n in req.nodes if n.state == "draining"}
    launched = Counter(n.group for n in detail.nodes if n.origin == "new")
    assert dict(launched) == dict(reply.launch)
    gang_units = defaultdict(Counter)  # batch tag -> (bundle position or "", shape) -> copies
    gang_nodes = defaultdict(lambda: defaultdict(set))  # batch tag -> node -> positions on it
    task_units = Counter()
    for node in detail.nodes:
        assert node.node_id not in draining
        if node.node_id in gone:
            assert not node.demand and not node.held
        free, total = caps[node.node_id]
        used, held = defaultdict(float), defaultdict(float)
        for tag, shape, copies in node.demand:
            _add(used, shape, copies)
            if tag.startswith("pg:"):
                batch, _, position = tag.partition("#")
                gang_units[batch][(position, tuple(sorted(shape.items())))] += copies
                gang_nodes[batch][node.node_id].add(position)
            elif tag == "task":
                task_units[tuple(sorted(shape.items()))] += copies
        for _, shape, copies in node.held:
            _add(held, shape, copies)
        assert _fits(free, used), (node, free)
        assert _fits(total, held), (node, total)
    # Gangs: each placed gang has all its bundles placed (STRICT_PACK: their sum, on one node);
    # STRICT_SPREAD: a node holds at most one bundle position of a batch (one bundle per gang).
    gangs = {g.id: g for g in req.gangs}
    placed = [i for ids in detail.gangs.values() for i in ids]
    assert len(placed) == len(set(placed))
    for batch, ids in detail.gangs.items():
        assert gang_units[batch] or not ids
        if not ids:
            continue
        gang = gangs[ids[0]]
        assert all((gangs[i].strategy, Counter(map(_key, gangs[i].bundles))) ==
                   (gang.strategy, Counter(map(_key, gang.bundles))) for i in ids)
        bundles = Counter(map(_key, gang.bundles))
        if gang.strategy == "STRICT_PACK":
            total = defaultdict(float)
            for b in gang.bundles:
                _add(total, b, 1)
            bundles = Counter({_key(total): 1})
        got = Counter()
        for (_, shape), copies in gang_units[batch].items():
            got[shape] += copies
        assert got == Counter({k: n * len(ids) for k, n in bundles.items()})
        if gang.strategy == "STRICT_SPREAD":
            assert all(len(positions) == 1 for positions in gang_nodes[batch].values())
            assert all(copies == len(ids) for copies in gang_units[batch].values())
    gang_status = Counter()
    for p in reply.pending:
        if p.kind == "placement_group":
            gang_status[p.status] += p.count
    assert gang_status["waiting"] == len(placed)
    assert sum(gang_status.values()) == sum(1 for g in req.gangs if any(v > 0 for b in g.bundles for v in b.values()))
    # The reply's task statuses add up to the demand, and "waiting" is what was placed.
    demanded = Counter()
    for d in req.demand:
        demanded[tuple(sorted((k, float(v)) for k, v in d.shape.items() if v > 0))] += d.count
    reported, waiting = Counter(), Counter()
    for p in reply.pending:
        if p.kind == "task":
            key = tuple(sorted(p.shape.items()))
            reported[key] += p.count
            if p.status == "waiting":
                waiting[key] += p.count
            assert p.reason
    assert reported == demanded
    assert waiting == task_units


def _key(shape):
    return tuple(sorted((k, float(v)) for k, v in shape.items() if v > 0))


def _greedy_move(units, leftovers):
    """Can every unit (shape dicts) be put on some leftover? First fit, largest first."""
    for shape in sorted(units, key=lambda s: -sum(s.values())):
        for left in leftovers:
            if all(left.get(k, 0) + 1e-9 >= v for k, v in shape.items()):
                for k, v in shape.items():
                    left[k] = left.get(k, 0) - v
                break
        else:
            return False
    return True


def check_every_launched_node_is_needed(req, detail):
    """Each launched node carries demand (or is for min); the tasks on it cannot all be moved
    to what is left free on the other nodes -- removing it would leave demand unserved."""
    caps = _capacities(req, detail)
    gone = {t.node_id for t in detail.reply.terminate}
    leftovers = {}
    for node in detail.nodes:
        if node.node_id in gone:
            continue
        free = dict(caps[node.node_id][0])
        for _, shape, copies in node.demand:
            for k, v in shape.items():
                free[k] = free.get(k, 0) - v * copies
        leftovers[node.node_id] = free
    for node in detail.nodes:
        if node.origin != "new" or node.for_min:
            continue
        assert node.demand or node.held, f"{node.node_id} launched for nothing"
        if node.held or any(tag != "task" for tag, _, _ in node.demand):
            continue  # request_resources and gang bundles are checked by their own passes
        units = [shape for _, shape, copies in node.demand for _ in range(copies)]
        others = [dict(left) for nid, left in leftovers.items() if nid != node.node_id]
        assert not _greedy_move(units, others), f"{node.node_id}'s tasks fit elsewhere"


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


def check_nodes_are_traded_for_at_most_one_accelerator_each(req, reply):
    """Against the passes' own cost-first plan, any extra cost buys fewer nodes, at most one
    accelerator's price per node saved."""
    costs = node_costs(req.groups)
    cost = sum(n * costs[name] for name, n in reply.launch.items())
    first = cost_first(req)
    saved = first.nodes - sum(reply.launch.values())
    assert cost - first.cost <= ACCELERATOR_WEIGHT * saved + 1e-6


def check_no_gpu_nodes_for_cpu_demand(req, reply):
    """CPU-only demand never launches a GPU node while a CPU group could hold it (capped or not)."""
    cpu_groups = [g for g in req.groups if not g.resources.get("GPU")]
    shapes = [d.shape for d in (*req.demand, *req.constraints)]
    for gang in req.gangs:
        if gang.strategy == "STRICT_PACK":
            total = defaultdict(float)
            for b in gang.bundles:
                _add(total, b, 1)
            shapes.append(dict(total))
        else:
            shapes.extend(gang.bundles)
    if any(s.get("GPU") for s in shapes):
        return
    if not all(any(all(g.resources.get(k, 0) >= v for k, v in s.items()) for g in cpu_groups) for s in shapes):
        return
    alive, _ = _alive_after(req, reply)
    for g in req.groups:
        if g.resources.get("GPU"):
            assert reply.launch.get(g.name, 0) <= max(0, g.min_nodes - alive[g.name])


def check_plan(req):
    """The checks every generated snapshot must pass; returns the planner's detail."""
    detail = assign(req)
    assert plan(req) == detail.reply
    check_limits(req, detail.reply)
    check_fits(req, detail)
    check_every_launched_node_is_needed(req, detail)
    check_nodes_are_traded_for_at_most_one_accelerator_each(req, detail.reply)
    return detail


@settings(max_examples=200, deadline=None)
@given(requests())
def test_plan_invariants(req):
    # One generated snapshot serves every check: generating it costs more than planning.
    detail = check_plan(req)
    check_no_gpu_nodes_for_cpu_demand(req, detail.reply)


@st.composite
def gpu_fleets(draw):
    """A CPU group, a small and a large GPU group, room to spare, GPU and CPU tasks: the
    snapshots where holding the small GPU group back can win."""
    small = draw(st.sampled_from([1, 2]))
    gs = (NodeGroup("cpu", {"CPU": draw(st.sampled_from([4, 8, 16]))}, max_nodes=100),
          NodeGroup("gpu-small", {"CPU": 8 * small, "GPU": small}, max_nodes=100),
          NodeGroup("gpu-large", {"CPU": 32, "GPU": 4, "memory": 16e9}, max_nodes=100))
    gpu = ResourceDemand({"CPU": draw(st.sampled_from([1, 2, 4, 8])), "GPU": 1}, draw(st.integers(1, 9)))
    demand = tuple(ResourceDemand(draw(shapes()), draw(st.integers(1, 12)))
                   for _ in range(draw(st.integers(0, 4))))
    return PlanRequest(gs, demand=(gpu, *demand))


@settings(max_examples=200, deadline=None)
@given(gpu_fleets())
def test_plan_invariants_when_gpu_nodes_are_traded(req):
    check_plan(req)


# --- fewer nodes at equal cost -----------------------------------------------------------------


def largest_node_first(groups, demand):
    """The simple baseline: tasks largest first, each on the first launched node with room,
    else on a new node of the largest group that holds it. Returns (nodes, cost)."""
    by_size = sorted(groups, key=lambda g: -g.resources["CPU"])
    opened = []  # [group, CPUs left]
    for cpus in sorted((d.shape["CPU"] for d in demand for _ in range(d.count)), reverse=True):
        node = next((n for n in opened if n[1] >= cpus - 1e-9), None)
        if node is None:
            group = next(g for g in by_size if g.resources["CPU"] >= cpus)
            node = [group, group.resources["CPU"]]
            opened.append(node)
        node[1] -= cpus
    return len(opened), sum(n[0].cost for n in opened)


@st.composite
def proportional_requests(draw):
    """CPU groups priced in proportion to size (cost = CPUs, in some unit), no limits in the
    way, and CPU tasks the largest group can hold: every packing the baseline finds is open to
    the planner too."""
    sizes = draw(st.lists(st.sampled_from([1, 2, 4, 8, 16, 32, 64]), min_size=1, max_size=4, unique=True))
    rate = draw(st.sampled_from([1.0, 0.05, 2.5]))
    gs = tuple(NodeGroup(f"cpu{s}", {"CPU": s}, max_nodes=10_000, cost=rate * s) for s in sizes)
    fitting = [c for c in (0.5, 1, 2, 3, 4, 6, 8, 12, 16) if c <= max(sizes)]
    cpus = draw(st.lists(st.sampled_from(fitting), min_size=1, max_size=4, unique=True))
    return PlanRequest(gs, demand=tuple(ResourceDemand({"CPU": c}, draw(st.integers(1, 60))) for c in cpus))


@settings(max_examples=300, deadline=None)
@given(proportional_requests())
def test_never_more_nodes_than_largest_node_first_at_equal_or_lower_cost(req):
    check_plan(req)
    reply = plan(req)
    groups = {g.name: g for g in req.groups}
    nodes = sum(reply.launch.values())
    cost = sum(n * groups[name].cost for name, n in reply.launch.items())
    base_nodes, base_cost = largest_node_first(req.groups, req.demand)
    assert nodes <= base_nodes or cost < base_cost - 1e-9, (reply.launch, base_nodes, base_cost)


# --- label selectors over random snapshots -----------------------------------------------------

LABEL_SETS = ({}, {"acc": "a"}, {"acc": "b"}, {"acc": "a", "spot": "yes"})
SELECTOR_SETS = (
    (),
    ((LabelConstraint("acc", "in", ("a",)),),),
    ((LabelConstraint("acc", "not_in", ("a",)),),),  # also nodes without the label
    ((LabelConstraint("acc", "in", ("a", "b")), LabelConstraint("spot", "not_in", ("yes",))),),
    ((LabelConstraint("acc", "in", ("c",)),), (LabelConstraint("acc", "in", ("b",)),)),  # a fallback
    ((LabelConstraint("acc", "in", ("c",)),),),  # no group is ever labelled c
)


def ray_matches(selectors, labels):
    """Ray's rule, written out again: some selector whose every constraint holds; a missing
    label fails ``in`` and passes ``not_in``."""
    def holds(c):
        return labels.get(c.key) in c.values if c.op == "in" else labels.get(c.key) not in c.values

    return any(all(holds(c) for c in selector) for selector in selectors)


@st.composite
def labelled_requests(draw):
    gs = tuple(NodeGroup(name, {"CPU": draw(CPUS)}, max_nodes=draw(st.integers(0, 6)),
                         labels=draw(st.sampled_from(LABEL_SETS)))
               for name in GROUP_NAMES[:draw(st.integers(1, 4))])
    nodes = []
    for i in range(draw(st.integers(0, 5))):
        g = draw(st.sampled_from(gs))
        free = draw(st.integers(0, int(g.resources["CPU"])))
        nodes.append(NodeView(f"n{i}", g.name, "running", dict(g.resources), {"CPU": free}))
    demand = tuple(ResourceDemand({"CPU": draw(st.sampled_from([0.5, 1, 2, 4, 8]))}, draw(st.integers(1, 30)),
                                  selectors=draw(st.sampled_from(SELECTOR_SETS)))
                   for _ in range(draw(st.integers(1, 4))))
    gangs = []
    for _ in range(draw(st.integers(0, 2))):
        size = draw(st.integers(1, 3))
        gangs.append(GangDemand(f"pg{len(gangs)}", draw(st.sampled_from(["PACK", "STRICT_PACK", "STRICT_SPREAD"])),
                                tuple({"CPU": draw(st.sampled_from([1, 2]))} for _ in range(size)),
                                tuple(draw(st.sampled_from(SELECTOR_SETS)) for _ in range(size))))
    return PlanRequest(gs, tuple(nodes), demand, tuple(gangs))


@settings(max_examples=300, deadline=None)
@given(labelled_requests())
def test_label_selectors_place_only_on_matching_nodes(req):
    detail = assign(req)
    reply = detail.reply
    check_limits(req, reply)
    group_of = {g.name: g for g in req.groups}
    node_group = {n.node_id: n.group for n in req.nodes}
    selectors_of = {resource_name(s): s for s in SELECTOR_SETS if s}
    for node in detail.nodes:
        group = group_of[node.group if node.origin == "new" else node_group[node.node_id]]
        free = group.resources["CPU"] if node.origin == "new" else next(
            n.available["CPU"] for n in req.nodes if n.node_id == node.node_id)
        used = 0.0
        for _, shape, copies in node.demand:
            used += shape["CPU"] * copies
            for key in shape:
                if key != "CPU":
                    assert ray_matches(selectors_of[key], group.labels), (node, group)
        assert used <= free + 1e-9, node
    # A task shape is infeasible exactly when no group's labels match it (or no matching group is
    # large enough), and then the reason names the selector.
    for d in req.demand:
        statuses = [p for p in reply.pending if p.kind == "task" and p.shape == d.shape
                    and p.selector == format_selectors(d.selectors)]
        assert statuses, d
        matching = [g for g in req.groups if not d.selectors or ray_matches(d.selectors, g.labels)]
        infeasible = [p for p in statuses if p.status == "infeasible"]
        if not any(g.resources["CPU"] >= d.shape["CPU"] for g in matching):
            assert infeasible
            if not matching:
                assert all(p.reason.startswith(f"no worker group has labels matching {p.selector}")
                           for p in infeasible)
        else:
            assert not infeasible
