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
is filled first, tightest node first. What is left is covered one node *pattern* at a time: for
the largest remaining shape, every group that may take it simulates one node filled with that
shape and then with smaller remaining shapes; the group with the lowest cost per unit of demand
served wins and that pattern is opened as many times as the remaining counts and the limits
allow.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, NamedTuple

Resources = Mapping[str, float]

# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeGroup:
    """A worker group (a KubeRay workerGroupSpec, or a kind of local worker process)."""

    name: str
    resources: Resources  # what ONE node of this group offers to Ray
    min_nodes: int = 0
    max_nodes: int = 0
    cost: float | None = None  # None -> default_cost(resources)
    idle_timeout_s: float = 60.0


@dataclass(frozen=True)
class NodeView:
    """One worker node the backend knows about, as the planner needs to see it."""

    node_id: str  # the backend's node name (stable from starting to running)
    group: str
    state: Literal["starting", "running", "draining"]  # draining: offers nothing, not counted
    total: Resources
    available: Resources  # for a starting node, == total
    idle_s: float = 0.0  # seconds the Ray node has been idle; 0 when busy or starting


@dataclass(frozen=True)
class ResourceDemand:
    """Pending tasks/actors of one shape: one object per (shape, count), never per task."""

    shape: Resources
    count: int


@dataclass(frozen=True)
class GangDemand:
    """A pending placement group: placed all-or-nothing."""

    id: str
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
    bundles: tuple[Resources, ...]


@dataclass(frozen=True)
class PlanRequest:
    """Everything the planner may look at. Nothing else (no clock, no environment)."""

    groups: tuple[NodeGroup, ...]
    nodes: tuple[NodeView, ...] = ()
    demand: tuple[ResourceDemand, ...] = ()
    gangs: tuple[GangDemand, ...] = ()
    # ray.autoscaler.sdk.request_resources: packed against TOTAL (not free) resources.
    constraints: tuple[ResourceDemand, ...] = ()
    max_workers: int | None = None  # global cap on worker nodes (starting + running)
    blocked_groups: Mapping[str, str] = field(default_factory=dict)  # group -> back-off reason


@dataclass(frozen=True)
class Termination:
    """A node the reconciler should drain (and then remove), with the sentence to log."""

    node_id: str
    group: str
    reason: str


@dataclass(frozen=True)
class PendingStatus:
    """Why a pending shape is (or is not) being served, for the UI and the event log."""

    kind: Literal["task", "placement_group", "request_resources"]
    shape: Resources  # for a placement group: its largest bundle (all of them in `bundles`)
    count: int
    status: Literal["waiting", "capped", "infeasible"]
    reason: str
    bundles: tuple[Resources, ...] = ()


@dataclass(frozen=True)
class PlanReply:
    """The decision: what to launch, what to drain, and a status for every pending shape."""

    launch: Mapping[str, int]  # group -> number of new nodes; only groups with > 0
    terminate: tuple[Termination, ...]
    pending: tuple[PendingStatus, ...]
    launch_reasons: Mapping[str, str]  # group -> phrase, e.g. "3 pending {CPU: 1} tasks"


# Accelerators are what make a node expensive. A node offering one is an "accelerator node";
# CPU-only demand never launches one while a group without accelerators could hold it.
ACCELERATORS = ("GPU", "TPU", "HPU", "NPU", "neuron_cores")
NODE_OVERHEAD = 3.0  # per node: raylet, object store, daemon pods; favours fewer, larger nodes
CPU_WEIGHT = 1.0
ACCELERATOR_WEIGHT = 50.0  # one GPU ~ 50 vCPUs in cloud list prices
MEMORY_WEIGHT_PER_GIB = 1.0 / 8  # 8 GiB of memory ~ one vCPU
_GIB = float(2**30)


def default_cost(resources: Resources) -> float:
    """Relative price of one node offering ``resources``, used when a group sets no cost.

    ``1 + CPU + 50 * (GPU + other accelerators) + memory_GiB / 8``. The constant is a per-node
    overhead so that, at equal utilization, fewer larger nodes win; GPUs weigh far more than
    CPUs so the planner never spends a GPU node where a CPU node will do. Custom resources and
    ``object_store_memory`` (a slice of ``memory``) are free.
    """
    return NODE_OVERHEAD + _price(resources)


def format_shape(shape: Resources) -> str:
    """``{CPU: 2, GPU: 1, memory: 4 GB}``: integers without ".0", byte amounts in human units."""
    order = {"CPU": 0, "GPU": 1, "memory": 2, "object_store_memory": 3}
    items = sorted(shape.items(), key=lambda kv: (order.get(kv[0], 4), kv[0]))
    return "{" + ", ".join(f"{k}: {_format_amount(k, v)}" for k, v in items) + "}"


