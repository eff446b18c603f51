"""jupyter_raykube: a per-user Ray cluster, one command away from a notebook."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext jupyter_raykube` registers the `%raycluster` magic."""
    from .magics import RayClusterMagics

    ipython.register_magics(RayClusterMagics(ipython))
