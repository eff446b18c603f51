"""Packing passes: request_resources against totals, tasks onto free capacity, new nodes one
pattern at a time for what is left, then dropping any launched node the others can absorb."""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from .context import Ctx
from .labels import with_selectors
from .pool import Group
from .vectors import ShapeKey, Vector, how_many, shape_key, subtract


def fit_constraints(ctx: Ctx) -> None:
    """request_resources(): the cluster's TOTAL resources must hold every bundle, whoever uses
    them. Pack against totals of existing nodes (busy ones first, so idle ones stay releasable),
    then launch what is missing. If limits stop us, launch what fits and say why (Ray's v2
    scheduler launches nothing for a constraint it cannot fully meet)."""
    units: dict[ShapeKey, int] = defaultdict(int)
    for d in ctx.request.constraints:
        if d.count > 0 and shape_key(d.shape):
            units[shape_key(d.shape)] += d.count
    items = []
    for shape in sorted((ctx.shape(dict(key)) for key in units), key=lambda s: s.order):
        unplaced = ctx.pending("request_resources", shape.key, shape.resources)
        reason = ctx.infeasible_reason(shape)
        if reason:
            unplaced[("infeasible", reason)] += units[shape.key]
        else:
            items.append([shape, ctx.held.place(shape, units[shape.key], "rr")])
    launch_patterns(ctx, items, "rr", view="held")
    for shape, left in items:
        if left:
            ctx.unplaced[("request_resources", shape.key)][("capped", ctx.capped_reason(shape))] += left

def fit_existing(ctx: Ctx) -> None:
    """Pending tasks/actors onto free capacity of running and starting nodes (and of nodes this
    plan already launched), largest shapes first, so we never launch what is already coming."""
    units: dict[ShapeKey, int] = defaultdict(int)
    for d in ctx.request.demand:
        if d.count > 0:
            units[shape_key(with_selectors(d.shape, d.selectors))] += d.count
    for key in sorted(units):
        shape = ctx.shape(dict(key))
        unplaced = ctx.pending("task", key, shape.resources)
        if not key:
            unplaced[("waiting", "needs no resources; Ray places it on any node")] += units[key]
        elif reason := ctx.infeasible_reason(shape):
            unplaced[("infeasible", reason)] += units[key]
        else:
            ctx.tasks.append([shape, units[key]])
    ctx.tasks.sort(key=lambda item: item[0].order)
    for item in ctx.tasks:
        item[1] = ctx.free.place(item[0], item[1], "task")


def launch_for_demand(ctx: Ctx) -> None:
    """Launch nodes for what free capacity could not take; what limits leave over is capped."""
    launch_patterns(ctx, ctx.tasks, "task", view="free")
    for shape, left in ctx.tasks:
        if left:
            ctx.unplaced[("task", shape.key)][("capped", ctx.capped_reason(shape))] += left


_VARIANTS = 4  # first-shape counts tried per group: 2x5 + 2x3 fills 16 CPUs, 3x5 does not


