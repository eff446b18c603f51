"""How front-ends in a kernel reach the clusters: the Jupyter server's REST API when the kernel
runs under a server with the extension, else an in-process manager.

Both clients return snapshots (the DESIGN.md JSON) and report progress from the caller's own
thread, so a notebook's status line is drawn on the kernel's main thread. Under a server, the
server owns the clusters, so they survive kernel restarts and show up in the sidebar.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol
from urllib.parse import quote

from .backends.base import BackendError, ClusterNotFound
from .blocking import BlockingManager

Snapshot = dict[str, Any]
Request = Mapping[str, Any]  # a POST clusters body: a name and what differs from the defaults
Progress = Callable[[str, int, int], None]
SERVER_URL_ENV = "RAYKUBE_SERVER_URL"  # set by the server extension for the kernels it starts
SERVER_TOKEN_ENV = "RAYKUBE_SERVER_TOKEN"


class ClientError(BackendError):
    """The request was refused; the message says why (it names the field for bad input)."""


class ClusterClient(Protocol):
    owner: str
    backend_name: str
    token: str

    def start(self, request: Request, progress: Progress) -> Snapshot: ...
    def status(self, name: str) -> Snapshot: ...
    def scale(self, name: str, group: str, low: int, high: int, progress: Progress,
              wait: bool = True) -> Snapshot: ...
    def stop(self, name: str) -> None: ...
    def list(self) -> list[Snapshot]: ...
    def attach(self, name: str) -> Snapshot: ...
    def events(self, name: str, after: int, wait_s: int) -> list[dict[str, Any]]: ...
    def node_log(self, name: str, node: str, filename: str, lines: int) -> str: ...


class LocalClient:
    """Runs the manager in this process (plain IPython, scripts, `jupyter execute`)."""

    def __init__(self, blocking: BlockingManager) -> None:
        self.blocking = blocking
        self.manager = blocking.manager
        self.owner = self.manager.owner
        self.backend_name = self.manager.backend.name
        self.token = self.manager.token

    def start(self, request: Request, progress: Progress) -> Snapshot:
        """Start from a request body; without a name, the manager picks the next free one."""
        return self._watch(lambda p: self.manager.create(request, progress=p), progress).snapshot()

    def status(self, name: str) -> Snapshot:
        cluster = self.blocking.call(self.manager.get, name)
        return self.blocking.call(self.manager.refresh, cluster).snapshot()

    def scale(self, name: str, group: str, low: int, high: int, progress: Progress,
              wait: bool = True) -> Snapshot:
        """Set a group's range; with `wait` and a pinned size (low == high), wait for it."""
        cluster = self._watch(lambda p: self.manager.scale(name, group, low, high, wait=wait and low == high,
                                                            progress=p), progress)
        return cluster.snapshot()

    def stop(self, name: str) -> None:
        self.blocking.call(self.manager.stop, name)

    def list(self) -> list[Snapshot]:
        return [c.snapshot() for c in self.blocking.call(self.manager.list)]

    def attach(self, name: str) -> Snapshot:
        return self.blocking.call(self.manager.attach, name).snapshot()

    def events(self, name: str, after: int, wait_s: int) -> list[dict[str, Any]]:
        """The cluster's events newer than `after`, waiting up to `wait_s` for one."""
        cluster = self.blocking.call(self.manager.get, name)
        return [e.to_json() for e in self.blocking.call(cluster.events.wait_after, after, wait_s)]

    def node_log(self, name: str, node: str, filename: str, lines: int) -> str:
        """The last `lines` of one of a node's Ray log files (what its process printed, before
        it is in Ray)."""
        from .node_logs import read_node_log  # tornado's HTTP client: only when asked

        cluster = self.blocking.call(self.manager.running, name, "its nodes' logs need it running")
        return str(self.blocking.call(read_node_log, self.manager, cluster, node, filename, lines)["logs"])

    def _watch(self, start: Callable[[Progress], Any], progress: Progress) -> Any:
        """Run a manager coroutine on its loop; relay its progress on this thread; Ctrl-C cancels."""
        latest: list[tuple[str, int, int]] = [("", 0, 1)]
        future: Future[Any] = self.blocking.portal.start_task_soon(
            lambda: start(lambda s, d, t: latest.__setitem__(0, (s, d, t))))
        try:
            while True:
                try:
                    return future.result(timeout=0.5)
                except FutureTimeout:
                    progress(*latest[0])
        except KeyboardInterrupt:
            future.cancel()
            raise


