"""Connect this process's Ray driver (`ray.init`) to a cluster."""

from __future__ import annotations

import fcntl
import platform
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .auth import use_token
from .backends.base import BackendError

ATTACH_HINT = ("`%raycluster attach NAME` connects a kernel with its owner's token; elsewhere set "
               "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the token in "
               "<jupyter runtime dir>/raykube/auth_token")


class RayAuthError(BackendError, ConnectionError):
    """The cluster refused this process: it has no Ray token, or not the cluster's. A
    BackendError, so the magic shows it as a one-line message."""


# How Ray Client says the server it starts for one connection died at start: the proxy either
# notices (its own message), or trips over the dead process (a psutil ZombieProcess in Init).
_SPECIFIC_SERVER_DIED = ("Starting Ray client server failed", "ZombieProcess")
_RAY_CLIENT_ATTEMPTS = 3
_connected_to = ""  # under Ray Client the GCS address is not available from the runtime context


def connect_driver(address: str, token: str, *, client_address: str = "", image: str = "") -> None:
    """`ray.init` to the cluster, replacing a connection to another cluster.

    With `client_address` (Kubernetes: a notebook Pod is not a Ray node, and
    `ray.init(address=GCS)` needs a raylet on the same host) Ray Client is used. With `image`,
    a Ray/Python mismatch between this kernel and the cluster is refused first, with a message
    saying both versions and how to fix it."""
    import ray  # heavy: import late

    global _connected_to
    if not address:
        raise RuntimeError("the cluster has no address yet")
    if image:
        from .versions import check_ray_versions

        check_ray_versions(image, ray_version=ray.__version__,
                           python_version=platform.python_version().rsplit(".", 1)[0])
    target = f"ray://{client_address}" if client_address else address
    if ray.is_initialized():
        if _connected_to == target:
            return
        ray.shutdown()
    if not token:
        raise RayAuthError(f"authentication failed: this process has no Ray token for the cluster "
                           f"at {target}. {ATTACH_HINT}.")
    use_token(token)
    if client_address:
        with _one_ray_client_start():
            _init_ray_client(target)
    else:
        check_token(address)
        ray.init(address=target, logging_level="WARNING")  # the widget shows the dashboard link
    _connected_to = target


def _init_ray_client(target: str) -> None:
    """`ray.init("ray://...")`, tried again when the proxy's server for this connection died at
    start. Now and then it does (seen on the first port, 23000, of a fresh cluster, more often on
    a busy machine); the proxy gives the next try the next port."""
    import ray

    for attempt in range(1, _RAY_CLIENT_ATTEMPTS + 1):
        try:
            ray.init(address=target, logging_level="WARNING")
            return
        except ConnectionAbortedError as err:
            if attempt == _RAY_CLIENT_ATTEMPTS or not any(sign in str(err) for sign in _SPECIFIC_SERVER_DIED):
                raise


@contextmanager
def _one_ray_client_start() -> Iterator[None]:
    """Hold a per-user lock while a Ray Client connection starts. Ray's client proxy gives each
    connection a server on the first port from 23000 that is free at that moment (no setting
    changes the range), so two clusters' proxies starting one at once can pick the same port:
    one start fails, or a driver reaches the other cluster. `ray.init` returns once that server
    listens, so one start at a time never collides."""
    from jupyter_core.paths import jupyter_runtime_dir

    path = Path(jupyter_runtime_dir()) / "raykube" / "ray-client.lock"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_token(address: str) -> None:
    """Ask the GCS at `address` once, with this process's token, and raise `RayAuthError` if it
    refuses. `ray.init` retries a refused token for about 20 s and then reports a generic
    connection error; this answers in about a second. A GCS that does not answer is left to
    `ray.init` to report."""
    from ray._raylet import InnerGcsClient
    from ray.exceptions import AuthenticationError, RpcError

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
        InnerGcsClient.standalone(address, None, 5000)
    except AuthenticationError:
        raise RayAuthError(f"authentication failed: the Ray cluster at {address} refused this "
                           f"process's Ray token. {ATTACH_HINT}.") from None
    except (OSError, ValueError, RpcError):
        return


def disconnect_driver() -> None:
    import ray

    from .driver_events import stop_following

    global _connected_to
    stop_following()
    if ray.is_initialized():
        ray.shutdown()
    _connected_to = ""