def plan(request: PlanRequest) -> PlanReply:
    """Decide what to launch and what to release for one snapshot of the cluster."""
    return _schedule(request).reply()


# ---------------------------------------------------------------------------------------------
# Resource arithmetic. Amounts are integers in Ray's fixed-point unit (1e-4), so "how many
# copies fit" is an exact integer division and nothing drifts through float rounding.
# ---------------------------------------------------------------------------------------------

_UNIT = 10_000
_UNBOUNDED = 1 << 62  # copies of an empty shape that "fit"; also "no max_workers"
Vector = tuple[int, ...]  # one amount per resource name, in _Ctx.names order
Sparse = tuple[tuple[int, int], ...]  # (resource index, amount) for the non-zero entries
ShapeKey = tuple[tuple[str, float], ...]  # canonical, hashable form of a Resources mapping


def _price(resources: Resources) -> float:
    price = 0.0
    for name, amount in resources.items():
        if name == "CPU":
            price += CPU_WEIGHT * amount
        elif name in ACCELERATORS:
            price += ACCELERATOR_WEIGHT * amount
        elif name == "memory":
            price += MEMORY_WEIGHT_PER_GIB * amount / _GIB
    return price


def _shape_key(resources: Resources) -> ShapeKey:
    return tuple(sorted((k, float(v)) for k, v in resources.items() if v > 0))


def _how_many(avail: Vector, shape: Sparse) -> int:
    """How many copies of ``shape`` fit in ``avail``: O(resources), not O(copies)."""
    n = _UNBOUNDED
    for i, v in shape:
        q = avail[i] // v
        if q < n:
            if q == 0:
                return 0
            n = q
    return n


def _fits(avail: Vector, shape: Sparse) -> bool:
    return all(avail[i] >= v for i, v in shape)


def _subtract(avail: Vector, shape: Sparse, times: int) -> Vector:
    out = list(avail)
    for i, v in shape:
        out[i] -= v * times
    return tuple(out)


def _has_accelerator(resources: Resources) -> bool:
    return any(resources.get(a, 0) > 0 for a in ACCELERATORS)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _format_number(x: float) -> str:
    if x == int(x):
        return str(int(x))
    return f"{x:.4f}".rstrip("0").rstrip(".")


def _format_amount(name: str, amount: float) -> str:
    if not name.endswith("memory"):
        return _format_number(amount)
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if amount >= size and amount % size == 0:
            return f"{int(amount // size)} {unit}"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if amount >= size:
            return f"{amount / size:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{_format_number(amount)} B"


def _format_seconds(s: float) -> str:
    return _format_number(round(s, 1))


# ---------------------------------------------------------------------------------------------
# Internal model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """A canonical demand shape, with what the passes need precomputed once."""

    key: ShapeKey
    vec: Sparse
    accelerator: bool
    value: float  # what serving one unit is worth, to compare node patterns across groups
    order: tuple  # first-fit-decreasing sort key

    @property
    def resources(self) -> dict[str, float]:
        return dict(self.key)


@dataclass
class _Group:
    spec: NodeGroup
    total: Vector
    cost: float
    accelerator: bool
    alive: int = 0  # starting + running nodes, minus those terminated by this plan
    launched: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def room(self) -> int:
        return self.spec.max_nodes - self.alive - self.launched


class _Bin(NamedTuple):
    """Nodes that are interchangeable for placement: same group, state and free vector."""

    group: str
    origin: Literal["running", "starting", "new"]
    spare: bool  # running and idle past its timeout: used last, so it can be released
    accelerator: bool
    avail: Vector
    nodes: tuple[str, ...]  # least idle first, so placements keep the idlest nodes free
    load: tuple[tuple[str, ShapeKey, int], ...] = ()  # (tag, shape, copies) on EACH node


