"""Is a new cluster up yet? The waits a start (or a pinned scale) goes through, and how a
failure is told: one line for the user (no traceback, no server path), the details to the log."""

from __future__ import annotations

import logging
import re
from typing import Any

import anyio

from .autoscaler.demand import GcsReader
from .cluster import Cluster, Progress
from .errors import StartError


async def wait_for_head(cluster: Cluster, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """Poll the GCS until the head is an ALIVE Ray node; fail fast if its process died."""
    assert cluster.handle is not None
    backend = cluster.backend
    head_name = next(n.name for n in await backend.list_nodes(cluster.handle) if n.is_head)
    reader: GcsReader | None = None
    while True:
        nodes = {n.name: n for n in await backend.list_nodes(cluster.handle)}
        head = nodes.get(head_name)
        if head is not None and head.failed and head.phase != "exited":  # no node, no image: nothing to log
            raise StartError(f"the head node cannot start: {head.message}")
        if head is None or head.phase == "exited":
            logs = await backend.logs(cluster.handle, head_name, tail=40)
            log.warning("head node of %s stopped while starting; its last lines:\n%s", cluster.name, logs)
            raise StartError(f"the head node stopped while starting ({head.message if head else 'gone'})"
                             f"{telling_line(logs)}")
        try:
            if reader is None:
                reader = await anyio.to_thread.run_sync(GcsReader, cluster.handle.address)
            state = await anyio.to_thread.run_sync(reader.read)
            if any(n.instance_id == head_name and n.status != "dead" for n in state.nodes):
                if not backend.drivers_use_ray_client or await _accepts(cluster.handle.client_address):
                    return
        except Exception as exc:  # the GCS is not listening yet  # noqa: BLE001
            log.debug("head of %s not ready: %s", cluster.name, exc)
        await anyio.sleep(0.2)


async def _accepts(address: str) -> bool:
    """Does the head's Ray Client server (`host:port`) accept connections yet? It starts
    seconds after the GCS, and a notebook connecting to it before then waits out Ray Client's
    own timeouts and warnings ("Ray Client connection timed out")."""
    host, _, port = address.rpartition(":")
    try:
        with anyio.fail_after(1.0):
            stream = await anyio.connect_tcp(host.strip("[]"), int(port))
    except (OSError, TimeoutError):
        return False
    await stream.aclose()
    return True

async def wait_for_groups(cluster: Cluster) -> None:
    for group in cluster.spec.groups:
        if group.min:
            await wait_for_group(cluster, group.name, None)

async def wait_for_group(cluster: Cluster, group: str, progress: Progress | None) -> None:
    """Until the group's running nodes are within [min, max] and none is starting/draining."""
    while True:
        spec_group = cluster.spec.group(group)
        obs = cluster.observation
        if cluster.state in ("stopped", "failed"):
            raise StartError(f"cluster {cluster.name!r} is {cluster.state}")
        if obs is not None:
            mine = [n for n in obs.nodes if n.group == group]
            running = sum(1 for n in mine if n.state == "running")
            busy = sum(1 for n in mine if n.state in ("starting", "draining"))
            if progress:
                progress(f"{group}: {running} running, {busy} changing", running,
                         max(spec_group.min, 1))
            if spec_group.min <= running <= spec_group.max and not busy:
                return
        await anyio.sleep(0.2)



_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+-]+){2,}/?")


def one_line(exc: BaseException) -> str:
    """What a user sees of an error: its first line, without server paths (the details, a
    traceback or a node's log, go to the server log)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = _PATH.sub("<path>", lines[0]) if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"


def telling_line(logs: str) -> str:
    """The log line that says why a node stopped (Ray's last error line), as ": <line>"."""
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    chosen = (errors or lines)[-1:]
    return f": {chosen[0]}" if chosen else ""