def launch_patterns(ctx: Ctx, items: list[list], tag: str, *, view: Literal["free", "held"],
                     opened_for: tuple | None = None) -> None:
    """Cover ``items`` ([shape, copies left], FFD order; updated in place) with new nodes.

    One node *pattern* at a time. For the largest shape left, every group that may take it
    simulates one node: c copies of that shape (c = as many as fit, and a few less, and about
    this shape's share of the value left, so mixed shapes can run out together), then the
    gaps filled greedily with the other shapes left. A pattern is scored by what covering ALL
    remaining copies of the shape would cost -- whole nodes of the pattern plus the best
    single-group cover of the last few copies, fillers included -- per unit of demand value
    served, so a nearly empty big node loses to a small one, and four small nodes lose to one
    big one. The best pattern is opened as many times as the remaining counts and the limits
    allow, on a larger group's nodes when k patterns fit in one of them for no more cost.
    With ``ctx.lookahead`` a pattern is scored instead by what the whole plan would cost: its
    cover plus every other shape's leftover packed alone on its cheapest group.
    Cost: O(patterns x groups x shapes), never O(tasks).
    """
    first = 0
    while first < len(items):
        shape, left = items[first]
        if left <= 0:
            first += 1
            continue
        groups = ctx.launchable(shape)
        if not groups:
            first += 1  # capped: later (smaller) shapes may still go elsewhere
            continue
        fit = [(g, how_many(g.total, shape.vec)) for g in groups]
        alone = _alone_costs(ctx, items, first) if ctx.lookahead else {}
        best = None
        demand_value = sum(units * s.value for s, units in items[first:] if units > 0)
        for g, most in fit:
            most = min(most, left)
            # As many as fit and a few less; and the share of the node this shape has of what
            # is left, so that shapes mixed in proportion run out together.
            balanced = round(most * left * shape.value / demand_value) if demand_value else most
            variants = sorted({*range(most, max(0, most - _VARIANTS), -1),
                               *(c for c in (balanced - 1, balanced, balanced + 1) if 0 < c <= most)},
                              reverse=True)
            for copies in variants:
                pattern, node_value = _fill_pattern(g.total, items, first, copies)
                full, tail = divmod(left, copies)
                cover = [(g.total, copies, full)]
                covers = [(full * g.cost, cover)]
                if tail:  # the last copies go on the fewest nodes of one group, with fillers
                    covers = []
                    for h, k in fit:
                        nodes = -(-tail // k)
                        covers.append((full * g.cost + nodes * h.cost,
                                       cover + [(h.total, -(-tail // nodes), nodes)]))
                if ctx.lookahead:  # what the whole plan would cost: this cover, the rest alone
                    key = min(cost + _leftover_cost(items, first, left, c, alone) for cost, c in covers)
                else:  # cost per value served by this cover
                    key = min(cost / _cover_value(items, first, left, c) for cost, c in covers)
                # Ties must stay ties through float rounding (4 nodes for 64 = 5 for 80), so
                # that fuller nodes, then more copies of the largest shape, decide them.
                score = (float(f"{key:.12g}"), -node_value, g.name, -copies)
                if best is None or score < best[0]:
                    best = (score, g, pattern)
        _, g, pattern = best
        g, pattern = _on_larger_nodes(ctx, g, pattern, items)
        n = min([ctx.room(g)] + [items[j][1] // take for j, take in pattern])
        ctx.open_nodes(g, n, [(items[j][0], take) for j, take in pattern], tag,
                       opened_for or (tag, shape.key), view=view)
        for j, take in pattern:
            items[j][1] -= n * take


def _on_larger_nodes(ctx: Ctx, g: Group, pattern: list[tuple[int, int]], items: list[list],
                     ) -> tuple[Group, list[tuple[int, int]]]:
    """The same pattern k times over on one node of a larger group, when that node costs no more
    than k of ``g``'s (per-node overhead included) and k such patterns are still wanted.

    With costs proportional to size a 64-CPU node is four 16-CPU ones at the same price, and the
    pattern scores cannot tell them apart; the overhead each node carries can, and so can fewer
    Pods to start. Only groups every shape of the pattern may launch (so CPU work never moves
    onto an accelerator node) and that have room are considered.
    """
    wanted = min(items[j][1] // take for j, take in pattern)
    best = (g.cost, 0, g.name, g, 1)
    for h in ctx.groups.values():
        if h is g or h.accelerator != g.accelerator or ctx.room(h) <= 0:
            continue
        k = min((a // b for a, b in zip(h.total, g.total) if b), default=0)
        k = min(k, wanted)
        if k < 2 or any(h not in ctx.launchable(items[j][0]) for j, _ in pattern):
            continue
        best = min(best, (h.cost / k, -k, h.name, h, k))
    _, _, _, h, k = best
    return (h, [(j, take * k) for j, take in pattern]) if k > 1 else (g, pattern)


def _fill_pattern(total: Vector, items: list[list], first: int, copies: int,
                  ) -> tuple[list[tuple[int, int]], float]:
    """One node of capacity ``total``: ``copies`` of ``items[first]``, then greedily the other
    shapes left, in FFD order. Returns ([(item index, copies)], value served by the node)."""
    shape = items[first][0]
    left = list(total)
    for i, v in shape.vec:
        left[i] -= v * copies
    pattern = [(first, copies)]
    value = copies * shape.value
    for j, (other, units) in enumerate(items):
        if units <= 0 or j == first:
            continue
        k = how_many(left, other.vec)
        if not k:
            continue
        take = min(k, units)
        for i, v in other.vec:
            left[i] -= v * take
        pattern.append((j, take))
        value += take * other.value
    return pattern, value


def _alone_costs(ctx: Ctx, items: list[list], first: int) -> dict[int, float]:
    """Per shape after ``first``: the cost of one copy packed alone on its cheapest group."""
    out = {}
    for j in range(first + 1, len(items)):
        other, units = items[j]
        if units > 0:
            costs = [h.cost / k for h in ctx.launchable(other) if (k := how_many(h.total, other.vec))]
            out[j] = min(costs, default=0.0)
    return out


def _leftover_cost(items: list[list], first: int, copies: int, nodes: list[tuple[Vector, int, int]],
                   alone: dict[int, float]) -> float:
    """What the shapes the cover leaves over would cost packed alone (a lookahead)."""
    taken = _cover_takes(items, first, copies, nodes)
    return sum((items[j][1] - taken.get(j, 0)) * c for j, c in alone.items())


def _cover_takes(items: list[list], first: int, copies: int,
                 nodes: list[tuple[Vector, int, int]]) -> dict[int, int]:
    shape = items[first][0]
    gaps: list[tuple[Vector, int]] = [(subtract(total, shape.vec, per_node), n) for total, per_node, n in nodes]
    takes = {}
    for j, (other, units) in enumerate(items):
        if units <= 0 or j == first:
            continue
        filled: list[tuple[Vector, int]] = []
        got = 0
        for gap, n in gaps:
            k = how_many(gap, other.vec)
            if not k or not units:
                filled.append((gap, n))
                continue
            full = min(n, units // k)
            rest = units - full * k if full < n else 0
            if full:
                filled.append((subtract(gap, other.vec, k), full))
            if rest:
                filled.append((subtract(gap, other.vec, rest), 1))
            if n - full - (1 if rest else 0):
                filled.append((gap, n - full - (1 if rest else 0)))
            units -= full * k + rest
            got += full * k + rest
        gaps = filled
        takes[j] = got
    return takes


def _cover_value(items: list[list], first: int, copies: int,
                 nodes: list[tuple[Vector, int, int]]) -> float:
    """Value served by putting ``copies`` of ``items[first]`` on ``nodes`` -- (capacity, copies
    per node, how many such nodes) -- with the gaps filled by the other shapes left, in FFD
    order, node by node as the patterns opened after this one will fill them. Nodes whose gaps
    are alike stay one entry, so this costs O(shapes x distinct gaps), not O(nodes). A gap one
    shape has filled is not counted again for the next: a pattern that leaves room only in
    appearance does not win."""
    taken = _cover_takes(items, first, copies, nodes)
    return copies * items[first][0].value + sum(n * items[j][0].value for j, n in taken.items())


def consolidate(ctx: Ctx) -> None:
    """Drop a launched node when all the tasks on it fit in what other launched nodes have left.

    Pattern-by-pattern packing can open a node for a shape that a node opened later, for a shape
    only that later group can hold, could have taken too. One pass over the launched bins, least
    loaded first, undoes that. Only launched nodes can receive: every shape still pending after
    ``fit_existing`` is one that no existing node has room for. A cheap necessary test (the
    node's load fits in the sum of what the others have left) skips most attempts.
    """
    slack = [0] * len(ctx.index)
    for b in ctx.free.bins.values():
        if b.origin == "new":
            slack = [s + a * len(b.nodes) for s, a in zip(slack, b.avail)]

    def used_value(bid: int) -> float:
        b = ctx.free.bins[bid]
        return sum(copies * ctx.shapes[key].value for _, key, copies in b.load)

    candidates = [bid for bid, b in ctx.free.bins.items() if b.origin == "new" and b.load
                  and b.opened_for[:1] == ("task",) and all(tag == "task" for tag, _, _ in b.load)]
    for bid in sorted(candidates, key=lambda bid: (used_value(bid), bid)):
        while bid in ctx.free.bins:
            b = ctx.free.bins[bid]
            g = ctx.groups[b.group]
            # Its load (total - avail) must fit in the others' slack (slack - avail).
            if any(t > s for t, s in zip(g.total, slack)):
                break
            sp = ctx.savepoint()
            ctx.free.remove_new(b.group, b.nodes[-1])
            ctx.held.remove_new(b.group, b.nodes[-1])
            g.launched -= 1
            if any(ctx.free.place(ctx.shapes[key], copies, tag, new_only=True)
                   for tag, key, copies in b.load):
                ctx.rollback(sp)
                break
            ctx.commit()
            slack = [s - t for s, t in zip(slack, g.total)]
