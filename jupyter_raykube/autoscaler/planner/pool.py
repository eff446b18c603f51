"""The planner's internal model: canonical shapes, groups with their counts, and bins of
interchangeable nodes in a pool that can roll back a gang placed all-or-nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from .request import NodeGroup
from .vectors import ShapeKey, Sparse, Vector, how_many, subtract


@dataclass(frozen=True)
class Shape:
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
class Group:
    """A node group with its capacity vector, price, and how many nodes it has and gets."""

    spec: NodeGroup
    total: Vector
    cost: float
    accelerator: bool
    alive: int = 0  # starting + running nodes, minus those this plan terminates
    launched: int = 0
    ready: int = 0  # idle nodes this plan leaves without work: the group's warm pool

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def room(self) -> int:
        return self.spec.max_nodes - self.alive - self.launched


class Bin(NamedTuple):
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
    opened_for: tuple = ()  # launched nodes: ("min",), ("warm",), ("task", shape), ("rr", shape), ("pg", tag)


class Pool:
    """A set of bins with an undo journal, so a gang can be placed all-or-nothing."""

    def __init__(self) -> None:
        self.bins: dict[int, Bin] = {}
        self._next = 0
        self._journal: list[tuple[int, Bin | None]] | None = None

    def add(self, b: Bin) -> None:
        bid, self._next = self._next, self._next + 1
        self._set(bid, b)

    def _set(self, bid: int, b: Bin | None) -> None:
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

    def find_new(self, group: str, seq: int) -> Bin:
        """The bin that holds node ``seq`` this plan launches in ``group``."""
        return next(b for b in self.bins.values() if b.origin == "new" and b.group == group and seq in b.nodes)

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

    def _candidates(self, shape: Shape, tag: str, avoid: str | None, new_only: bool,
                    ) -> list[tuple[int, int]]:
        """(bin id, copies per node) that fit ``shape``: GPU nodes last for CPU-only shapes,
        spare (releasable) nodes last, tightest fit first (best-fit decreasing). Bins holding a
        load whose tag starts with ``avoid`` (other than ``tag`` itself) are skipped."""
        found = []
        for bid, b in self.bins.items():
            if new_only and b.origin != "new":
                continue
            k = how_many(b.avail, shape.vec)
            if k and not (avoid and any(t != tag and t.startswith(avoid) for t, _, _ in b.load)):
                found.append((b.accelerator and not shape.accelerator, b.spare, k, bid))
        found.sort()
        return [(bid, k) for _, _, k, bid in found]

    def place(self, shape: Shape, count: int, tag: str, *, avoid: str | None = None,
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

    def _split(self, bid: int, takes: list[tuple[int, int]], shape: Shape, tag: str) -> None:
        """The first nodes of bin ``bid`` take (nodes, copies each) in turn; the rest stay."""
        b = self.bins[bid]
        start = 0
        for n, copies in takes:
            if n and copies:
                self.add(b._replace(
                    nodes=b.nodes[start:start + n],
                    avail=subtract(b.avail, shape.vec, copies),
                    load=b.load + ((tag, shape.key, copies),),
                ))
                start += n
        rest = b.nodes[start:]
        self._set(bid, b._replace(nodes=rest) if rest else None)


Unplaced = dict[tuple[str, str], int]  # (status, reason) -> units
