"""The reply: statuses and reasons are read off the final bins, so they always agree with what
was placed where."""

from __future__ import annotations

from collections import Counter, defaultdict

from .context import Ctx
from .labels import selector_text, without_labels
from .pool import Bin
from .request import PendingStatus, PlanReply
from .text import format_shape, plural
from .vectors import shape_key


def make_reply(ctx: Ctx) -> PlanReply:
    launch = {g.name: g.launched for g in ctx.groups.values() if g.launched > 0}
    return PlanReply(launch, tuple(ctx.terminate), pending_statuses(ctx),
                     {name: _launch_reason(ctx, name) for name in launch})


class _Served:
    """How the placed units of one pending (kind, ident) are spread over nodes."""

    def __init__(self) -> None:
        self.on_running = 0  # units on free capacity of running nodes
        self.on_starting = 0  # units on starting nodes or on nodes this plan launches
        self.nodes_starting: Counter[str] = Counter()  # group -> those nodes


def pending_statuses(ctx: Ctx) -> tuple[PendingStatus, ...]:
    served: dict[tuple, _Served] = defaultdict(_Served)
    gangs: dict[str, dict[int, Bin]] = defaultdict(dict)  # batch tag -> bins holding it
    for pool, view in ((ctx.free, "free"), (ctx.held, "held")):
        for bid, b in pool.bins.items():
            for tag, key, copies in b.load:
                if tag.startswith("pg:"):
                    gangs[tag.split("#")[0]][bid] = b
                    continue
                kind = {("free", "task"): "task", ("held", "rr"): "request_resources"}.get((view, tag))
                if kind is None:
                    continue
                s = served[(kind, key)]
                if b.origin == "running":
                    s.on_running += copies * len(b.nodes)
                else:
                    s.on_starting += copies * len(b.nodes)
                    s.nodes_starting[b.group] += len(b.nodes)
    for tag, bins in gangs.items():
        ident, placed = ctx.batches[tag]
        s = served[ident]
        starting = [b for b in bins.values() if b.origin != "running"]
        if starting:
            s.on_starting += len(placed)
            for b in starting:
                s.nodes_starting[b.group] += len(b.nodes)
        else:
            s.on_running += len(placed)

    out = []
    for (kind, ident), (shape, bundles) in ctx.labels.items():
        # The reply speaks of resources and selectors, never of the selectors' pseudo-resources.
        selector = " and ".join(dict.fromkeys(filter(None, map(selector_text, (shape, *bundles)))))
        shape, bundles = without_labels(shape), tuple(map(without_labels, bundles))
        s = served.get((kind, ident), _Served())
        # request_resources bundles held by running nodes are met, not pending.
        waiting = s.on_starting + (s.on_running if kind != "request_resources" else 0)
        if waiting:
            parts = [f"{plural(n, g + ' node')} starting" for g, n in sorted(s.nodes_starting.items())]
            if s.on_running and kind != "request_resources":
                parts.append("fits on free capacity of running nodes")
            out.append(PendingStatus(kind, shape, waiting, "waiting", "; ".join(parts),  # type: ignore[arg-type]
                                     bundles, selector))
        for (status, reason), n in sorted(ctx.unplaced[(kind, ident)].items()):
            out.append(PendingStatus(kind, shape, n, status, reason, bundles, selector))  # type: ignore[arg-type]
    kinds = {"task": 0, "placement_group": 1, "request_resources": 2}
    statuses = {"waiting": 0, "capped": 1, "infeasible": 2}
    out.sort(key=lambda p: (kinds[p.kind], shape_key(p.shape), tuple(shape_key(b) for b in p.bundles),
                            p.selector, statuses[p.status], p.reason))
    return tuple(out)


def _launch_reason(ctx: Ctx, group: str) -> str:
    """What the event log says the group's new nodes are for: "3 pending {CPU: 1} tasks"."""
    opened: Counter[tuple] = Counter()  # opened_for -> nodes
    units: Counter[tuple] = Counter()  # (tag, shape) -> copies on nodes opened for that shape
    for pool in (ctx.free, ctx.held):
        for b in pool.bins.values():
            if b.origin != "new" or b.group != group:
                continue
            if pool is ctx.free:
                opened[b.opened_for] += len(b.nodes)
            for tag, key, copies in b.load:
                if b.opened_for[0] == tag:  # units of the shape the node was opened for
                    units[(tag, key)] += copies * len(b.nodes)
    parts = []
    if opened[("min",)]:
        parts.append(f"the group's minimum of {ctx.groups[group].spec.min_nodes}")
    if opened[("warm",)]:
        parts.append(f"the group's warm pool of {plural(ctx.groups[group].spec.warm_nodes, 'idle node')}")
    rr = sorted(((n, key) for (tag, key), n in units.items() if tag == "rr"), key=lambda x: (-x[0], x[1]))
    if rr:
        parts.append("request_resources(" + ", ".join(f"{n} x {format_shape(dict(k))}" for n, k in rr) + ")")
    pgs = sorted(pg for why in opened if why[0] == "pg" for pg in ctx.batches[why[1]][1])
    if pgs:
        more = f" and {len(pgs) - 2} more" if len(pgs) > 2 else ""
        parts.append(f"placement group{'s' if len(pgs) > 1 else ''} {', '.join(pgs[:2])}{more}")
    tasks = sorted(((n, key) for (tag, key), n in units.items() if tag == "task"), key=lambda x: (-x[0], x[1]))
    for n, key in tasks[:3]:
        parts.append(f"{n} pending {format_shape(dict(key))} {'task' if n == 1 else 'tasks'}")
    if len(tasks) > 3:
        parts.append(f"{len(tasks) - 3} more task shapes")
    return ", ".join(parts)
