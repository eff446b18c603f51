"""`(raykube)` lines in a kernel's output: the autoscaler's decisions for the cluster the kernel's
`ray` is connected to, printed the way Ray prints its own autoscaler's `(autoscaler)` lines, so a
cell waiting in `ray.get` says what is being done for it ("(raykube) launched 3 cpu nodes for 6
pending {CPU: 1} tasks").

The lines follow the cluster's event log through the same client as the magic (the server's
REST API, or the in-process manager): the server holds each request until a decision is made,
so nothing polls. Like Ray's driver log lines, they appear in the cell that is running.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, TextIO

from .client import ClusterClient
from .errors import ClusterNotFound

ECHO_ENV = "RAYKUBE_DRIVER_EVENTS"  # "0": no (raykube) lines (as RAY_SCHEDULER_EVENTS=0 is for Ray's)
ECHOED_KINDS = frozenset({"scale_up", "scale_down", "node_failed", "backoff"})  # not "stopped": the
# front-end that stopped the cluster says so itself
WAIT_S = 30  # how long the server may hold one request
RETRY_S = 5.0  # after a failed request (a server restarting)
_CYAN, _RESET = "\x1b[36m", "\x1b[0m"  # Ray's colour for its autoscaler's lines


def echo_enabled() -> bool:
    return os.environ.get(ECHO_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def format_line(event: dict[str, Any]) -> str:
    colour = os.environ.get("RAY_COLOR_PREFIX") != "0"
    prefix = f"{_CYAN}(raykube){_RESET}" if colour else "(raykube)"
    return f"{prefix} {event['message']}"


class DriverEventEcho:
    """Follows one cluster's events on a daemon thread and prints the autoscaler's decisions."""

    def __init__(self, client: ClusterClient, name: str, out: TextIO | None = None) -> None:
        self.client = client
        self.name = name
        self._out = out
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"raykube-events-{name}", daemon=True)

    def start(self) -> DriverEventEcho:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Print nothing more; the thread ends when its current request returns."""
        self._stopped.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()

    def _run(self) -> None:
        after = self._newest_id()
        while after is not None and not self._stopped.is_set():
            try:
                events = self.client.events(self.name, after, WAIT_S)
            except ClusterNotFound:
                return
            except Exception:  # the server is restarting or unreachable: try again later
                self._stopped.wait(RETRY_S)
                continue
            if self._stopped.is_set() or not _driver_connected():
                return
            for event in events:
                if event["kind"] in ECHOED_KINDS:
                    self._print(format_line(event))
            if events:
                after = int(events[-1]["id"])  # the log's own count, even if it restarted lower
            if any(e["kind"] == "stopped" for e in events):
                return

    def _newest_id(self) -> int | None:
        """Start after what has happened so far: only new decisions are news to the driver."""
        try:
            events = self.client.events(self.name, 0, 0)
        except Exception:
            return None
        return int(events[-1]["id"]) if events else 0

    def _print(self, line: str) -> None:
        out = self._out or sys.stdout
        print(line, file=out, flush=True)


def _driver_connected() -> bool:
    import ray

    return bool(ray.is_initialized())


_following: DriverEventEcho | None = None
_lock = threading.Lock()


def follow(client: ClusterClient, name: str) -> None:
    """Print the decisions for `name` from now on (replacing the cluster followed before),
    unless RAYKUBE_DRIVER_EVENTS=0."""
    global _following
    with _lock:
        if _following is not None:
            if _following.name == name and _following.alive:
                return
            _following.stop()
            _following = None
        if echo_enabled():
            _following = DriverEventEcho(client, name).start()


def stop_following() -> None:
    global _following
    with _lock:
        if _following is not None:
            _following.stop()
            _following = None
