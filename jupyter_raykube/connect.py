"""Connect this process's Ray driver (`ray.init`) to a cluster."""

from __future__ import annotations

from .auth import use_token
from .backends.base import ClusterHandle


def connect_driver(handle: ClusterHandle | None, token: str) -> None:
    """`ray.init(address=...)` to the cluster, replacing a connection to another cluster."""
    import ray  # heavy: import late

    if handle is None:
        raise RuntimeError("the cluster has no address yet")
    if ray.is_initialized():
        if ray.get_runtime_context().gcs_address == handle.address:
            return
        ray.shutdown()
    use_token(token)
    ray.init(address=handle.address)
