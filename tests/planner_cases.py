"""What the planner's tests plan: the fixed groups and node views of the examples, and the
hypothesis strategies that draw random snapshots (groups, node states, tasks, gangs,
request_resources, max_workers, backed-off groups) for the property tests."""

from __future__ import annotations

from hypothesis import strategies as st

from jupyter_raykube.autoscaler.planner import GangDemand, NodeGroup, NodeView, PlanRequest, ResourceDemand

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


# --- random snapshots ---------------------------------------------------------------------------

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
