"""The state one plan's passes share: built from the request, changed by the passes, read by
the reply. Also where limits, eligibility and the infeasible/capped sentences are decided."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from . import labels
from .cost import ACCELERATORS, has_accelerator, node_costs, price
from .pool import Bin, Group, Pool, Shape, Unplaced
from .request import NodeView, PlanRequest, Resources, Termination
from .text import format_shape, plural
from .vectors import UNBOUNDED, UNIT, ShapeKey, Vector, fits, shape_key, subtract


@dataclass
class Ctx:
    """State shared by the passes of one plan; built from the request, read by ``make_reply``."""

    request: PlanRequest
    index: dict[str, int]  # resource name -> position in every Vector
    groups: dict[str, Group]  # by name, sorted
    nodes: list[NodeView]  # non-draining, sorted by node_id
    free: Pool = field(default_factory=Pool)  # the demand view: what each node has free
    held: Pool = field(default_factory=Pool)  # request_resources view: what each node offers
    alive_total: int = 0
    max_capacity: Vector = ()  # per resource, the most any group or node offers
    node_totals: set[Vector] = field(default_factory=set)  # distinct totals of existing nodes
    shapes: dict[ShapeKey, Shape] = field(default_factory=dict)
    tasks: list[list] = field(default_factory=list)  # [shape, copies not yet placed], FFD order
    # Every pending (kind, ident) the reply reports on: its label, and what was not placed.
    labels: dict[tuple, tuple[dict[str, float], tuple]] = field(default_factory=dict)
    unplaced: dict[tuple, Unplaced] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    # Identical placement groups are placed as one batch: tag -> (kind, ident), ids placed.
    batches: dict[str, tuple[tuple, list[str]]] = field(default_factory=dict)
    terminate: list[Termination] = field(default_factory=list)
    new_ids: int = 0  # sequence numbers handed to launched nodes so far
    min_ids: list[range] = field(default_factory=list)  # launched for min_nodes
    held_back: frozenset[str] = frozenset()  # groups this candidate plan launches nothing for
    lookahead: bool = False  # patterns scored by the whole plan's estimated cost (packing.py)
    _eligible: dict[ShapeKey, list[Group]] = field(default_factory=dict)

    @classmethod
    def from_request(cls, req: PlanRequest, held_back: frozenset[str] = frozenset(),
                     lookahead: bool = False) -> Ctx:
        nodes = sorted((n for n in req.nodes if n.state != "draining"), key=lambda n: n.node_id)
        names: set[str] = set()
        for g in req.groups:
            names.update(g.resources)
        for n in nodes:
            names.update(n.total)
            names.update(n.available)
        for d in (*req.demand, *req.constraints):
            names.update(d.shape)
        for gang in req.gangs:
            for b in gang.bundles:
                names.update(b)
        selector_sets = {d.selectors for d in req.demand if d.selectors}
        selector_sets.update(s for gang in req.gangs for s in gang.bundle_selectors if s)
        names.update(labels.resource_name(s) for s in selector_sets)
        # Label selectors as pseudo-resources (see labels.py): what each group's nodes offer.
        extra = labels.offered({g.name: g.labels for g in req.groups}, selector_sets)
        ctx = cls(req, {name: i for i, name in enumerate(sorted(names))}, {}, nodes, held_back=held_back,
                  lookahead=lookahead)
        costs = node_costs(req.groups)
        for g in sorted(req.groups, key=lambda g: g.name):
            if g.name in ctx.groups:
                raise ValueError(f"duplicate node group name {g.name!r}")
            ctx.groups[g.name] = Group(g, ctx.vector({**g.resources, **extra[g.name]}), costs[g.name],
                                       has_accelerator(g.resources))
        # Nodes repeat the same few resource mappings: convert each distinct one once.
        vectors: dict[tuple, Vector] = {}

        def vector(res: Resources) -> Vector:
            key = tuple(res.items())
            if key not in vectors:
                vectors[key] = ctx.vector(res)
            return vectors[key]

        accelerators = [i for name, i in ctx.index.items() if name in ACCELERATORS]
        free: dict[tuple, list[NodeView]] = defaultdict(list)
        held: dict[tuple, list[NodeView]] = defaultdict(list)
        for n in nodes:
            if n.group in ctx.groups:
                ctx.groups[n.group].alive += 1
            offers = extra.get(n.group, {})  # a node starts with its group's labels
            total = vector({**n.total, **offers})
            avail = vector({**n.available, **offers}) if n.state == "running" else total
            ctx.node_totals.add(total)
            head = (n.group, n.state, ctx.is_spare(n), any(total[i] for i in accelerators))
            free[(*head, avail)].append(n)
            held[(*head, total)].append(n)
        for pool, bins in ((ctx.free, free), (ctx.held, held)):
            for key in sorted(bins):
                members = sorted(bins[key], key=lambda n: n.idle_s)  # stable: then by node_id
                pool.add(Bin(*key, nodes=tuple(n.node_id for n in members)))
        ctx.alive_total = len(nodes)
        capacity = [0] * len(ctx.index)
        for vec in [g.total for g in ctx.groups.values()] + list(ctx.node_totals):
            capacity = [max(a, b) for a, b in zip(capacity, vec)]
        ctx.max_capacity = tuple(capacity)
        return ctx

    def vector(self, res: Resources) -> Vector:
        out = [0] * len(self.index)
        for name, amount in res.items():
            if amount > 0:
                out[self.index[name]] = round(amount * UNIT)
        return tuple(out)

    def is_spare(self, n: NodeView) -> bool:
        g = self.groups.get(n.group)
        return g is not None and n.state == "running" and n.idle_s > g.spec.idle_timeout_s

    def shape(self, res: Resources) -> Shape:
        key = shape_key(res)
        s = self.shapes.get(key)
        if s is None:
            vec = tuple((i, v) for i, v in enumerate(self.vector(dict(key))) if v)
            shares = [v / self.max_capacity[i] if self.max_capacity[i] else float("inf")
                      for i, v in vec]
            accel = has_accelerator(dict(key))
            order = (not accel, -max(shares, default=0.0), -sum(shares), key)
            # A copy of a shape made only of free resources (custom ones) is still worth serving.
            # Priced shapes get no bonus per copy: one would make many small copies outbid the
            # same resources in fewer large ones, and the small fillers a tail needs run out.
            value = price(dict(key)) or 0.01
            s = self.shapes[key] = Shape(key, vec, accel, value, order)
        return s

    def pending(self, kind: str, ident, shape: dict[str, float], bundles: tuple = ()) -> Unplaced:
        """Register something the reply must give a status; returns its unplaced tally."""
        self.labels.setdefault((kind, ident), (shape, bundles))
        return self.unplaced[(kind, ident)]

    # --- limits -------------------------------------------------------------------------------

    @property
    def global_room(self) -> int:
        cap = self.request.max_workers
        if cap is None:
            return UNBOUNDED
        return cap - self.alive_total - sum(g.launched for g in self.groups.values())

    def room(self, g: Group) -> int:
        if g.name in self.request.blocked_groups:
            return 0
        return max(0, min(g.room, self.global_room))

    def launchable(self, shape: Shape) -> list[Group]:
        """Groups a new node may be opened in for ``shape`` now: eligible, with room, and not
        held back by this candidate plan."""
        return [g for g in self.eligible(shape) if self.room(g) > 0 and g.name not in self.held_back]

    @property
    def launched_cost(self) -> float:
        return sum(g.launched * g.cost for g in self.groups.values())

    @property
    def launched_nodes(self) -> int:
        return sum(g.launched for g in self.groups.values())

    @property
    def capped(self) -> bool:
        """Whether a limit left some demand without a node."""
        return any(status == "capped" for tally in self.unplaced.values() for status, _ in tally)

    def eligible(self, shape: Shape) -> list[Group]:
        """Groups that may be launched for ``shape``, ignoring limits. CPU-only shapes get
        accelerator groups only when no other group could ever hold them."""
        fitting = self._eligible.get(shape.key)
        if fitting is None:
            fitting = [g for g in self.groups.values() if fits(g.total, shape.vec)]
            if not shape.accelerator and any(not g.accelerator for g in fitting):
                fitting = [g for g in fitting if not g.accelerator]
            self._eligible[shape.key] = fitting
        return fitting

    def infeasible_reason(self, shape: Shape, what: str | None = None) -> str | None:
        """None if some group or existing node could ever hold ``shape``; else the sentence."""
        if self.eligible(shape) or any(fits(total, shape.vec) for total in self.node_totals):
            return None
        what = what or format_shape(labels.without_labels(shape.resources))
        if not self.groups:
            return f"no worker group can hold {what}: there are no worker groups"
        offered = {r for r, i in self.index.items() if any(g.total[i] for g in self.groups.values())}
        missing = sorted(r for r, _ in shape.key if r not in offered)
        unmatched = [r[len(labels.PREFIX):] for r in missing if labels.is_label_resource(r)]
        if unmatched:
            return f"no worker group has labels matching {' and '.join(unmatched)} (needed by {what})"
        if missing:
            return f"no worker group offers {', '.join(missing)} (needed by {what})"
        selector = labels.selector_text(shape.resources)
        matching = [g for g in self.groups.values()
                    if all(g.total[self.index[r]] for r, _ in shape.key if labels.is_label_resource(r))]

        def closeness(g: Group) -> tuple:
            return (min(g.total[i] / v for i, v in shape.vec), g.cost, g.name)

        if not matching:  # each selector matches some group, but none matches them all
            return f"no worker group has labels matching {selector} (needed by {what})"
        largest = max(matching, key=closeness)
        which = f"no worker group with labels matching {selector}" if selector else "no worker group"
        return (f"{which} can hold {what}: the largest is {largest.name} with "
                f"{format_shape(largest.spec.resources)}")

    def capped_reason(self, shape: Shape) -> str:
        """Name the limit that keeps ``shape`` from getting a new node."""
        parts: list[str] = []
        group_has_room = False
        for g in self.eligible(shape):
            if g.name in self.request.blocked_groups:
                parts.append(f"{g.name} group is backed off: {self.request.blocked_groups[g.name]}")
            elif g.room <= 0:
                parts.append(f"{g.name} group is at its max of {plural(g.spec.max_nodes, 'node')}")
            else:
                group_has_room = True
        if group_has_room and self.global_room <= 0:
            parts.append(f"cluster is at max_workers={self.request.max_workers}")
        if not parts:  # only existing nodes of a group no longer configured can hold it
            return "no worker group can be launched for it; waiting for busy nodes to free up"
        return "; ".join(parts)

    # --- changes ------------------------------------------------------------------------------

    def open_nodes(self, g: Group, n: int, content: list[tuple[Shape, int]], tag: str,
                   opened_for: tuple, *, view: Literal["free", "held"] = "free") -> range:
        """Launch ``n`` nodes of ``g``, each holding ``content`` in ``view``; both views see them."""
        ids = range(self.new_ids, self.new_ids + n)
        self.new_ids += n
        g.launched += n
        used = g.total
        load = []
        for shape, copies in content:
            used = subtract(used, shape.vec, copies)
            load.append((tag, shape.key, copies))
        for pool, name in ((self.free, "free"), (self.held, "held")):
            mine = name == view
            pool.add(Bin(g.name, "new", False, g.accelerator, used if mine else g.total, ids,
                          tuple(load) if mine else (), opened_for))
        return ids

    def savepoint(self) -> tuple:
        self.free.begin()
        self.held.begin()
        return ({g.name: g.launched for g in self.groups.values()}, self.new_ids)

    def rollback(self, sp: tuple) -> None:
        self.free.rollback()
        self.held.rollback()
        launched, self.new_ids = sp
        for name, n in launched.items():
            self.groups[name].launched = n

    def commit(self) -> None:
        self.free.commit()
        self.held.commit()
