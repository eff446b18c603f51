"""Shapes and counts as the sentences in reasons and events write them (numbers, bytes and
durations by `jupyter_raykube.formatting`, as every front-end shows them)."""

from __future__ import annotations

from ...formatting import nbytes, number
from .labels import is_label_resource
from .request import Resources


def format_shape(shape: Resources) -> str:
    """``{CPU: 2, GPU: 1, memory: 4 GiB}``, with the front-ends' number and byte rules."""
    order = {"CPU": 0, "GPU": 1, "memory": 2, "object_store_memory": 3}
    items = sorted(shape.items(), key=lambda kv: (is_label_resource(kv[0]), order.get(kv[0], 4), kv[0]))
    return "{" + ", ".join(k if is_label_resource(k) else f"{k}: {_format_amount(k, v)}" for k, v in items) + "}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _format_amount(name: str, amount: float) -> str:
    return nbytes(amount) if name.endswith("memory") else number(amount, places=4)