class _Pool:
    """A set of bins with an undo journal, so a gang can be placed all-or-nothing."""

    def __init__(self) -> None:
        self.bins: dict[int, _Bin] = {}
        self._next = 0
        self._journal: list[tuple[int, _Bin | None]] | None = None

    def add(self, b: _Bin) -> None:
        bid, self._next = self._next, self._next + 1
        self._set(bid, b)

    def _set(self, bid: int, b: _Bin | None) -> None:
        if self._journal is not None:
            self._journal.append((bid, self.bins.get(bid)))
        if b is None:
            del self.bins[bid]
        else:
            self.bins[bid] = b

    def begin(self) -> None:
        self._journal = []

    def commit(self) -> None:
        self._journal = None

    def rollback(self) -> None:
        assert self._journal is not None
        for bid, old in reversed(self._journal):
            if old is None:
                self.bins.pop(bid, None)
            else:
                self.bins[bid] = old
        self._journal = None

    def remove_nodes(self, node_ids: set[str]) -> None:
        for bid, b in list(self.bins.items()):
            if any(n in node_ids for n in b.nodes):
                kept = tuple(n for n in b.nodes if n not in node_ids)
                self._set(bid, b._replace(nodes=kept) if kept else None)

    def _candidates(self, shape: _Shape, tag: str | None = None) -> list[tuple[int, int]]:
        """(bin id, copies per node) that fit ``shape``: GPU nodes last for CPU-only shapes,
        spare (releasable) nodes last, tightest fit first (best-fit decreasing)."""
        found = []
        for bid, b in self.bins.items():
            k = _how_many(b.avail, shape.vec)
            if k and (tag is None or all(t != tag for t, _, _ in b.load)):
                found.append((b.accelerator and not shape.accelerator, b.spare, k, bid))
        found.sort()
        return [(bid, k) for _, _, k, bid in found]

    def place(self, shape: _Shape, count: int, tag: str) -> tuple[int, list[tuple[_Bin, int, int]]]:
        """Put up to ``count`` copies of ``shape`` on free capacity; per bin, in O(1).

        Returns the copies left over and, per bin touched, (bin, nodes used, copies placed).
        """
        placed = []
        for bid, k in self._candidates(shape):
            b = self.bins[bid]
            full, rest = divmod(count, k)
            if full >= len(b.nodes):
                full, rest = len(b.nodes), 0
            used = full + (1 if rest else 0)
            self._split(bid, [(full, k), (1 if rest else 0, rest)], shape, tag)
            copies = full * k + rest
            placed.append((b, used, copies))
            count -= copies
            if count == 0:
                break
        return count, placed

    def spread(self, shape: _Shape, count: int, tag: str) -> tuple[int, list[tuple[_Bin, int, int]]]:
        """Put up to ``count`` copies of ``shape`` on distinct nodes that hold nothing of ``tag``."""
        placed = []
        for bid, _ in self._candidates(shape, tag):
            b = self.bins[bid]
            used = min(len(b.nodes), count)
            self._split(bid, [(used, 1)], shape, tag)
            placed.append((b, used, used))
            count -= used
            if count == 0:
                break
        return count, placed

    def _split(self, bid: int, takes: list[tuple[int, int]], shape: _Shape, tag: str) -> None:
        """The first nodes of bin ``bid`` take (nodes, copies each) in turn; the rest stay."""
        b = self.bins[bid]
        start = 0
        for n, copies in takes:
            if n and copies:
                self.add(b._replace(
                    nodes=b.nodes[start:start + n],
                    avail=_subtract(b.avail, shape.vec, copies),
                    load=b.load + ((tag, shape.key, copies),),
                ))
                start += n
        rest = b.nodes[start:]
        self._set(bid, b._replace(nodes=rest) if rest else None)


class _Tally:
    """How the units of one pending (kind, shape) were served, to write its status."""

    def __init__(self, kind: str, shape: dict[str, float], bundles: tuple = ()) -> None:
        self.kind, self.shape, self.bundles = kind, shape, bundles
        self.on_running = 0  # units on free capacity of running nodes
        self.on_starting = 0  # units on starting nodes or nodes launched by this plan
        self.nodes_starting: dict[str, int] = defaultdict(int)  # group -> nodes
        self.unplaced: dict[tuple[str, str], int] = defaultdict(int)  # (status, reason) -> units

    def record(self, placed: Iterable[tuple[str, str, int, int]]) -> None:
        for origin, group, nodes, units in placed:
            if origin == "running":
                self.on_running += units
            else:
                self.on_starting += units
                self.nodes_starting[group] += nodes