class RestSession:
    """The server extension's REST API, authenticated with the server's token: one session and
    one error mapping (404: ClusterNotFound, other 4xx/5xx: ClientError with the server's
    message) for every kernel-side client."""

    def __init__(self, base_url: str, token: str, *, poll_s: float = 0.5) -> None:
        import requests  # a dependency of ray[default]

        self.base = base_url.rstrip("/") + "/raykube/api"
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"token {token}"
        self.poll_s = poll_s

    def _request(self, method: str, path: str, body: Any = None, *, data: bytes | None = None,
                 timeout: float = 60) -> Any:
        response = self.session.request(method, self.base + path, json=body if data is None else None,
                                        data=data, timeout=timeout)
        if response.status_code == 404:
            raise ClusterNotFound(_message(response))
        if response.status_code >= 400:
            raise ClientError(_message(response))
        return response.json() if response.content else None


class ServerClient(RestSession):
    """The clusters, through the server extension's REST API."""

    def __init__(self, base_url: str, token: str, *, poll_s: float = 0.5) -> None:
        super().__init__(base_url, token, poll_s=poll_s)
        info = self._request("GET", "")
        self.owner = info["owner"]
        self.backend_name = info["backend"]
        self.token = os.environ.get("RAY_AUTH_TOKEN", "")  # inherited from the server

    def start(self, request: Request, progress: Progress) -> Snapshot:
        snap = self._request("POST", "/clusters", dict(request))
        while snap["state"] == "starting":
            progress(snap.get("step", ""), 0, 1)
            time.sleep(self.poll_s)
            snap = self.status(snap["name"])
        if snap["state"] != "running":
            raise ClientError(snap.get("error") or f"cluster {snap['name']!r} is {snap['state']}")
        return snap

    def status(self, name: str) -> Snapshot:
        return self._request("GET", f"/clusters/{quote(name)}")

    def scale(self, name: str, group: str, low: int, high: int, progress: Progress,
              wait: bool = True) -> Snapshot:
        snap = self._request("PATCH", f"/clusters/{quote(name)}", {"groups": {group: {"min": low, "max": high}}})
        while wait and low == high and not _settled(snap, group):
            progress(_group_line(snap, group), 0, 1)
            time.sleep(self.poll_s)
            snap = self.status(name)
        return snap

    def stop(self, name: str) -> None:
        self._request("DELETE", f"/clusters/{quote(name)}")

    def list(self) -> list[Snapshot]:
        return self._request("GET", "/clusters")["clusters"]

    def attach(self, name: str) -> Snapshot:
        return self.status(name)

    def events(self, name: str, after: int, wait_s: int) -> list[dict[str, Any]]:
        """The cluster's events newer than `after`; the server holds the answer up to `wait_s`."""
        path = f"/clusters/{quote(name)}/events?after={after}&wait={wait_s}"
        return self._request("GET", path, timeout=wait_s + 30)["events"]

    def node_log(self, name: str, node: str, filename: str, lines: int) -> str:
        path = f"/clusters/{quote(name)}/nodes/{quote(node, safe='')}/logs?file={quote(filename)}&lines={lines}"
        return str(self._request("GET", path)["logs"])


def default_client() -> ClusterClient:
    """The server's API when this kernel was started by a server with the extension."""
    url = os.environ.get(SERVER_URL_ENV)
    if url:
        return ServerClient(url, os.environ.get(SERVER_TOKEN_ENV, ""))
    from .blocking import shared_manager

    return LocalClient(shared_manager())


def _message(response: Any) -> str:
    try:
        return str(response.json()["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def _settled(snap: Snapshot, group: str) -> bool:
    g = next(x for x in snap["groups"] if x["name"] == group)
    return g["min"] <= g["nodes"] <= g["max"] and not g["starting"] and not g.get("draining")


def _group_line(snap: Snapshot, group: str) -> str:
    g = next(x for x in snap["groups"] if x["name"] == group)
    return f"{group}: {g['nodes']} running, {g['starting']} starting"
