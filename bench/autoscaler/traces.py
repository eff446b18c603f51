"""Demand snapshots for the planner benchmark, written as our own ``PlanRequest``s.

Each trace is deterministic (a seeded ``random.Random``), so ours and Ray's scheduler see
exactly the same inputs on every run. ``ray_side.to_scheduling_request`` converts a
``PlanRequest`` into Ray's ``SchedulingRequest``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from jupyter_raykube.autoscaler.planner import (
    GangDemand,
    NodeGroup,
    NodeView,
    PlanRequest,
    ResourceDemand,
)

GB = 1e9

# Like a KubeRay cluster with a few workerGroupSpecs.
# Maxes are high enough that only the 100k burst and the "capped" trace hit them.
CPU_GROUPS = (
    NodeGroup("cpu4", {"CPU": 4, "memory": 16 * GB}, max_nodes=2500),
    NodeGroup("cpu16", {"CPU": 16, "memory": 64 * GB}, max_nodes=2500),
)
GPU_GROUPS = (
    NodeGroup("gpu1", {"CPU": 8, "GPU": 1, "memory": 32 * GB}, max_nodes=300),
    NodeGroup("gpu4", {"CPU": 32, "GPU": 4, "memory": 128 * GB}, max_nodes=200),
)
# No group can ever hold these: both sides must report them and launch nothing for them.
INFEASIBLE = (ResourceDemand({"CPU": 48}, 7), ResourceDemand({"CPU": 1, "TPU": 4}, 3))
MIXED_GROUPS = CPU_GROUPS + GPU_GROUPS

CPU_SHAPES = (
    {"CPU": 1},
    {"CPU": 2},
    {"CPU": 0.5},
    {"CPU": 4},
    {"CPU": 1, "memory": 2 * GB},
    {"CPU": 2, "memory": 8 * GB},
    {"CPU": 3},
    {"CPU": 8},
)
GPU_SHAPES = ({"CPU": 1, "GPU": 1}, {"CPU": 4, "GPU": 1}, {"CPU": 8, "GPU": 2})


@dataclass(frozen=True)
class Trace:
    name: str
    description: str
    request: PlanRequest
    ray_skip_reason: str | None = None  # why Ray's scheduler is not run on this trace


def _split(total: int, shapes: tuple, rng: random.Random, weights=None) -> tuple[ResourceDemand, ...]:
    """``total`` units spread over ``shapes`` (seeded, so every run sees the same counts)."""
    weights = weights or [rng.random() + 0.2 for _ in shapes]
    counts = [int(total * w / sum(weights)) for w in weights]
    counts[0] += total - sum(counts)
    return tuple(ResourceDemand(dict(s), c) for s, c in zip(shapes, counts) if c > 0)


def _mixed_burst(units: int, seed: int) -> tuple[ResourceDemand, ...]:
    rng = random.Random(seed)
    cpu = _split(units - units // 20 - 10, CPU_SHAPES, rng)
    gpu = _split(units // 20, GPU_SHAPES, rng)
    return cpu + gpu + INFEASIBLE


def _existing(n: int, seed: int, groups=CPU_GROUPS, idle_fraction=0.3) -> tuple[NodeView, ...]:
    """``n`` running nodes: some idle (a few past their timeout), the rest partly busy."""
    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        g = groups[i % len(groups)]
        total = dict(g.resources)
        if rng.random() < idle_fraction:
            nodes.append(NodeView(f"{g.name}-{i:05d}", g.name, "running", total, total,
                                  idle_s=rng.choice([5.0, 30.0, 90.0, 300.0])))
        else:
            free_cpu = rng.choice([0, 0, 0, 1, 2, 0.5]) if total["CPU"] > 2 else 0
            avail = {**total, "CPU": min(free_cpu, total["CPU"]),
                     "memory": total["memory"] * rng.choice([0.25, 0.5, 1.0])}
            nodes.append(NodeView(f"{g.name}-{i:05d}", g.name, "running", total, avail))
    return tuple(nodes)


CPU64 = NodeGroup("cpu64", {"CPU": 64, "memory": 256 * GB}, max_nodes=500)


def _proportional(groups: tuple[NodeGroup, ...], per_cpu: float = 1.0) -> tuple[NodeGroup, ...]:
    """The same groups with explicit costs proportional to size, as an admin copies them from a
    cloud price list: ``per_cpu`` per CPU and 50 times that per GPU. Many packings then cost
    the same; the planner must still pick the one with the fewest nodes."""
    return tuple(replace(g, cost=per_cpu * (g.resources.get("CPU", 0) + 50 * g.resources.get("GPU", 0)))
                 for g in groups)


RAY_TOO_SLOW = ("Ray's v2 scheduler walks one ResourceRequest per pending task against every "
                "candidate node (O(tasks x nodes)); at 5,000 mixed tasks it already takes seconds "
                "per decision, so traces above 10,000 units are run for ours only")


def traces() -> list[Trace]:
    out = [
        Trace("burst-1k-cpu", "1,000 tasks in 8 CPU shapes, empty cluster, cpu4/cpu16 groups",
              PlanRequest(CPU_GROUPS, demand=_split(1000, CPU_SHAPES, random.Random(1)))),
        Trace("burst-5k-mixed", "5,000 tasks: 8 CPU shapes + 5% GPU tasks + 10 infeasible, cpu+gpu groups",
              PlanRequest(MIXED_GROUPS, demand=_mixed_burst(5000, 2))),
        Trace("burst-10k-mixed", "10,000 tasks: 8 CPU shapes + 5% GPU tasks + 10 infeasible, cpu+gpu groups",
              PlanRequest(MIXED_GROUPS, demand=_mixed_burst(10_000, 3))),
        Trace("burst-100k-mixed", "100,000 tasks: 8 CPU shapes + 5% GPU tasks + 10 infeasible, cpu+gpu groups",
              PlanRequest(MIXED_GROUPS, demand=_mixed_burst(100_000, 4)),
              ray_skip_reason=RAY_TOO_SLOW),
        Trace("gpu-tasks", "GPU tasks (1, 1+4CPU, 2+8CPU) with CPU tasks, cpu+gpu groups",
              PlanRequest(MIXED_GROUPS, demand=_split(60, GPU_SHAPES, random.Random(5))
                          + _split(300, CPU_SHAPES[:3], random.Random(6)))),
        Trace("cpu-capped-gpu-free", "2,000 CPU tasks, cpu groups capped at 5 nodes, gpu groups empty",
              PlanRequest((NodeGroup("cpu4", {"CPU": 4}, max_nodes=5),
                           NodeGroup("cpu16", {"CPU": 16}, max_nodes=5)) + GPU_GROUPS,
                          demand=_split(2000, CPU_SHAPES[:4], random.Random(7)))),
        Trace("strict-spread", "40 STRICT_SPREAD groups of 4 x {CPU: 2} + 500 CPU tasks",
              PlanRequest(MIXED_GROUPS,
                          gangs=tuple(GangDemand(f"ss{i:03d}", "STRICT_SPREAD", ({"CPU": 2},) * 4)
                                      for i in range(40)),
                          demand=_split(500, CPU_SHAPES[:3], random.Random(8)))),
        Trace("strict-pack", "60 STRICT_PACK groups (3 x {CPU: 4} or 2 x {CPU: 2, GPU: 1})",
              PlanRequest(MIXED_GROUPS,
                          gangs=tuple(GangDemand(f"sp{i:03d}", "STRICT_PACK",
                                                 ({"CPU": 4},) * 3 if i % 3 else ({"CPU": 2, "GPU": 1},) * 2)
                                      for i in range(60)))),
        Trace("fragmentation-3-5", "3- and 5-CPU tasks on 4/8/16-CPU groups",
              PlanRequest((NodeGroup("cpu4", {"CPU": 4}, max_nodes=500),
                           NodeGroup("cpu8", {"CPU": 8}, max_nodes=500),
                           NodeGroup("cpu16", {"CPU": 16}, max_nodes=500)),
                          demand=(ResourceDemand({"CPU": 3}, 700), ResourceDemand({"CPU": 5}, 500)))),
        Trace("existing-idle-busy", "300 running nodes (30% idle, some past timeout) + 3,000 mixed tasks",
              PlanRequest(MIXED_GROUPS, nodes=_existing(300, 9),
                          demand=_mixed_burst(3000, 10))),
        Trace("request-resources", "request_resources(64 x {CPU: 1} + 4 x {GPU: 1}) with 10 idle nodes and 200 tasks",
              PlanRequest(MIXED_GROUPS, nodes=_existing(10, 11, idle_fraction=1.0),
                          constraints=(ResourceDemand({"CPU": 1}, 64), ResourceDemand({"GPU": 1}, 4)),
                          demand=_split(200, CPU_SHAPES[:2], random.Random(12)))),
        Trace("proportional-cpu", "3,000 tasks in 8 CPU shapes on cpu4/cpu16/cpu64 groups priced cost = CPUs",
              PlanRequest(_proportional(CPU_GROUPS + (CPU64,)), demand=_split(3000, CPU_SHAPES, random.Random(15)))),
        Trace("proportional-mixed", "5,000 tasks: 8 CPU shapes + 5% GPU tasks + 10 infeasible, cpu+gpu groups "
              "priced cost = CPUs + 50 x GPUs",
              PlanRequest(_proportional(MIXED_GROUPS + (CPU64,)), demand=_mixed_burst(5000, 16))),
        Trace("proportional-fragmentation", "3- and 5-CPU tasks on 4/8/16/64-CPU groups priced $0.05 per CPU",
              PlanRequest(_proportional((NodeGroup("cpu4", {"CPU": 4}, max_nodes=500),
                                         NodeGroup("cpu8", {"CPU": 8}, max_nodes=500),
                                         NodeGroup("cpu16", {"CPU": 16}, max_nodes=500),
                                         NodeGroup("cpu64", {"CPU": 64}, max_nodes=500)), per_cpu=0.05),
                          demand=(ResourceDemand({"CPU": 3}, 700), ResourceDemand({"CPU": 5}, 500)))),
        Trace("proportional-tail", "700 tasks of 0.5 to 12 CPUs on seven groups, cpu1 to cpu64, "
              "priced cost = CPUs",
              PlanRequest(_proportional(tuple(NodeGroup(f"cpu{c}", {"CPU": c}, max_nodes=500)
                                              for c in (1, 2, 4, 8, 16, 32, 64))),
                          demand=_split(700, ({"CPU": 0.5}, {"CPU": 3}, {"CPU": 4}, {"CPU": 6}, {"CPU": 12}),
                                        random.Random(17)))),
        Trace("scale-100k-50shapes-1000nodes",
              "100,000 pending units in 50 shapes (incl. 6 placement groups) on 1,000 existing "
              "nodes; group maxes and max_workers=4000 cap it",
              _scale_target(capped=True), ray_skip_reason=RAY_TOO_SLOW),
        Trace("scale-100k-uncapped",
              "the same snapshot with no limits, so all 100,000 units are packed onto new nodes",
              _scale_target(capped=False), ray_skip_reason=RAY_TOO_SLOW),
    ]
    return out


def _scale_target(capped: bool) -> PlanRequest:
    """The planner's scale target: 100k pending units in 50 shapes on 1,000 existing nodes."""
    rng = random.Random(13)
    shapes = []
    while len(shapes) < 44:
        s = {"CPU": rng.choice([0.5, 1, 2, 3, 4, 6, 8])}
        if rng.random() < 0.5:
            s["memory"] = rng.choice([1, 2, 4, 8]) * GB
        if rng.random() < 0.15:
            s["GPU"] = rng.choice([1, 2])
        if s not in shapes:
            shapes.append(s)
    gang_units = 8 + 16 + 4 + 4 + 100 + 50
    demand = _split(100_000 - gang_units, tuple(shapes), rng)
    gangs = tuple(GangDemand(f"g{i}", strategy, tuple({"CPU": c} for _ in range(n)))
                  for i, (strategy, c, n) in enumerate([
                      ("STRICT_SPREAD", 2, 8), ("STRICT_SPREAD", 4, 16), ("STRICT_PACK", 2, 4),
                      ("STRICT_PACK", 3, 4), ("PACK", 1, 100), ("SPREAD", 5, 50)]))
    groups = (
        NodeGroup("cpu4", {"CPU": 4, "memory": 16 * GB}, max_nodes=1500),
        NodeGroup("cpu16", {"CPU": 16, "memory": 64 * GB}, max_nodes=1500),
        NodeGroup("cpu64", {"CPU": 64, "memory": 256 * GB}, max_nodes=500),
        NodeGroup("gpu1", {"CPU": 8, "GPU": 1, "memory": 32 * GB}, max_nodes=300),
        NodeGroup("gpu4", {"CPU": 32, "GPU": 4, "memory": 128 * GB}, max_nodes=100),
    )
    nodes = _existing(1000, 14, groups[:3])
    if not capped:
        groups = tuple(replace(g, max_nodes=100_000) for g in groups)
    return PlanRequest(groups, nodes=nodes, demand=demand, gangs=gangs,
                       max_workers=4000 if capped else None)