@dataclass
class _Ctx:
    """State shared by the passes of one plan; built from the request, read by ``reply()``."""

    request: PlanRequest
    index: dict[str, int]  # resource name -> position in every Vector
    groups: dict[str, _Group]
    nodes: list[NodeView]  # non-draining, sorted by node_id
    free: _Pool = field(default_factory=_Pool)  # the demand view: what each node has free
    held: _Pool = field(default_factory=_Pool)  # request_resources view: what each node offers
    alive_total: int = 0
    max_capacity: Vector = ()  # per resource, the most any group or node offers
    node_totals: set[Vector] = field(default_factory=set)  # distinct totals of existing nodes
    shapes: dict[ShapeKey, _Shape] = field(default_factory=dict)
    tasks: list[list] = field(default_factory=list)  # [shape, units left], FFD order
    tallies: dict[tuple, _Tally] = field(default_factory=dict)
    terminate: list[Termination] = field(default_factory=list)
    why: dict[str, dict[tuple, int]] = field(default_factory=lambda: defaultdict(dict))
    new_ids: int = 0
    min_ids: set[str] = field(default_factory=set)
    _eligible: dict[ShapeKey, list[_Group]] = field(default_factory=dict)

    @classmethod
    def from_request(cls, req: PlanRequest) -> "_Ctx":
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
        ctx = cls(req, {name: i for i, name in enumerate(sorted(names))}, {}, nodes)
        for g in sorted(req.groups, key=lambda g: g.name):
            if g.name in ctx.groups:
                raise ValueError(f"duplicate node group name {g.name!r}")
            cost = default_cost(g.resources) if g.cost is None else g.cost
            ctx.groups[g.name] = _Group(g, ctx.vector(g.resources), cost, _has_accelerator(g.resources))
        free: dict[tuple, list[NodeView]] = defaultdict(list)
        held: dict[tuple, list[NodeView]] = defaultdict(list)
        for n in nodes:
            if n.group in ctx.groups:
                ctx.groups[n.group].alive += 1
            total = ctx.vector(n.total)
            avail = ctx.vector(n.available) if n.state == "running" else total
            ctx.node_totals.add(total)
            head = (n.group, n.state, ctx.is_spare(n), _has_accelerator(n.total))
            free[(*head, avail)].append(n)
            held[(*head, total)].append(n)
        for pool, bins in ((ctx.free, free), (ctx.held, held)):
            for key in sorted(bins):
                members = sorted(bins[key], key=lambda n: (n.idle_s, n.node_id))
                pool.add(_Bin(*key, nodes=tuple(n.node_id for n in members)))
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
                out[self.index[name]] = round(amount * _UNIT)
        return tuple(out)

    def is_spare(self, n: NodeView) -> bool:
        g = self.groups.get(n.group)
        return g is not None and n.state == "running" and n.idle_s > g.spec.idle_timeout_s

    def shape(self, res: Resources) -> _Shape:
        key = _shape_key(res)
        s = self.shapes.get(key)
        if s is None:
            vec = tuple((i, v) for i, v in enumerate(self.vector(dict(key))) if v)
            shares = [v / self.max_capacity[i] if self.max_capacity[i] else float("inf")
                      for i, v in vec]
            accel = _has_accelerator(dict(key))
            order = (not accel, -max(shares, default=0.0), -sum(shares), key)
            s = _Shape(key, vec, accel, _price(dict(key)) + 0.01, order)
            self.shapes[key] = s
        return s

    # --- limits -------------------------------------------------------------------------------

    @property
    def global_room(self) -> int:
        cap = self.request.max_workers
        if cap is None:
            return _UNBOUNDED
        return cap - self.alive_total - sum(g.launched for g in self.groups.values())

    def room(self, g: _Group) -> int:
        if g.name in self.request.blocked_groups:
            return 0
        return max(0, min(g.room, self.global_room))

    def eligible(self, shape: _Shape) -> list[_Group]:
        """Groups that may be launched for ``shape``, ignoring limits. CPU-only shapes get
        accelerator groups only when no other group could ever hold them."""
        fitting = self._eligible.get(shape.key)
        if fitting is None:
            fitting = [g for g in self.groups.values() if _fits(g.total, shape.vec)]
            if not shape.accelerator and any(not g.accelerator for g in fitting):
                fitting = [g for g in fitting if not g.accelerator]
            self._eligible[shape.key] = fitting
        return fitting

    def infeasible_reason(self, shape: _Shape, what: str | None = None) -> str | None:
        """None if some group or existing node could ever hold ``shape``; else the sentence."""
        if self.eligible(shape) or any(_fits(total, shape.vec) for total in self.node_totals):
            return None
        what = what or format_shape(shape.resources)
        offered = {r for g in self.groups.values() for r, v in g.spec.resources.items() if v > 0}
        missing = sorted(r for r, _ in shape.key if r not in offered)
        if not self.groups:
            return f"no worker group can hold {what}: there are no worker groups"
        if missing:
            return f"no worker group offers {', '.join(missing)} (needed by {what})"

        def closeness(g: _Group) -> tuple:
            return (min(g.total[i] / v for i, v in shape.vec), g.cost, g.name)

        largest = max(self.groups.values(), key=closeness)
        return (f"no worker group can hold {what}: the largest is {largest.name} with "
                f"{format_shape(largest.spec.resources)}")

    def capped_reason(self, shape: _Shape) -> str:
        """Name the limit that keeps ``shape`` from getting a new node."""
        parts: list[str] = []
        at_global = False
        for g in self.eligible(shape):
            if g.name in self.request.blocked_groups:
                parts.append(f"{g.name} group is backed off: {self.request.blocked_groups[g.name]}")
            elif g.room <= 0:
                parts.append(f"{g.name} group is at its max of {_plural(g.spec.max_nodes, 'node')}")
            else:
                at_global = True
        if at_global and self.global_room <= 0:
            parts.append(f"cluster is at max_workers={self.request.max_workers}")
        if not parts:
            return "no worker group can be launched for it; waiting for busy nodes to free up"
        return "; ".join(parts)

    # --- bookkeeping --------------------------------------------------------------------------

    def tally(self, kind: str, ident, shape: dict, bundles: tuple = ()) -> _Tally:
        t = self.tallies.get((kind, ident))
        if t is None:
            t = self.tallies[(kind, ident)] = _Tally(kind, shape, bundles)
        return t

    def open_nodes(self, g: _Group, n: int, content: list[tuple[_Shape, int]], tag: str,
                   *, view: Literal["free", "held"] = "free") -> tuple[str, ...]:
        """Launch ``n`` nodes of ``g``, each holding ``content`` in ``view``; both views see them."""
        ids = tuple(f"+{g.name}-{self.new_ids + i}" for i in range(n))
        self.new_ids += n
        g.launched += n
        used = g.total
        load = []
        for shape, copies in content:
            used = _subtract(used, shape.vec, copies)
            load.append((tag, shape.key, copies))
        for pool, name in ((self.free, "free"), (self.held, "held")):
            mine = name == view
            pool.add(_Bin(g.name, "new", False, g.accelerator, used if mine else g.total, ids,
                          tuple(load) if mine else ()))
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

    # --- the reply ----------------------------------------------------------------------------

    def reply(self) -> PlanReply:
        launch = {g.name: g.launched for g in self.groups.values() if g.launched > 0}
        reasons = {name: self._launch_reason(name) for name in launch}
        return PlanReply(launch, tuple(self.terminate), self._pending(), reasons)

    def _launch_reason(self, group: str) -> str:
        why = self.why.get(group, {})
        parts = []
        if ("min",) in why:
            parts.append(f"min_nodes={self.groups[group].spec.min_nodes}")
        rr = [(n, k) for k, n in why.items() if k[0] == "rr"]
        if rr:
            parts.append("request_resources(" + ", ".join(
                f"{n} x {format_shape(dict(k[1]))}" for n, k in sorted(rr, key=lambda x: (-x[0], x[1]))
            ) + ")")
        pgs = sorted(k[1] for k in why if k[0] == "pg")
        if pgs:
            shown = ", ".join(pgs[:2])
            more = f" and {len(pgs) - 2} more" if len(pgs) > 2 else ""
            parts.append(f"placement group{'s' if len(pgs) > 1 else ''} {shown}{more}")
        tasks = sorted(((n, k[1]) for k, n in why.items() if k[0] == "task"), key=lambda x: (-x[0], x[1]))
        for n, key in tasks[:3]:
            parts.append(f"{n} pending {format_shape(dict(key))} {'task' if n == 1 else 'tasks'}")
        if len(tasks) > 3:
            parts.append(f"{len(tasks) - 3} more task shapes")
        return ", ".join(parts)

    def _pending(self) -> tuple[PendingStatus, ...]:
        out = []
        for t in self.tallies.values():
            waiting = t.on_starting + (t.on_running if t.kind != "request_resources" else 0)
            if waiting:
                parts = [f"{_plural(n, g + ' node')} starting" for g, n in sorted(t.nodes_starting.items())]
                if t.on_running and t.kind != "request_resources":
                    parts.append("fits on free capacity of running nodes")
                out.append(PendingStatus(t.kind, t.shape, waiting, "waiting", "; ".join(parts), t.bundles))
            for (status, reason), n in sorted(t.unplaced.items()):
                out.append(PendingStatus(t.kind, t.shape, n, status, reason, t.bundles))  # type: ignore[arg-type]
        kinds = {"task": 0, "placement_group": 1, "request_resources": 2}
        statuses = {"waiting": 0, "capped": 1, "infeasible": 2}
        out.sort(key=lambda p: (kinds[p.kind], _shape_key(p.shape),
                                tuple(_shape_key(b) for b in p.bundles), statuses[p.status], p.reason))
        return tuple(out)


