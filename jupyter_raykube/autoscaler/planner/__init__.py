"""The autoscaler planner: pending Ray demand + current nodes -> nodes to launch and to release.

A pure function (no I/O, no clock, no randomness, no Ray import), so the reconciler can call it
every tick and tests and ``bench/`` can replay snapshots. It is shaped like Ray autoscaler v2's
``ResourceDemandScheduler.schedule``: a small context object and named passes, each of which
records the reasons that end up in the event log and the UI.

Speed comes from never looking at one task at a time. Demand arrives as (shape, count); nodes
that look alike (same group, state and free-resource vector) share one *bin*; and "how many
copies of this shape fit here" is an integer division. The cost of a plan grows with the number
of distinct shapes and distinct node states, not with the number of pending tasks or nodes.

Packing: shapes are sorted first-fit-decreasing (accelerator shapes first, then by dominant
share of the largest node offering each resource). Free capacity of running and starting nodes
is filled first, tightest node first. What is left is covered one node *pattern* at a time
(``launch_patterns``): for the largest remaining shape, every group that may take it simulates
a node holding a few different counts of that shape with the gaps filled by smaller shapes; the
pattern with the lowest cost per unit of demand served (counting the best cover of the last
copies) wins and is opened as many times as the remaining counts and the limits allow, k-fold
on a larger group's node when that costs no more. ``consolidate`` then drops any launched node
whose tasks fit in what the others have left, and ``upsize`` merges several launched nodes into
one larger node at no more cost.

Fewer nodes at equal cost: every node's cost carries a per-node overhead (``NODE_OVERHEAD``,
three CPUs' worth: Ray's processes, a Pod, a start-up), in the admin's own unit when groups set
explicit costs (``node_costs``), so when costs are proportional to size (cost = CPUs) the plan
with fewer nodes is the cheaper one.

Label selectors (Ray's ``label_selector`` and ``fallback_strategy``) restrict a shape to the
groups whose labels match: ``labels`` makes each selector set a resource only those groups'
nodes offer, so every pass honours it and an unmatched selector is reported infeasible by name.

Identical placement groups are packed together the same way, all-or-nothing per group.
CPU-only demand never launches an accelerator node while some other group could hold it: when
that group is at its max the demand is reported ``capped``, GPUs are not spent on it.
Cost alone always prefers several small accelerator nodes to one larger node with an idle
accelerator, so when nothing is capped the plan is made again with each smaller accelerator group
held back, and fewer nodes win at up to one idle accelerator per node saved (``plan_score``).

Modules, in the order a plan uses them: ``request`` (the public request/reply types), ``cost``,
``vectors`` and ``text`` (prices, resource arithmetic, wording), ``pool`` and ``context`` (the
internal model), ``schedule`` (the passes' order and the choice between candidate plans),
``labels`` (selectors as resources), ``limits``, ``gangs``, ``packing`` and ``upsize`` (the
passes), ``reasons`` (the reply).
"""

from __future__ import annotations

from .cost import (
    ACCELERATOR_WEIGHT,
    ACCELERATORS,
    CPU_WEIGHT,
    MEMORY_WEIGHT_PER_GIB,
    NODE_OVERHEAD,
    default_cost,
    node_costs,
)
from .reasons import make_reply
from .request import (
    GangDemand,
    LabelConstraint,
    LabelSelector,
    NodeGroup,
    NodeView,
    PendingStatus,
    PlanReply,
    PlanRequest,
    ResourceDemand,
    Resources,
    Termination,
)
from .schedule import schedule
from .text import format_shape

__all__ = [
    "ACCELERATORS", "ACCELERATOR_WEIGHT", "CPU_WEIGHT", "MEMORY_WEIGHT_PER_GIB", "NODE_OVERHEAD",
    "GangDemand", "LabelConstraint", "LabelSelector", "NodeGroup", "NodeView", "PendingStatus", "PlanReply", "PlanRequest",
    "ResourceDemand", "Resources", "Termination", "default_cost", "format_shape", "node_costs", "plan",
]


def plan(request: PlanRequest) -> PlanReply:
    """Decide what to launch and what to release for one snapshot of the cluster."""
    return make_reply(schedule(request))
