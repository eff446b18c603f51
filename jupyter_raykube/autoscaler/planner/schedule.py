"""The order of the passes, and the choice between candidate plans."""

from __future__ import annotations

from .context import Ctx
from .cost import ACCELERATOR_WEIGHT
from .gangs import fit_gangs
from .limits import enforce_max, enforce_min, enforce_warm, scale_down_idle
from .packing import consolidate, fit_constraints, fit_existing, launch_for_demand
from .pool import Group
from .request import PlanRequest
from .upsize import upsize


def schedule(request: PlanRequest) -> Ctx:
    """The passes' plan, or the one made with a smaller accelerator group held back when that
    scores better (``plan_score``). Limits decide a capped plan, so it is not second-guessed.

    When the launched nodes leave enough free room between them to hold one more of them, the
    plan is made again with patterns scored by the whole plan's estimated cost (``lookahead``:
    shapes mixed in proportion, so none is left to fill nodes alone), and kept only if it has
    no more nodes and no more cost.
    """
    best = _with_held_back(request, lookahead=False)
    if best.capped or not _loose(best):
        return best
    other = _with_held_back(request, lookahead=True)
    if (not other.capped and other.launched_nodes <= best.launched_nodes
            and other.launched_cost <= best.launched_cost + 1e-9
            and (other.launched_nodes, other.launched_cost) < (best.launched_nodes, best.launched_cost)):
        return other
    return best


def _with_held_back(request: PlanRequest, lookahead: bool) -> Ctx:
    best = run_passes(request, frozenset(), lookahead)
    if best.capped:
        return best
    for name in smaller_accelerator_groups(best):
        other = run_passes(request, frozenset({name}), lookahead)
        if not other.capped and plan_score(other) < plan_score(best):
            best = other
    return best


def _loose(ctx: Ctx) -> bool:
    """Whether the free room left on launched nodes, pooled, could hold one launched node."""
    slack = [0] * len(ctx.index)
    smallest = None
    for b in ctx.free.bins.values():
        if b.origin == "new":
            slack = [s + a * len(b.nodes) for s, a in zip(slack, b.avail)]
            total = ctx.groups[b.group].total
            if smallest is None or sum(total) < sum(smallest):
                smallest = total
    return smallest is not None and all(s >= t for s, t in zip(slack, smallest))


def run_passes(request: PlanRequest, held_back: frozenset[str], lookahead: bool = False) -> Ctx:
    ctx = Ctx.from_request(request, held_back, lookahead)
    for step in (enforce_max, enforce_min, fit_constraints, fit_gangs, fit_existing,
                 launch_for_demand, consolidate, upsize, enforce_warm, scale_down_idle):
        step(ctx)
    return ctx


def smaller_accelerator_groups(ctx: Ctx) -> list[str]:
    """Accelerator groups the plan launches that another launchable accelerator group outsizes
    in every resource: holding one back moves its work onto fewer, larger nodes."""
    def outsized(g: Group) -> bool:
        return any(h is not g and h.accelerator and h.total != g.total and ctx.room(h) > 0
                   and all(a >= b for a, b in zip(h.total, g.total)) for h in ctx.groups.values())

    return [g.name for g in ctx.groups.values() if g.accelerator and g.launched and outsized(g)]


def plan_score(ctx: Ctx) -> tuple[float, int]:
    """Launched cost plus one accelerator's price (``ACCELERATOR_WEIGHT``) per launched node,
    then node count: lower is better.

    By cost alone several small accelerator nodes always beat one larger node with an idle
    accelerator, since an accelerator is priced far above a node's overhead. But every node is
    also a pod to schedule, start and watch, so a plan may leave up to one more accelerator idle
    for each node it saves.
    """
    return (ctx.launched_cost + ACCELERATOR_WEIGHT * ctx.launched_nodes, ctx.launched_nodes)