def _placements(placed: list[tuple[_Bin, int, int]]) -> list[tuple[str, str, int, int]]:
    return [(b.origin, b.group, nodes, units) for b, nodes, units in placed]


# ---------------------------------------------------------------------------------------------
# The passes, in the order ``_schedule`` runs them
# ---------------------------------------------------------------------------------------------


def _schedule(request: PlanRequest) -> _Ctx:
    ctx = _Ctx.from_request(request)
    for step in (_enforce_max, _enforce_min, _fit_constraints, _fit_gangs, _fit_existing,
                 _launch_for_demand, _scale_down_idle):
        step(ctx)
    return ctx


def _termination_order(n: NodeView) -> tuple:
    """The one sort key for choosing victims: longest idle first (like Ray's
    ``_sort_nodes_for_termination``), node id for a stable tie-break."""
    return (-n.idle_s, n.node_id)


def _enforce_max(ctx: _Ctx) -> None:
    """Release idle nodes above a group's max or above max_workers (e.g. the user lowered it).
    Busy, starting and draining nodes are never taken; they go when they become idle."""
    victims: set[str] = set()
    idle = sorted((n for n in ctx.nodes if n.state == "running" and n.idle_s > 0
                   and n.group in ctx.groups), key=_termination_order)
    for g in ctx.groups.values():
        excess = g.alive - g.spec.max_nodes
        for n in [n for n in idle if n.group == g.name][:max(0, excess)]:
            victims.add(n.node_id)
            g.alive -= 1
            ctx.alive_total -= 1
            ctx.terminate.append(Termination(n.node_id, n.group, (
                f"{g.name} group is over its max of {_plural(g.spec.max_nodes, 'node')}; "
                f"idle for {_format_seconds(n.idle_s)} s")))
    cap = ctx.request.max_workers
    if cap is not None and ctx.alive_total > cap:
        for n in idle:
            g = ctx.groups[n.group]
            if ctx.alive_total <= cap:
                break
            if n.node_id in victims or g.alive <= g.spec.min_nodes:
                continue
            victims.add(n.node_id)
            g.alive -= 1
            ctx.alive_total -= 1
            ctx.terminate.append(Termination(n.node_id, n.group, (
                f"cluster is over max_workers={cap}; idle for {_format_seconds(n.idle_s)} s")))
    if victims:
        ctx.nodes = [n for n in ctx.nodes if n.node_id not in victims]
        ctx.free.remove_nodes(victims)
        ctx.held.remove_nodes(victims)
    assert all(g.alive >= 0 for g in ctx.groups.values())


