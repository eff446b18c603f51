"""The last lines of a node's Ray logs (raylet, worker stdout/stderr), for the sidebar, REST and
the event log. A live node is read through Ray's own log API on the dashboard
(`/api/v0/logs`, as `ray logs` does), on both backends. A node that failed cannot answer any
more, so before the reconciler removes it, `failure_tail` reads what the backend still has: the
node's Ray log files on this machine (local backend) or the Pod's log (`pods/log`), and the
last lines go into the event log, where they outlive the process or Pod."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .backends.base import Backend, ClusterHandle
from .dashboard_api import RayDashboard, error_line
from .errors import BackendError, ClusterNotFound, SpecError

if TYPE_CHECKING:
    from .cluster import Cluster
    from .manager import ClusterManager

LOG_FILE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")  # a file name in Ray's logs dir, no path
MAX_LINES = 5000
FAILURE_LINES = 15  # per file, in a failed node's event
_TAIL_WINDOW_BYTES = 64 * 1024  # what a failure report reads of each file: its last lines are in there


def check_lines(raw: str | None, default: int = 200) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LINES:
        raise SpecError("lines", raw, f"a whole number from 1 to {MAX_LINES}")
    return int(raw)


def check_log_file(name: str) -> str:
    if not LOG_FILE.match(name) or name in (".", ".."):
        raise SpecError("file", name, "a log file name of the node, e.g. raylet.out or worker-<id>.out "
                                      "(GET .../logs without file lists them)")
    return name


class NodeNotFound(ClusterNotFound):
    """The cluster has no node of that name (REST: 404)."""


async def read_node_log(manager: ClusterManager, cluster: Cluster, node: str, filename: str | None,
                        lines: int) -> dict[str, Any]:
    """A node's log files (no `filename`), or a file's last `lines`; a node not in Ray (yet)
    answers with what its process or Pod printed. What REST, the widget and the sidebar show."""
    cluster = await manager.refresh(cluster)
    assert cluster.handle is not None
    nodes = {n["name"]: n for n in cluster.snapshot()["nodes"]}
    if node not in nodes:
        raise NodeNotFound(f"cluster {cluster.name!r} has no node {node[:80]!r}; it has: {', '.join(sorted(nodes))}")
    ray_id = nodes[node].get("id") or ""
    if not ray_id:
        return {"node": node, "file": None, "logs": await manager.backend.logs(cluster.handle, node, tail=lines)}
    logs = RayLogs(cluster.handle.dashboard_address, manager.token)
    if filename is None:
        return {"node": node, "files": await logs.files(ray_id)}
    return {"node": node, "file": filename, "logs": await logs.tail(ray_id, check_log_file(filename), lines)}


class RayLogs:
    """Ray's log API of one cluster (its dashboard address and Ray token)."""

    def __init__(self, dashboard_address: str, token: str) -> None:
        self.dashboard = RayDashboard(dashboard_address, token)

    async def files(self, node_id: str) -> dict[str, list[str]]:
        """The node's log files by Ray's category (raylet, worker_out, worker_err, ...)."""
        answer = json.loads(await self._get("/api/v0/logs", {"node_id": node_id, "glob": "*"}))
        return dict(answer.get("data", {}).get("result", {}))

    async def tail(self, node_id: str, filename: str, lines: int) -> str:
        params = {"node_id": node_id, "filename": check_log_file(filename), "lines": lines}
        return (await self._get("/api/v0/logs/file", params)).decode(errors="replace")

    async def _get(self, path: str, params: dict[str, object]) -> bytes:
        response = await self.dashboard.fetch("GET", path, params=params, timeout_s=30)
        if response.code >= 400:
            text = error_line(response.body)
            said = (response.body or b"").decode(errors="replace").lower()
            if response.code in (400, 404) or "not found" in said:  # Ray 2.60 says so with a 500
                raise SpecError("file", params.get("filename", ""), "a log file this node has (GET .../logs "
                                                                    "without file lists them)")
            raise BackendError(f"Ray's log API answered {response.code}: {text}")
        return response.body or b""


def local_log_dir(handle: ClusterHandle, node_name: str) -> Path | None:
    """Ray's logs dir of a local-backend node: its own temp dir (local.py gives each node
    `<cluster temp dir>/<node suffix>`), newest session."""
    temp_dir = handle.details.get("temp_dir")
    if handle.backend != "local" or not temp_dir:
        return None
    sessions = sorted(Path(temp_dir, node_name.rsplit("-", 1)[-1]).glob("session_2*"), key=os.path.getmtime)
    return sessions[-1] / "logs" if sessions else None


def _newest_tail(log_dir: Path, patterns: tuple[str, ...], lines: int) -> list[str]:
    parts: list[str] = []
    for pattern in patterns:
        files = [f for f in log_dir.glob(pattern) if f.stat().st_size > 0]
        if files:
            newest = max(files, key=os.path.getmtime)
            parts.append(f"--- {newest.name} ---\n" + "\n".join(last_lines(newest, lines)))
    return parts


def last_lines(path: Path, lines: int, window: int = _TAIL_WINDOW_BYTES) -> list[str]:
    """The last `lines` lines of a log that may be gigabytes: only its last `window` bytes are read."""
    with path.open("rb") as log:
        size = log.seek(0, os.SEEK_END)
        log.seek(max(0, size - window))
        chunk = log.read(window)
    text = chunk.decode(errors="replace").splitlines()
    if size > window and text:
        text = text[1:]  # the first line of the window is cut
    return text[-lines:]


async def failure_tail(backend: Backend, handle: ClusterHandle, node_name: str,
                       lines: int = FAILURE_LINES) -> str:
    """What a failed node last wrote, read before it is removed; never raises (a failure
    report must not stop the removal)."""
    parts: list[str] = []
    try:
        log_dir = local_log_dir(handle, node_name)
        if log_dir is not None and log_dir.is_dir():
            parts += await anyio.to_thread.run_sync(
                _newest_tail, log_dir, ("worker-*.out", "worker-*.err", "raylet.out"), lines)
        own = (await backend.logs(handle, node_name, tail=lines)).strip()
        if own:
            parts.append(f"--- {node_name} ---\n{own}")
    except Exception as exc:  # noqa: BLE001 - the removal goes on; say what could not be read
        parts.append(f"(its logs could not be read: {exc})")
    return "\n".join(parts)
