"""Passes that follow the groups' limits and idle timeouts rather than demand: release idle
nodes above a max, launch up to a min, keep a warm pool of idle nodes, and release nodes idle
past their timeout."""

from __future__ import annotations

from .context import Ctx
from .request import NodeView, Termination
from ...formatting import duration
from .text import plural


def termination_order(n: NodeView) -> tuple:
    """The one sort key for choosing victims: longest idle first (like Ray's
    ``_sort_nodes_for_termination``), node id for a stable tie-break."""
    return (-n.idle_s, n.node_id)


def enforce_max(ctx: Ctx) -> None:
    """Release idle nodes above a group's max or above max_workers (e.g. the user lowered it).
    Busy, starting and draining nodes are never taken; they go once they are idle."""
    victims: set[str] = set()
    idle = sorted((n for n in ctx.nodes if n.state == "running" and n.idle_s > 0
                   and n.group in ctx.groups), key=termination_order)

    def take(n: NodeView, why: str) -> None:
        victims.add(n.node_id)
        ctx.groups[n.group].alive -= 1
        ctx.alive_total -= 1
        ctx.terminate.append(Termination(n.node_id, n.group, f"{why}; idle for {duration(n.idle_s)}"))

    for g in ctx.groups.values():
        excess = g.alive - g.spec.max_nodes
        for n in [n for n in idle if n.group == g.name][:max(0, excess)]:
            take(n, f"{g.name} group is over its max of {plural(g.spec.max_nodes, 'node')}")
    cap = ctx.request.max_workers
    for n in idle:
        if cap is None or ctx.alive_total <= cap:
            break
        if n.node_id not in victims and ctx.groups[n.group].alive > ctx.groups[n.group].spec.min_nodes:
            take(n, f"cluster is over max_workers={cap}")
    if victims:
        ctx.nodes = [n for n in ctx.nodes if n.node_id not in victims]
        ctx.free.remove_existing(victims)
        ctx.held.remove_existing(victims)


def enforce_min(ctx: Ctx) -> None:
    """Launch up to each group's min_nodes, even with no demand (within the global cap)."""
    for g in ctx.groups.values():
        n = min(g.spec.min_nodes - g.alive - g.launched, ctx.room(g))
        if n > 0:
            ctx.min_ids.append(ctx.open_nodes(g, n, [], "min", ("min",)))


def enforce_warm(ctx: Ctx) -> None:
    """Keep each group's ``warm_nodes`` idle nodes ready beyond demand: count the nodes this
    plan leaves without work (idle running nodes, starting or min nodes nothing was placed on)
    and launch the difference, within the limits. Runs after demand is placed, so a warm node
    that takes a task is replaced by the next round's plan."""
    warm = [g for g in ctx.groups.values() if g.spec.warm_nodes > 0]
    if not warm:
        return
    busy = {node for pool in (ctx.free, ctx.held) for b in pool.bins.values()
            if b.load and b.origin != "new" for node in b.nodes}
    idle = {n.node_id for n in ctx.nodes if n.state == "starting" or n.idle_s > 0 or _unused(n)}
    for g in warm:
        for b in ctx.free.bins.values():
            if b.group != g.name:
                continue
            if b.origin == "new":
                g.ready += len(b.nodes) if b.opened_for == ("min",) and not b.load else 0
            else:
                g.ready += sum(1 for node in b.nodes if node in idle and node not in busy)
        n = min(g.spec.warm_nodes - g.ready, ctx.room(g))
        if n > 0:
            ctx.open_nodes(g, n, [], "warm", ("warm",))
            g.ready += n


def _unused(n: NodeView) -> bool:
    """Nothing of the node is taken, even before Ray reports it idle (a node that has just
    joined reports no idle time yet): it is ready for work, and counts as warm."""
    return all(n.available.get(name, 0.0) >= amount for name, amount in n.total.items()
               if name not in ("memory", "object_store_memory"))


def scale_down_idle(ctx: Ctx) -> None:
    """Release running nodes idle past their group's timeout that hold nothing of this plan
    (no pending demand would go on them, no request_resources bundle needs them) and are not
    needed for min_nodes or the warm pool; longest idle first. Starting and draining nodes are
    never touched."""
    needed = {node for pool in (ctx.free, ctx.held) for b in pool.bins.values()
              if b.load and b.origin != "new" for node in b.nodes}
    for n in sorted((n for n in ctx.nodes if ctx.is_spare(n) and n.node_id not in needed),
                    key=termination_order):
        g = ctx.groups[n.group]
        if g.alive <= g.spec.min_nodes or (g.spec.warm_nodes and g.ready <= g.spec.warm_nodes):
            continue
        g.alive -= 1
        g.ready -= 1
        ctx.terminate.append(Termination(n.node_id, n.group, (
            f"idle for {duration(n.idle_s)} (timeout {duration(g.spec.idle_timeout_s)})")))