def _enforce_min(ctx: _Ctx) -> None:
    """Launch up to each group's min_nodes, even with no demand (within the global cap)."""
    for g in ctx.groups.values():
        n = min(g.spec.min_nodes - g.alive - g.launched, ctx.room(g))
        if n > 0:
            ctx.min_ids.update(ctx.open_nodes(g, n, [], "min"))
            ctx.why[g.name][("min",)] = n


def _fit_constraints(ctx: _Ctx) -> None:
    """request_resources(): the cluster's TOTAL resources must hold every bundle, whoever uses
    them. Pack against totals of existing nodes (busy ones first, so idle ones stay releasable),
    then launch what is missing. Partial: if limits stop us, launch what fits and say why."""
    units: dict[ShapeKey, int] = defaultdict(int)
    for d in ctx.request.constraints:
        if d.count > 0 and _shape_key(d.shape):
            units[_shape_key(d.shape)] += d.count
    items = []
    for key in units:
        shape = ctx.shape(dict(key))
        tally = ctx.tally("request_resources", key, shape.resources)
        reason = ctx.infeasible_reason(shape)
        if reason:
            tally.unplaced[("infeasible", reason)] += units[key]
            continue
        left, placed = ctx.held.place(shape, units[key], "rr")
        tally.record(_placements(placed))
        items.append([shape, left])
    items.sort(key=lambda it: it[0].order)
    _launch_patterns(ctx, items, "rr", view="held")


def _fit_gangs(ctx: _Ctx) -> None:
    """Placement groups, all-or-nothing: on free capacity first, then on new nodes. A gang that
    cannot be fully placed reserves nothing (every change is rolled back) and gets a status."""
    def order(g: GangDemand) -> tuple:
        strict = g.strategy in ("STRICT_SPREAD", "STRICT_PACK")
        return (not strict, -len(g.bundles), g.id)

    for gang in sorted(ctx.request.gangs, key=order):
        bundles = [ctx.shape(b) for b in gang.bundles if _shape_key(b)]
        bundles.sort(key=lambda s: s.order)
        if not bundles:
            continue
        bundle_dicts = tuple(s.resources for s in bundles)
        tally = ctx.tally("placement_group", (gang.strategy, tuple(s.key for s in bundles)),
                          bundles[0].resources, bundle_dicts)
        tag = f"pg:{gang.id}"
        if gang.strategy == "STRICT_PACK":
            total: dict[str, float] = defaultdict(float)
            for s in bundles:
                for r, v in s.key:
                    total[r] += v
            parts = [ctx.shape(total)]
            what = f"all bundles on one node (STRICT_PACK, {format_shape(parts[0].resources)} in total)"
        else:
            parts = bundles
            what = None
        reason = None
        for s in parts:
            reason = ctx.infeasible_reason(s, what)
            if reason:
                break
        if reason:
            tally.unplaced[("infeasible", reason)] += 1
            continue

        sp = ctx.savepoint()
        counts: dict[ShapeKey, int] = defaultdict(int)
        for s in parts:
            counts[s.key] += 1
        failed, placed = _place_gang(ctx, gang, [ctx.shapes[k] for k in counts], counts, tag)
        if failed is not None:
            ctx.rollback(sp)
            prefix = ""
            if gang.strategy == "STRICT_SPREAD":
                prefix = f"needs {len(bundles)} distinct nodes (STRICT_SPREAD): "
            tally.unplaced[("capped", prefix + ctx.capped_reason(failed))] += 1
            continue
        ctx.commit()
        by_group: dict[tuple[str, str], int] = defaultdict(int)
        for origin, group, nodes, _ in placed:
            by_group[(origin, group)] += nodes
            if origin == "new":
                ctx.why[group][("pg", gang.id)] = ctx.why[group].get(("pg", gang.id), 0) + nodes
        tally.record((origin, group, nodes, 0) for (origin, group), nodes in by_group.items())
        if any(origin != "running" for origin, _, _, _ in placed):
            tally.on_starting += 1
        else:
            tally.on_running += 1


