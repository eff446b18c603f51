"""Where the autoscaler planner puts demand: placement groups (STRICT_SPREAD, STRICT_PACK, all
or nothing, identical gangs batched), costs (tight packing, small tails, a larger GPU node that
saves nodes, fewer nodes at equal cost), and Ray's label selectors (matching groups only,
operators and fallbacks, bundle selectors); from examples, then properties over random
snapshots: GPU fleets where a group is held back, never more nodes than largest-node-first at
equal or lower cost, and label selectors placing only on matching nodes.

No Ray needed: the planner is a pure function; ``planner_detail.assign`` shows where the plan
put each unit of demand.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_raykube.autoscaler.planner import (
    GangDemand,
    LabelConstraint,
    NodeGroup,
    NodeView,
    PlanRequest,
    ResourceDemand,
    default_cost,
    node_costs,
    plan,
)
from jupyter_raykube.autoscaler.planner.labels import format_selectors, resource_name

from .planner_cases import CPU4, CPUS, GROUP_NAMES, by_status, running, shapes
from .planner_checks import check_limits, check_plan
from .planner_detail import assign


# --- placement groups -----------------------------------------------------------------------------


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


# --- costs ----------------------------------------------------------------------------------------


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


# --- label selectors ----------------------------------------------------------------------------

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
