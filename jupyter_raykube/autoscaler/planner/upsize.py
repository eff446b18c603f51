"""Fewer, larger nodes: replace several launched nodes of one group by one node of a larger
group when their tasks fit in it (and in what the other launched nodes have left) and the
planner's cost, per-node overhead included, does not rise.

Pattern packing picks the cover for the last copies of a shape by that shape alone, so when
costs are proportional to size (cost = CPUs) it can end on a handful of small nodes that one
large node, filled with the smaller shapes too, would replace at the same price. Every node
saved is one raylet, Pod and start-up less. Only CPU-only groups are merged: accelerator nodes
are traded by ``schedule`` (holding a smaller accelerator group back), and CPU work must not
move onto them.
"""

from __future__ import annotations

import math

from .context import Ctx
from .pool import Group

_MAX_ROUNDS = 64  # each success saves a node; a bound keeps one plan's time predictable


def upsize(ctx: Ctx) -> None:
    """Merge launched task nodes into larger ones while that saves nodes at no more cost."""
    for _ in range(_MAX_ROUNDS):
        if not any(_try_pair(ctx, big, small) for big, small in _pairs(ctx)):
            return


def _pairs(ctx: Ctx) -> list[tuple[Group, Group]]:
    """(larger group with room, group whose launched nodes it might absorb), largest first."""
    cpu = [g for g in ctx.groups.values() if not g.accelerator]
    bigs = sorted((g for g in cpu if ctx.room(g) > 0 and g.name not in ctx.held_back),
                  key=lambda g: (-sum(g.total), g.name))
    return [(big, small) for big in bigs for small in cpu
            if small is not big and small.launched >= 2 and small.cost < big.cost]


def _try_pair(ctx: Ctx, big: Group, small: Group) -> bool:
    """Absorb as many of ``small``'s launched task nodes into one new ``big`` node as fit; keep
    it if that is at least two nodes and at least ``big``'s cost."""
    needed = max(2, math.ceil(big.cost / small.cost - 1e-9))
    nodes = _task_nodes(ctx, small)
    if len(nodes) < needed:
        return False
    sp = ctx.savepoint()
    moved = _absorb(ctx, big, small, nodes)
    ctx.rollback(sp)
    if moved < needed:
        return False
    ctx.savepoint()
    assert _absorb(ctx, big, small, nodes[:moved]) == moved
    ctx.commit()
    return True


def _task_nodes(ctx: Ctx, g: Group) -> list[int]:
    """Sequence numbers of ``g``'s launched nodes that carry only tasks, least loaded first."""
    found = []
    for b in ctx.free.bins.values():
        if (b.origin == "new" and b.group == g.name and b.load and b.opened_for[:1] == ("task",)
                and all(tag == "task" for tag, _, _ in b.load)):
            used = sum(copies * ctx.shapes[key].value for _, key, copies in b.load)
            found.extend((used, seq) for seq in b.nodes)
    return [seq for _, seq in sorted(found)]


def _absorb(ctx: Ctx, big: Group, small: Group, nodes: list[int]) -> int:
    """Open one ``big`` node, then un-launch ``nodes`` in turn, re-placing each one's tasks on
    launched capacity; stop at the first that does not fit. Returns how many moved (the one
    that did not fit is left half-moved: the caller rolls back or replays a prefix)."""
    ctx.open_nodes(big, 1, [], "task", ("task", None))
    for moved, seq in enumerate(nodes):
        load = ctx.free.find_new(small.name, seq).load
        ctx.free.remove_new(small.name, seq)
        ctx.held.remove_new(small.name, seq)
        small.launched -= 1
        if any(ctx.free.place(ctx.shapes[key], copies, tag, new_only=True) for tag, key, copies in load):
            return moved
    return len(nodes)