def _place_gang(ctx: _Ctx, gang: GangDemand, shapes: list[_Shape], counts: dict[ShapeKey, int],
                tag: str) -> tuple[_Shape | None, list[tuple[str, str, int, int]]]:
    """Place one gang's bundles; returns (the shape that did not fit or None, placements)."""
    placed: list[tuple[str, str, int, int]] = []
    if gang.strategy == "STRICT_SPREAD":
        for s in shapes:
            left, where = ctx.free.spread(s, counts[s.key], tag)
            placed += _placements(where)
            for g in sorted(ctx.eligible(s), key=lambda g: (g.cost, g.name)):
                n = min(left, ctx.room(g))
                if n > 0:
                    ctx.open_nodes(g, n, [(s, 1)], tag)
                    placed.append(("new", g.name, n, n))
                    left -= n
            if left:
                return s, placed
        return None, placed
    items = []
    for s in shapes:
        left, where = ctx.free.place(s, counts[s.key], tag)
        placed += _placements(where)
        items.append([s, left])
    for g, nodes, _ in _launch_patterns(ctx, items, tag, view="free"):
        placed.append(("new", g, nodes, 0))
    for s, left in items:
        if left:
            return s, placed
    return None, placed


def _fit_existing(ctx: _Ctx) -> None:
    """Pending tasks/actors onto free capacity of running and starting nodes (and of nodes this
    plan already launched), largest shapes first, so we never launch what is already coming."""
    units: dict[ShapeKey, int] = defaultdict(int)
    for d in ctx.request.demand:
        if d.count > 0:
            units[_shape_key(d.shape)] += d.count
    for key in sorted(units):
        shape = ctx.shape(dict(key))
        tally = ctx.tally("task", key, shape.resources)
        if not key:
            tally.unplaced[("waiting", "needs no resources; Ray places it on any node")] += units[key]
            continue
        reason = ctx.infeasible_reason(shape)
        if reason:
            tally.unplaced[("infeasible", reason)] += units[key]
            continue
        ctx.tasks.append([shape, units[key]])
    ctx.tasks.sort(key=lambda it: it[0].order)
    for item in ctx.tasks:
        shape, count = item
        left, placed = ctx.free.place(shape, count, "task")
        ctx.tallies[("task", shape.key)].record(_placements(placed))
        item[1] = left


def _launch_for_demand(ctx: _Ctx) -> None:
    """Launch nodes for what free capacity could not take; what limits leave over is capped."""
    _launch_patterns(ctx, ctx.tasks, "task", view="free")
    for shape, left in ctx.tasks:
        if left:
            ctx.tallies[("task", shape.key)].unplaced[("capped", ctx.capped_reason(shape))] += left


_VARIANTS = 4  # first-shape counts tried per group: 2x5 + 2x3 fills 16 CPUs, 3x5 does not


