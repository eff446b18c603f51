"""Resource arithmetic. Amounts are integers in Ray's fixed-point unit (1e-4), so "how many
copies fit" is an exact integer division and nothing drifts through float rounding."""

from __future__ import annotations

from .request import Resources

UNIT = 10_000
UNBOUNDED = 1 << 62  # copies of an empty shape that "fit"; also "no max_workers"
Vector = tuple[int, ...]  # one amount per resource name, in Ctx.names order
Sparse = tuple[tuple[int, int], ...]  # (resource index, amount) for the non-zero entries
ShapeKey = tuple[tuple[str, float], ...]  # canonical, hashable form of a Resources mapping


def shape_key(resources: Resources) -> ShapeKey:
    return tuple(sorted((k, float(v)) for k, v in resources.items() if v > 0))


def how_many(avail: Vector, shape: Sparse) -> int:
    """How many copies of ``shape`` fit in ``avail``: O(resources), not O(copies)."""
    n = UNBOUNDED
    for i, v in shape:
        q = avail[i] // v
        if q < n:
            if q == 0:
                return 0
            n = q
    return n


def fits(avail: Vector, shape: Sparse) -> bool:
    return all(avail[i] >= v for i, v in shape)


def subtract(avail: Vector, shape: Sparse, times: int) -> Vector:
    out = list(avail)
    for i, v in shape:
        out[i] -= v * times
    return tuple(out)
