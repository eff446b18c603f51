"""Shapes, counts and durations as the sentences in reasons and events write them."""

from __future__ import annotations

from .labels import is_label_resource
from .request import Resources


def format_shape(shape: Resources) -> str:
    """``{CPU: 2, GPU: 1, memory: 4 GB}``: integers without ".0", byte amounts in human units."""
    order = {"CPU": 0, "GPU": 1, "memory": 2, "object_store_memory": 3}
    items = sorted(shape.items(), key=lambda kv: (is_label_resource(kv[0]), order.get(kv[0], 4), kv[0]))
    return "{" + ", ".join(k if is_label_resource(k) else f"{k}: {_format_amount(k, v)}" for k, v in items) + "}"


def plural(n: int, word: str) -> str:
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


def format_seconds(s: float) -> str:
    return _format_number(round(s, 1))