def _launch_patterns(ctx: _Ctx, items: list[list], tag: str, *, view: Literal["free", "held"],
                     ) -> list[tuple[str, int, list[tuple[_Shape, int]]]]:
    """Cover ``items`` ([shape, units left], FFD order; updated in place) with new nodes.

    One node *pattern* at a time. For the largest shape left, every group that may take it
    simulates one node: c copies of that shape (c = as many as fit, and a few less), then the
    gaps filled greedily with the other shapes left. A pattern is scored by what covering ALL
    remaining copies of the shape would cost -- whole nodes of the pattern plus the cheapest
    single-group cover of the last few copies -- per unit of demand value served, so a nearly
    empty big node loses to a small one, and four small nodes lose to one big one. The best
    pattern is opened as many times as the remaining counts and the limits allow.
    Cost: O(patterns x groups x shapes), never O(tasks). Returns (group, nodes, pattern) opened.
    """
    opened = []
    kind = {"task": "task", "rr": "request_resources"}.get(tag)  # gangs tally themselves
    first = 0
    while first < len(items):
        shape, left = items[first]
        if left <= 0:
            first += 1
            continue
        groups = [g for g in ctx.eligible(shape) if ctx.room(g) > 0]
        if not groups:
            first += 1  # capped: later (smaller) shapes may still go elsewhere
            continue
        fit = {g.name: _how_many(g.total, shape.vec) for g in groups}

        def tail_cost(t: int) -> float:
            return min(-(-t // fit[h.name]) * h.cost for h in groups) if t else 0.0

        best = None
        for g in groups:
            most = min(fit[g.name], left)
            for copies in range(most, max(0, most - _VARIANTS), -1):
                pattern, node_value = _fill_pattern(g.total, items, first, copies)
                full, tail = divmod(left, copies)
                served = tail * shape.value
                for j, take in pattern:
                    served += min(items[j][1], full * take) * items[j][0].value
                score = ((full * g.cost + tail_cost(tail)) / served, -node_value, g.name, -copies)
                if best is None or score < best[0]:
                    best = (score, g, pattern)
        _, g, pattern = best
        n = min([ctx.room(g)] + [items[j][1] // take for j, take in pattern])
        content = [(items[j][0], take) for j, take in pattern]
        ctx.open_nodes(g, n, content, tag, view=view)
        for j, take in pattern:
            items[j][1] -= n * take
            if kind:
                ctx.tallies[(kind, items[j][0].key)].record([("new", g.name, n, n * take)])
        if kind:  # the event log names what the nodes were opened for, not what fills them
            why = ctx.why[g.name]
            why[(tag, shape.key)] = why.get((tag, shape.key), 0) + n * pattern[0][1]
        opened.append((g.name, n, content))
    return opened


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
        k = _how_many(left, other.vec)
        if not k:
            continue
        take = min(k, units)
        for i, v in other.vec:
            left[i] -= v * take
        pattern.append((j, take))
        value += take * other.value
    return pattern, value


def _scale_down_idle(ctx: _Ctx) -> None:
    """Release running nodes idle past their group's timeout that hold nothing of this plan
    (no pending demand would go on them, no request_resources bundle needs them) and are not
    needed for min_nodes; longest idle first. Starting and draining nodes are never touched."""
    needed = {node for pool in (ctx.free, ctx.held) for b in pool.bins.values() if b.load
              for node in b.nodes}
    for n in sorted((n for n in ctx.nodes if ctx.is_spare(n) and n.node_id not in needed),
                    key=_termination_order):
        g = ctx.groups[n.group]
        if g.alive <= g.spec.min_nodes:
            continue
        g.alive -= 1
        ctx.terminate.append(Termination(n.node_id, n.group, (
            f"idle for {_format_seconds(n.idle_s)} s (timeout {_format_seconds(g.spec.idle_timeout_s)} s)")))


# ---------------------------------------------------------------------------------------------
# For tests and bench: the plan expanded node by node, so "whatever the plan says fits really
# fits" can be checked from outside.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _NodeLoad:
    node_id: str  # existing node id, or "+<group>-<n>" for a node this plan launches
    group: str
    origin: Literal["running", "starting", "new"]
    demand: tuple[tuple[str, dict[str, float], int], ...]  # (tag, shape, copies) on free capacity
    held: tuple[tuple[str, dict[str, float], int], ...]  # request_resources bundles on totals
    for_min: bool


@dataclass(frozen=True)
class _Assignment:
    reply: PlanReply
    nodes: tuple[_NodeLoad, ...]


def _assign(request: PlanRequest) -> _Assignment:
    """Run the planner and return its reply plus where every unit of demand was put."""
    ctx = _schedule(request)
    demand: dict[str, list] = defaultdict(list)
    held: dict[str, list] = defaultdict(list)
    info: dict[str, tuple[str, str]] = {}
    for pool, out in ((ctx.free, demand), (ctx.held, held)):
        for b in pool.bins.values():
            for node in b.nodes:
                info[node] = (b.group, b.origin)
                out[node].extend((tag, dict(key), n) for tag, key, n in b.load)
    nodes = tuple(
        _NodeLoad(node, *info[node], tuple(demand[node]), tuple(held[node]), node in ctx.min_ids)
        for node in sorted(info)
    )
    return _Assignment(ctx.reply(), nodes)
