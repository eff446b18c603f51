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
(``_launch_patterns``): for the largest remaining shape, every group that may take it simulates
a node holding a few different counts of that shape with the gaps filled by smaller shapes; the
pattern with the lowest cost per unit of demand served (counting the cheapest cover of the last
copies) wins and is opened as many times as the remaining counts and the limits allow. A last
pass (``_consolidate``) drops any launched node whose tasks fit in what the others have left.
Identical placement groups are packed together the same way, all-or-nothing per group.
CPU-only demand never launches an accelerator node while some other group could hold it: when
that group is at its max the demand is reported ``capped``, GPUs are not spent on it.
Cost alone always prefers several small accelerator nodes to one larger node with an idle
accelerator, so when nothing is capped the plan is made again with each smaller accelerator group
held back, and fewer nodes win at up to one idle accelerator per node saved (``_plan_score``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

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
# Per node, whatever its size: Ray's own processes, a Kubernetes node/pod slot, minutes of
# start-up. Three CPUs' worth: a tail of tasks goes to one bigger node rather than three small.
NODE_OVERHEAD = 3.0
CPU_WEIGHT = 1.0
ACCELERATOR_WEIGHT = 50.0  # one GPU ~ 50 vCPUs in cloud list prices
MEMORY_WEIGHT_PER_GIB = 1.0 / 8  # 8 GiB of memory ~ one vCPU
_GIB = float(2**30)


def default_cost(resources: Resources) -> float:
    """Relative price of one node offering ``resources``, used when a group sets no cost.

    ``3 + CPU + 50 * (GPU + other accelerators) + memory_GiB / 8``. The constant is a per-node
    overhead so that, at equal utilization, fewer larger nodes win; GPUs weigh far more than
    CPUs (list prices: one GPU ~ 50 vCPUs) so an idle GPU is the most expensive waste. Custom
    resources and ``object_store_memory`` (a slice of ``memory``) are free.
    """
    return NODE_OVERHEAD + _price(resources)


def format_shape(shape: Resources) -> str:
    """``{CPU: 2, GPU: 1, memory: 4 GB}``: integers without ".0", byte amounts in human units."""
    order = {"CPU": 0, "GPU": 1, "memory": 2, "object_store_memory": 3}
    items = sorted(shape.items(), key=lambda kv: (order.get(kv[0], 4), kv[0]))
    return "{" + ", ".join(f"{k}: {_format_amount(k, v)}" for k, v in items) + "}"


def plan(request: PlanRequest) -> PlanReply:
    """Decide what to launch and what to release for one snapshot of the cluster."""
    return _reply(_schedule(request))


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
    """A canonical demand shape, with what the passes need computed once."""

    key: ShapeKey
    vec: Sparse
    accelerator: bool
    value: float  # what serving one copy is worth, to compare node patterns across groups
    order: tuple  # first-fit-decreasing sort key

    @property
    def resources(self) -> dict[str, float]:
        return dict(self.key)


@dataclass
class _Group:
    """A node group with its capacity vector, price, and how many nodes it has and gets."""

    spec: NodeGroup
    total: Vector
    cost: float
    accelerator: bool
    alive: int = 0  # starting + running nodes, minus those this plan terminates
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
    # Existing nodes: their ids, least idle first, so placements keep the idlest nodes free.
    # Nodes this plan launches: a range of sequence numbers, so launching a million nodes
    # costs no more than launching one.
    nodes: tuple[str, ...] | range
    load: tuple[tuple[str, ShapeKey, int], ...] = ()  # (tag, shape, copies) on EACH node
    opened_for: tuple = ()  # launched nodes: ("min",), ("task", shape), ("rr", shape), ("pg", tag)


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

    def remove_existing(self, node_ids: set[str]) -> None:
        """Forget existing nodes (terminated before any placement)."""
        for bid, b in list(self.bins.items()):
            if b.origin != "new" and any(n in node_ids for n in b.nodes):
                kept = tuple(n for n in b.nodes if n not in node_ids)
                self._set(bid, b._replace(nodes=kept) if kept else None)

    def remove_new(self, group: str, seq: int) -> None:
        """Un-launch node ``seq`` of ``group``, whichever bin it is in."""
        for bid, b in list(self.bins.items()):
            if b.origin == "new" and b.group == group and seq in b.nodes:
                i = b.nodes.index(seq)
                before, after = b.nodes[:i], b.nodes[i + 1:]
                self._set(bid, b._replace(nodes=before) if before else None)
                if after:
                    self.add(b._replace(nodes=after))
                return

    def _candidates(self, shape: _Shape, tag: str, avoid: str | None, new_only: bool,
                    ) -> list[tuple[int, int]]:
        """(bin id, copies per node) that fit ``shape``: GPU nodes last for CPU-only shapes,
        spare (releasable) nodes last, tightest fit first (best-fit decreasing). Bins holding a
        load whose tag starts with ``avoid`` (other than ``tag`` itself) are skipped."""
        found = []
        for bid, b in self.bins.items():
            if new_only and b.origin != "new":
                continue
            k = _how_many(b.avail, shape.vec)
            if k and not (avoid and any(t != tag and t.startswith(avoid) for t, _, _ in b.load)):
                found.append((b.accelerator and not shape.accelerator, b.spare, k, bid))
        found.sort()
        return [(bid, k) for _, _, k, bid in found]

    def place(self, shape: _Shape, count: int, tag: str, *, avoid: str | None = None,
              new_only: bool = False) -> int:
        """Put up to ``count`` copies of ``shape`` on free capacity, O(1) per bin; returns
        how many copies found no room."""
        for bid, k in self._candidates(shape, tag, avoid, new_only):
            nodes = len(self.bins[bid].nodes)
            full, rest = divmod(count, k)
            if full >= nodes:
                full, rest = nodes, 0
            self._split(bid, [(full, k), (1 if rest else 0, rest)], shape, tag)
            count -= full * k + rest
            if count == 0:
                break
        return count

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


Unplaced = dict[tuple[str, str], int]  # (status, reason) -> units


@dataclass
class _Ctx:
    """State shared by the passes of one plan; built from the request, read by ``_reply``."""

    request: PlanRequest
    index: dict[str, int]  # resource name -> position in every Vector
    groups: dict[str, _Group]  # by name, sorted
    nodes: list[NodeView]  # non-draining, sorted by node_id
    free: _Pool = field(default_factory=_Pool)  # the demand view: what each node has free
    held: _Pool = field(default_factory=_Pool)  # request_resources view: what each node offers
    alive_total: int = 0
    max_capacity: Vector = ()  # per resource, the most any group or node offers
    node_totals: set[Vector] = field(default_factory=set)  # distinct totals of existing nodes
    shapes: dict[ShapeKey, _Shape] = field(default_factory=dict)
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
    _eligible: dict[ShapeKey, list[_Group]] = field(default_factory=dict)

    @classmethod
    def from_request(cls, req: PlanRequest, held_back: frozenset[str] = frozenset()) -> _Ctx:
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
        ctx = cls(req, {name: i for i, name in enumerate(sorted(names))}, {}, nodes, held_back=held_back)
        for g in sorted(req.groups, key=lambda g: g.name):
            if g.name in ctx.groups:
                raise ValueError(f"duplicate node group name {g.name!r}")
            cost = default_cost(g.resources) if g.cost is None else g.cost
            ctx.groups[g.name] = _Group(g, ctx.vector(g.resources), cost, _has_accelerator(g.resources))
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
            total = vector(n.total)
            avail = vector(n.available) if n.state == "running" else total
            ctx.node_totals.add(total)
            head = (n.group, n.state, ctx.is_spare(n), any(total[i] for i in accelerators))
            free[(*head, avail)].append(n)
            held[(*head, total)].append(n)
        for pool, bins in ((ctx.free, free), (ctx.held, held)):
            for key in sorted(bins):
                members = sorted(bins[key], key=lambda n: n.idle_s)  # stable: then by node_id
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
            # +0.01: a copy of a shape made only of free resources (custom ones) is still worth
            # serving, and more copies per node is still better.
            s = self.shapes[key] = _Shape(key, vec, accel, _price(dict(key)) + 0.01, order)
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
            return _UNBOUNDED
        return cap - self.alive_total - sum(g.launched for g in self.groups.values())

    def room(self, g: _Group) -> int:
        if g.name in self.request.blocked_groups:
            return 0
        return max(0, min(g.room, self.global_room))

    def launchable(self, shape: _Shape) -> list[_Group]:
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
        if not self.groups:
            return f"no worker group can hold {what}: there are no worker groups"
        offered = {r for g in self.groups.values() for r, v in g.spec.resources.items() if v > 0}
        missing = sorted(r for r, _ in shape.key if r not in offered)
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
        group_has_room = False
        for g in self.eligible(shape):
            if g.name in self.request.blocked_groups:
                parts.append(f"{g.name} group is backed off: {self.request.blocked_groups[g.name]}")
            elif g.room <= 0:
                parts.append(f"{g.name} group is at its max of {_plural(g.spec.max_nodes, 'node')}")
            else:
                group_has_room = True
        if group_has_room and self.global_room <= 0:
            parts.append(f"cluster is at max_workers={self.request.max_workers}")
        if not parts:  # only existing nodes of a group no longer configured can hold it
            return "no worker group can be launched for it; waiting for busy nodes to free up"
        return "; ".join(parts)

    # --- changes ------------------------------------------------------------------------------

    def open_nodes(self, g: _Group, n: int, content: list[tuple[_Shape, int]], tag: str,
                   opened_for: tuple, *, view: Literal["free", "held"] = "free") -> range:
        """Launch ``n`` nodes of ``g``, each holding ``content`` in ``view``; both views see them."""
        ids = range(self.new_ids, self.new_ids + n)
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


# ---------------------------------------------------------------------------------------------
# The passes, in the order ``_schedule`` runs them
# ---------------------------------------------------------------------------------------------


def _schedule(request: PlanRequest) -> _Ctx:
    """The passes' plan, or the one made with a smaller accelerator group held back when that
    scores better (``_plan_score``). Limits decide a capped plan, so it is not second-guessed."""
    best = _run_passes(request, frozenset())
    if best.capped:
        return best
    for name in _smaller_accelerator_groups(best):
        other = _run_passes(request, frozenset({name}))
        if not other.capped and _plan_score(other) < _plan_score(best):
            best = other
    return best


def _run_passes(request: PlanRequest, held_back: frozenset[str]) -> _Ctx:
    ctx = _Ctx.from_request(request, held_back)
    for step in (_enforce_max, _enforce_min, _fit_constraints, _fit_gangs, _fit_existing,
                 _launch_for_demand, _consolidate, _scale_down_idle):
        step(ctx)
    return ctx


def _smaller_accelerator_groups(ctx: _Ctx) -> list[str]:
    """Accelerator groups the plan launches that another launchable accelerator group outsizes
    in every resource: holding one back moves its work onto fewer, larger nodes."""
    def outsized(g: _Group) -> bool:
        return any(h is not g and h.accelerator and h.total != g.total and ctx.room(h) > 0
                   and all(a >= b for a, b in zip(h.total, g.total)) for h in ctx.groups.values())

    return [g.name for g in ctx.groups.values() if g.accelerator and g.launched and outsized(g)]


def _plan_score(ctx: _Ctx) -> tuple[float, int]:
    """Launched cost plus one accelerator's price (``ACCELERATOR_WEIGHT``) per launched node,
    then node count: lower is better.

    By cost alone several small accelerator nodes always beat one larger node with an idle
    accelerator, since an accelerator is priced far above a node's overhead. But every node is
    also a pod to schedule, start and watch, so a plan may leave up to one more accelerator idle
    for each node it saves.
    """
    return (ctx.launched_cost + ACCELERATOR_WEIGHT * ctx.launched_nodes, ctx.launched_nodes)


def _termination_order(n: NodeView) -> tuple:
    """The one sort key for choosing victims: longest idle first (like Ray's
    ``_sort_nodes_for_termination``), node id for a stable tie-break."""
    return (-n.idle_s, n.node_id)


def _enforce_max(ctx: _Ctx) -> None:
    """Release idle nodes above a group's max or above max_workers (e.g. the user lowered it).
    Busy, starting and draining nodes are never taken; they go once they are idle."""
    victims: set[str] = set()
    idle = sorted((n for n in ctx.nodes if n.state == "running" and n.idle_s > 0
                   and n.group in ctx.groups), key=_termination_order)

    def take(n: NodeView, why: str) -> None:
        victims.add(n.node_id)
        ctx.groups[n.group].alive -= 1
        ctx.alive_total -= 1
        ctx.terminate.append(Termination(n.node_id, n.group, f"{why}; idle for {_format_seconds(n.idle_s)} s"))

    for g in ctx.groups.values():
        excess = g.alive - g.spec.max_nodes
        for n in [n for n in idle if n.group == g.name][:max(0, excess)]:
            take(n, f"{g.name} group is over its max of {_plural(g.spec.max_nodes, 'node')}")
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


def _enforce_min(ctx: _Ctx) -> None:
    """Launch up to each group's min_nodes, even with no demand (within the global cap)."""
    for g in ctx.groups.values():
        n = min(g.spec.min_nodes - g.alive - g.launched, ctx.room(g))
        if n > 0:
            ctx.min_ids.append(ctx.open_nodes(g, n, [], "min", ("min",)))


def _fit_constraints(ctx: _Ctx) -> None:
    """request_resources(): the cluster's TOTAL resources must hold every bundle, whoever uses
    them. Pack against totals of existing nodes (busy ones first, so idle ones stay releasable),
    then launch what is missing. If limits stop us, launch what fits and say why (Ray's v2
    scheduler launches nothing for a constraint it cannot fully meet)."""
    units: dict[ShapeKey, int] = defaultdict(int)
    for d in ctx.request.constraints:
        if d.count > 0 and _shape_key(d.shape):
            units[_shape_key(d.shape)] += d.count
    items = []
    for shape in sorted((ctx.shape(dict(key)) for key in units), key=lambda s: s.order):
        unplaced = ctx.pending("request_resources", shape.key, shape.resources)
        reason = ctx.infeasible_reason(shape)
        if reason:
            unplaced[("infeasible", reason)] += units[shape.key]
        else:
            items.append([shape, ctx.held.place(shape, units[shape.key], "rr")])
    _launch_patterns(ctx, items, "rr", view="held")
    for shape, left in items:
        if left:
            ctx.unplaced[("request_resources", shape.key)][("capped", ctx.capped_reason(shape))] += left


def _fit_gangs(ctx: _Ctx) -> None:
    """Placement groups, each all-or-nothing: on free capacity first, then on new nodes.

    Identical groups (same strategy and bundles; Tune and Train make many) form one batch that
    is packed like tasks: g copies of every bundle at once. The largest g that fits is found by
    trying all, then bisecting; every failed try is rolled back, so a group that does not fit
    reserves nothing, and the rest get a status naming the limit.
    """
    batches: dict[tuple, list[GangDemand]] = defaultdict(list)
    parts_of: dict[tuple, list[_Shape]] = {}
    for gang in ctx.request.gangs:
        bundles = sorted((ctx.shape(b) for b in gang.bundles if _shape_key(b)), key=lambda s: s.order)
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


def _try_gangs(ctx: _Ctx, strategy: str, bundles: list[_Shape], copies: int, tag: str,
               size: int) -> str | None:
    """Place ``copies`` gangs of ``size`` bundles; None, or the limit that stopped it (as this
    attempt met it). The caller commits or rolls back."""
    failed = _place_gangs(ctx, strategy, bundles, copies, tag)
    if failed is None:
        return None
    if strategy == "STRICT_SPREAD":
        return f"needs {size} distinct nodes (STRICT_SPREAD): {ctx.capped_reason(failed)}"
    return ctx.capped_reason(failed)


def _place_gangs(ctx: _Ctx, strategy: str, bundles: list[_Shape], copies: int, tag: str) -> _Shape | None:
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
            _launch_patterns(ctx, items, position, view="free", opened_for=why)
            if items[0][1]:
                return s
        return None
    counts = Counter(s.key for s in bundles)
    items = [[ctx.shapes[key], ctx.free.place(ctx.shapes[key], n * copies, tag)] for key, n in counts.items()]
    _launch_patterns(ctx, items, tag, view="free", opened_for=why)
    return next((s for s, left in items if left), None)


def _fit_existing(ctx: _Ctx) -> None:
    """Pending tasks/actors onto free capacity of running and starting nodes (and of nodes this
    plan already launched), largest shapes first, so we never launch what is already coming."""
    units: dict[ShapeKey, int] = defaultdict(int)
    for d in ctx.request.demand:
        if d.count > 0:
            units[_shape_key(d.shape)] += d.count
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


def _launch_for_demand(ctx: _Ctx) -> None:
    """Launch nodes for what free capacity could not take; what limits leave over is capped."""
    _launch_patterns(ctx, ctx.tasks, "task", view="free")
    for shape, left in ctx.tasks:
        if left:
            ctx.unplaced[("task", shape.key)][("capped", ctx.capped_reason(shape))] += left


_VARIANTS = 4  # first-shape counts tried per group: 2x5 + 2x3 fills 16 CPUs, 3x5 does not


def _launch_patterns(ctx: _Ctx, items: list[list], tag: str, *, view: Literal["free", "held"],
                     opened_for: tuple | None = None) -> None:
    """Cover ``items`` ([shape, copies left], FFD order; updated in place) with new nodes.

    One node *pattern* at a time. For the largest shape left, every group that may take it
    simulates one node: c copies of that shape (c = as many as fit, and a few less), then the
    gaps filled greedily with the other shapes left. A pattern is scored by what covering ALL
    remaining copies of the shape would cost -- whole nodes of the pattern plus the cheapest
    single-group cover of the last few copies -- per unit of demand value served, so a nearly
    empty big node loses to a small one, and four small nodes lose to one big one. The best
    pattern is opened as many times as the remaining counts and the limits allow.
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
        fit = [(g, _how_many(g.total, shape.vec)) for g in groups]
        best = None
        for g, most in fit:
            most = min(most, left)
            for copies in range(most, max(0, most - _VARIANTS), -1):
                pattern, node_value = _fill_pattern(g.total, items, first, copies)
                full, tail = divmod(left, copies)
                cover = [(g.total, copies, full)]
                cost = full * g.cost
                if tail:  # the last copies go on the fewest nodes of whichever group is cheapest
                    tail_cost, _, _, h, k = min((-(-tail // k) * h.cost, -k, h.name, h, k) for h, k in fit)
                    nodes = -(-tail // k)
                    cover.append((h.total, -(-tail // nodes), nodes))
                    cost += tail_cost
                served = _cover_value(items, first, left, cover)
                score = (cost / served, -node_value, g.name, -copies)
                if best is None or score < best[0]:
                    best = (score, g, pattern)
        _, g, pattern = best
        n = min([ctx.room(g)] + [items[j][1] // take for j, take in pattern])
        ctx.open_nodes(g, n, [(items[j][0], take) for j, take in pattern], tag,
                       opened_for or (tag, shape.key), view=view)
        for j, take in pattern:
            items[j][1] -= n * take


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


def _cover_value(items: list[list], first: int, copies: int,
                 nodes: list[tuple[Vector, int, int]]) -> float:
    """Value served by putting ``copies`` of ``items[first]`` on ``nodes`` -- (capacity, copies
    per node, how many such nodes) -- with the gaps filled by the other shapes left. The gaps
    are pooled (a shape counts only where one copy fits a single gap), so a filler that runs out
    is replaced by the next one, as it will be by the patterns opened after this one."""
    shape = items[first][0]
    gaps = []
    pooled = [0] * len(nodes[0][0])
    for total, per_node, n in nodes:
        gap = list(total)
        for i, v in shape.vec:
            gap[i] -= v * per_node
        gaps.append((gap, n))
        pooled = [p + x * n for p, x in zip(pooled, gap)]
    value = copies * shape.value
    for j, (other, units) in enumerate(items):
        if units <= 0 or j == first:
            continue
        room = sum(_how_many(gap, other.vec) * n for gap, n in gaps)
        if not room:
            continue
        take = min(units, room, _how_many(pooled, other.vec))
        for i, v in other.vec:
            pooled[i] -= v * take
        value += take * other.value
    return value


def _consolidate(ctx: _Ctx) -> None:
    """Drop a launched node when all the tasks on it fit in what other launched nodes have left.

    Pattern-by-pattern packing can open a node for a shape that a node opened later, for a shape
    only that later group can hold, could have taken too. One pass over the launched bins, least
    loaded first, undoes that. Only launched nodes can receive: every shape still pending after
    ``_fit_existing`` is one that no existing node has room for. A cheap necessary test (the
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


def _scale_down_idle(ctx: _Ctx) -> None:
    """Release running nodes idle past their group's timeout that hold nothing of this plan
    (no pending demand would go on them, no request_resources bundle needs them) and are not
    needed for min_nodes; longest idle first. Starting and draining nodes are never touched."""
    needed = {node for pool in (ctx.free, ctx.held) for b in pool.bins.values()
              if b.load and b.origin != "new" for node in b.nodes}
    for n in sorted((n for n in ctx.nodes if ctx.is_spare(n) and n.node_id not in needed),
                    key=_termination_order):
        g = ctx.groups[n.group]
        if g.alive <= g.spec.min_nodes:
            continue
        g.alive -= 1
        ctx.terminate.append(Termination(n.node_id, n.group, (
            f"idle for {_format_seconds(n.idle_s)} s (timeout {_format_seconds(g.spec.idle_timeout_s)} s)")))


# ---------------------------------------------------------------------------------------------
# The reply: statuses and reasons are read off the final bins, so they always agree with what
# was placed where.
# ---------------------------------------------------------------------------------------------


def _reply(ctx: _Ctx) -> PlanReply:
    launch = {g.name: g.launched for g in ctx.groups.values() if g.launched > 0}
    return PlanReply(launch, tuple(ctx.terminate), _pending(ctx),
                     {name: _launch_reason(ctx, name) for name in launch})


class _Served:
    """How the placed units of one pending (kind, ident) are spread over nodes."""

    def __init__(self) -> None:
        self.on_running = 0  # units on free capacity of running nodes
        self.on_starting = 0  # units on starting nodes or on nodes this plan launches
        self.nodes_starting: Counter[str] = Counter()  # group -> those nodes


def _pending(ctx: _Ctx) -> tuple[PendingStatus, ...]:
    served: dict[tuple, _Served] = defaultdict(_Served)
    gangs: dict[str, dict[int, _Bin]] = defaultdict(dict)  # batch tag -> bins holding it
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
        s = served.get((kind, ident), _Served())
        # request_resources bundles held by running nodes are met, not pending.
        waiting = s.on_starting + (s.on_running if kind != "request_resources" else 0)
        if waiting:
            parts = [f"{_plural(n, g + ' node')} starting" for g, n in sorted(s.nodes_starting.items())]
            if s.on_running and kind != "request_resources":
                parts.append("fits on free capacity of running nodes")
            out.append(PendingStatus(kind, shape, waiting, "waiting", "; ".join(parts), bundles))  # type: ignore[arg-type]
        for (status, reason), n in sorted(ctx.unplaced[(kind, ident)].items()):
            out.append(PendingStatus(kind, shape, n, status, reason, bundles))  # type: ignore[arg-type]
    kinds = {"task": 0, "placement_group": 1, "request_resources": 2}
    statuses = {"waiting": 0, "capped": 1, "infeasible": 2}
    out.sort(key=lambda p: (kinds[p.kind], _shape_key(p.shape),
                            tuple(_shape_key(b) for b in p.bundles), statuses[p.status], p.reason))
    return tuple(out)


def _launch_reason(ctx: _Ctx, group: str) -> str:
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
    gangs: Mapping[str, tuple[str, ...]]  # batch tag ("pg:N") -> ids of the gangs it placed


def _assign(request: PlanRequest) -> _Assignment:
    """Run the planner; return its reply and where every unit of demand was put. O(nodes), so
    for tests and bench only. Gang loads are tagged "pg:N" (STRICT_SPREAD: "pg:N#<bundle>"), N
    a batch of identical gangs; a STRICT_PACK gang shows as one bundle, the sum of its own."""
    ctx = _schedule(request)
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
        _NodeLoad(node, group, origin, tuple(demand[node]), tuple(held[node]), for_min)
        for node, (group, origin, for_min) in sorted(info.items())
    )
    gangs = {tag: tuple(ids) for tag, (_, ids) in ctx.batches.items()}
    return _Assignment(_reply(ctx), nodes, gangs)
