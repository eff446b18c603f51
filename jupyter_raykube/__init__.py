"""jupyter_raykube: a per-user Ray cluster, one command away from a notebook."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Found by `jupyter server` through jupyter-config/ (auto-enabled on install)."""
    from .server import RayKube

    return [{"module": "jupyter_raykube.server", "app": RayKube}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-raykube"}]


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext jupyter_raykube` registers the `%raycluster` and `%rayjob` magics."""
    from .job_magics import RayJobMagics
    from .magics import RayClusterMagics

    ipython.register_magics(RayClusterMagics(ipython))
    ipython.register_magics(RayJobMagics(ipython))
