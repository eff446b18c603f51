"""Placement groups: identical groups batched, each placed all-or-nothing."""

from __future__ import annotations

from collections import Counter, defaultdict

from .context import Ctx
from .labels import with_selectors
from .packing import launch_patterns
from .pool import Shape
from .request import GangDemand
from .text import format_shape
from .vectors import shape_key


def fit_gangs(ctx: Ctx) -> None:
    """Placement groups, each all-or-nothing: on free capacity first, then on new nodes.

    Identical groups (same strategy and bundles; Tune and Train make many) form one batch that
    is packed like tasks: g copies of every bundle at once. The largest g that fits is found by
    trying all, then bisecting; every failed try is rolled back, so a group that does not fit
    reserves nothing, and the rest get a status naming the limit.
    """
    batches: dict[tuple, list[GangDemand]] = defaultdict(list)
    parts_of: dict[tuple, list[Shape]] = {}
    for gang in ctx.request.gangs:
        selectors = gang.bundle_selectors or ((),) * len(gang.bundles)
        bundles = sorted((ctx.shape(with_selectors(b, s)) for b, s in zip(gang.bundles, selectors) if shape_key(b)),
                         key=lambda s: s.order)
        if bundles:
            ident = (gang.strategy, tuple(s.key for s in bundles))
            batches[ident].append(gang)
            parts_of[ident] = bundles

    def order(ident: tuple) -> tuple:
        strategy, keys = ident
        return (strategy not in ("STRICT_SPREAD", "STRICT_PACK"), -len(keys), ident)

    for n, ident in enumerate(sorted(batches, key=order)):
        strategy, bundles = ident[0], parts_of[ident]
        ids = sorted(g.id for g in batches[ident])
        tag = f"pg:{n}"
        unplaced = ctx.pending("placement_group", ident, bundles[0].resources,
                               tuple(s.resources for s in bundles))
        what = None
        if strategy == "STRICT_PACK":  # one node holds the sum
            total: dict[str, float] = defaultdict(float)
            for s in bundles:
                for r, v in s.key:
                    total[r] += v
            bundles = [ctx.shape(total)]
            what = f"all bundles on one node (STRICT_PACK, {format_shape(bundles[0].resources)} in total)"
        reason = next(filter(None, (ctx.infeasible_reason(s, what) for s in bundles)), None)
        if reason:
            unplaced[("infeasible", reason)] += len(ids)
            continue

        placed, lo, hi = len(ids), 0, len(ids) - 1
        sp = ctx.savepoint()
        reason = _try_gangs(ctx, strategy, bundles, placed, tag, len(ident[1]))
        if reason:
            ctx.rollback(sp)
            while lo < hi:  # the largest number that fits is in [lo, hi]
                mid = (lo + hi + 1) // 2
                sp = ctx.savepoint()
                why = _try_gangs(ctx, strategy, bundles, mid, tag, len(ident[1]))
                ctx.rollback(sp)
                lo, hi, reason = (mid, hi, reason) if why is None else (lo, mid - 1, why)
            placed = lo
            sp = ctx.savepoint()
            if placed:
                _try_gangs(ctx, strategy, bundles, placed, tag, len(ident[1]))
        ctx.commit()
        ctx.batches[tag] = (("placement_group", ident), ids[:placed])
        if placed < len(ids):
            unplaced[("capped", reason)] += len(ids) - placed


def _try_gangs(ctx: Ctx, strategy: str, bundles: list[Shape], copies: int, tag: str,
               size: int) -> str | None:
    """Place ``copies`` gangs of ``size`` bundles; None, or the limit that stopped it (as this
    attempt met it). The caller commits or rolls back."""
    failed = _place_gangs(ctx, strategy, bundles, copies, tag)
    if failed is None:
        return None
    if strategy == "STRICT_SPREAD":
        return f"needs {size} distinct nodes (STRICT_SPREAD): {ctx.capped_reason(failed)}"
    return ctx.capped_reason(failed)


def _place_gangs(ctx: Ctx, strategy: str, bundles: list[Shape], copies: int, tag: str) -> Shape | None:
    """Place ``copies`` identical gangs; returns None, or a bundle shape that found no room.

    STRICT_SPREAD: bundle j of every gang goes on nodes that hold no other bundle of the batch
    (tag "pg:N#j"), so the bundles of one gang are on distinct nodes while the j-th bundles of
    different gangs may share one.
    """
    why = ("pg", tag)
    if strategy == "STRICT_SPREAD":
        for j, s in enumerate(bundles):
            position = f"{tag}#{j}"
            items = [[s, ctx.free.place(s, copies, position, avoid=f"{tag}#")]]
            launch_patterns(ctx, items, position, view="free", opened_for=why)
            if items[0][1]:
                return s
        return None
    counts = Counter(s.key for s in bundles)
    items = [[ctx.shapes[key], ctx.free.place(ctx.shapes[key], n * copies, tag)] for key, n in counts.items()]
    launch_patterns(ctx, items, tag, view="free", opened_for=why)
    return next((s for s, left in items if left), None)
