"""Where a plan puts every unit of demand, node by node, for the planner's property tests and
the planner benchmark.

The planner itself answers with counts per group (``PlanReply``); checking that "whatever the
plan says fits really fits" needs the bins behind those counts. This reads them from the
planner's internal context, so it lives here, beside the tests, not in the package. O(nodes).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from jupyter_raykube.autoscaler.planner import PlanReply, PlanRequest
from jupyter_raykube.autoscaler.planner.reasons import make_reply
from jupyter_raykube.autoscaler.planner.schedule import run_passes, schedule


@dataclass(frozen=True)
class NodeLoad:
    node_id: str  # existing node id, or "+<group>-<n>" for a node this plan launches
    group: str
    origin: Literal["running", "starting", "new"]
    demand: tuple[tuple[str, dict[str, float], int], ...]  # (tag, shape, copies) on free capacity
    held: tuple[tuple[str, dict[str, float], int], ...]  # request_resources bundles on totals
    for_min: bool


@dataclass(frozen=True)
class Assignment:
    reply: PlanReply
    nodes: tuple[NodeLoad, ...]
    gangs: Mapping[str, tuple[str, ...]]  # batch tag ("pg:N") -> ids of the gangs it placed


def assign(request: PlanRequest) -> Assignment:
    """Run the planner; return its reply and where every unit of demand was put. Gang loads are
    tagged "pg:N" (STRICT_SPREAD: "pg:N#<bundle>"), N a batch of identical gangs; a STRICT_PACK
    gang shows as one bundle, the sum of its own."""
    ctx = schedule(request)
    demand: dict[str, list] = defaultdict(list)
    held: dict[str, list] = defaultdict(list)
    info: dict[str, tuple[str, str, bool]] = {}
    for pool, out in ((ctx.free, demand), (ctx.held, held)):
        for b in pool.bins.values():
            for node in b.nodes:
                if b.origin == "new":
                    for_min = any(node in r for r in ctx.min_ids)
                    node = f"+{b.group}-{node}"
                else:
                    for_min = False
                info[node] = (b.group, b.origin, for_min)
                out[node].extend((tag, dict(key), n) for tag, key, n in b.load)
    nodes = tuple(
        NodeLoad(node, group, origin,  # type: ignore[arg-type]
                 tuple(demand[node]), tuple(held[node]), for_min)
        for node, (group, origin, for_min) in sorted(info.items())
    )
    gangs = {tag: tuple(ids) for tag, (_, ids) in ctx.batches.items()}
    return Assignment(make_reply(ctx), nodes, gangs)


@dataclass(frozen=True)
class FirstPlan:
    """The passes' own cost-first plan, before any accelerator group is held back."""

    launch: Mapping[str, int]
    nodes: int
    cost: float


def cost_first(request: PlanRequest) -> FirstPlan:
    """What the passes launch before the planner weighs holding an accelerator group back, so a
    test or the bench notes can say what that trade changed."""
    ctx = run_passes(request, frozenset())
    launch = {g.name: g.launched for g in ctx.groups.values() if g.launched}
    return FirstPlan(launch, ctx.launched_nodes, ctx.launched_cost)
