"""Connect this process's Ray driver (`ray.init`) to a cluster."""

from __future__ import annotations

from .auth import use_token


def connect_driver(address: str, token: str) -> None:
    """`ray.init(address=...)` to the cluster, replacing a connection to another cluster."""
    import ray  # heavy: import late

    if not address:
        raise RuntimeError("the cluster has no address yet")
    if ray.is_initialized():
        if ray.get_runtime_context().gcs_address == address:
            return
        ray.shutdown()
    if token:
        use_token(token)
    ray.init(address=address, logging_level="WARNING")  # the widget shows the dashboard link


def disconnect_driver() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
