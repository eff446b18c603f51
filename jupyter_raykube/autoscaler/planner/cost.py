"""What a node costs: the default price of a group that sets none, and what makes a node an
accelerator node."""

from __future__ import annotations

from collections.abc import Iterable

from .request import NodeGroup, Resources

# Accelerators are what make a node expensive. A node offering one is an "accelerator node";
# CPU-only demand never launches one while a group without accelerators could hold it.
ACCELERATORS = ("GPU", "TPU", "HPU", "NPU", "neuron_cores")
# Per node, whatever its size: Ray's own processes, a Kubernetes node/pod slot, minutes of
# start-up. Three CPUs' worth: a tail of tasks goes to one bigger node rather than three small.
NODE_OVERHEAD = 3.0
CPU_WEIGHT = 1.0
ACCELERATOR_WEIGHT = 50.0  # one GPU ~ 50 vCPUs in cloud list prices
MEMORY_WEIGHT_PER_GIB = 1.0 / 8  # 8 GiB of memory ~ one vCPU
GIB = float(2**30)


def default_cost(resources: Resources) -> float:
    """Relative price of one node offering ``resources``, used when a group sets no cost.

    ``3 + CPU + 50 * (GPU + other accelerators) + memory_GiB / 8``. The constant is a per-node
    overhead so that, at equal utilization, fewer larger nodes win; GPUs weigh far more than
    CPUs (list prices: one GPU ~ 50 vCPUs) so an idle GPU is the most expensive waste. Custom
    resources and ``object_store_memory`` (a slice of ``memory``) are free.
    """
    return NODE_OVERHEAD + price(resources)


def node_costs(groups: Iterable[NodeGroup]) -> dict[str, float]:
    """What one node of each group costs the planner: the group's own ``cost`` plus the per-node
    overhead, or ``default_cost`` when it sets none.

    An explicit cost is only the admin's price list (often proportional to size: cost = CPUs),
    and by it one 64-CPU node costs exactly four 16-CPU nodes. It misses what every node adds
    whatever its price: one more raylet, Pod and start-up. So the planner adds ``NODE_OVERHEAD``
    to it, converted into the admin's unit at the rate their costs imply (sum of the explicit
    costs over sum of those groups' default prices): at equal price, fewer nodes win, whatever
    unit (CPUs, dollars per hour) the costs are written in.
    """
    explicit = [g for g in groups if g.cost is not None]
    priced = [g for g in explicit if price(g.resources) > 0]
    if priced:
        rate = sum(g.cost for g in priced) / sum(price(g.resources) for g in priced)  # type: ignore[misc]
    elif explicit:
        rate = sum(g.cost for g in explicit) / sum(default_cost(g.resources) for g in explicit)  # type: ignore[misc]
    else:
        rate = 1.0
    return {g.name: default_cost(g.resources) if g.cost is None else g.cost + NODE_OVERHEAD * rate
            for g in groups}


def price(resources: Resources) -> float:
    """The resources' part of ``default_cost``; also what serving one copy of a shape is worth."""
    total = 0.0
    for name, amount in resources.items():
        if name == "CPU":
            total += CPU_WEIGHT * amount
        elif name in ACCELERATORS:
            total += ACCELERATOR_WEIGHT * amount
        elif name == "memory":
            total += MEMORY_WEIGHT_PER_GIB * amount / GIB
    return total


def has_accelerator(resources: Resources) -> bool:
    """Whether ``resources`` include an accelerator: such a node is never spent on CPU work."""
    return any(resources.get(a, 0) > 0 for a in ACCELERATORS)
