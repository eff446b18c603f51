"""Shared snapshots of ``/proc``: who is whose child, in which session, carrying which Pod marker.

Killing a container means finding every process it started, including daemons that
``setsid``'d away and were re-parented to init. Scanning ``/proc`` (stat + environ of every
process) per kill is fine for one Pod and far too slow when a test deletes 300 Pods at once,
so concurrent kills share snapshots: a caller asks for one taken no earlier than a given
moment and gets the cached one if it is fresh enough.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

MARKER = "PROCESS_KUBELET_POD"
_NEEDLE = MARKER.encode() + b"="


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    sid: int
    start_ticks: int
    zombie: bool
    marker: str | None


def read_proc(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    marker = None
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = b"\0" + fh.read()
    except OSError:
        environ = b""
    at = environ.find(b"\0" + _NEEDLE)
    if at >= 0:
        start = at + 1 + len(_NEEDLE)
        end = environ.find(b"\0", start)
        marker = environ[start: end if end >= 0 else None].decode(errors="replace")
    return ProcInfo(pid, int(fields[1]), int(fields[3]), int(fields[19]), fields[0] == b"Z", marker)


class ProcessTable:
    """Thread-safe, rate-limited ``/proc`` snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken = -1.0
        self._snapshot: list[ProcInfo] = []

    def snapshot(self, not_before: float | None = None) -> list[ProcInfo]:
        """All processes, from a scan started at or after ``not_before`` (monotonic; default: now)."""
        wanted = time.monotonic() if not_before is None else not_before
        with self._lock:
            if self._taken < wanted:
                self._taken = time.monotonic()
                me = os.getpid()
                infos = (read_proc(int(e.name)) for e in os.scandir("/proc") if e.name.isdigit() and int(e.name) != me)
                self._snapshot = [i for i in infos if i is not None]
            return self._snapshot

    def marked(self, prefix: str, not_before: float | None = None) -> list[ProcInfo]:
        """Live (non-zombie) processes whose marker starts with ``prefix``."""
        if not prefix:
            return []
        return [p for p in self.snapshot(not_before) if p.marker is not None and p.marker.startswith(prefix)
                and not p.zombie]

    def family(self, leader: int | None, prefix: str, not_before: float | None = None) -> list[ProcInfo]:
        """Marked processes, plus the leader's descendants and session members when a leader is given."""
        snap = self.snapshot(not_before)
        found = {p.pid: p for p in snap if p.marker is not None and prefix and p.marker.startswith(prefix)}
        if leader is not None:
            children: dict[int, list[ProcInfo]] = {}
            for p in snap:
                children.setdefault(p.ppid, []).append(p)
                if p.sid == leader:
                    found.setdefault(p.pid, p)
            stack, seen = [leader], {leader}
            while stack:
                for child in children.get(stack.pop(), []):
                    found.setdefault(child.pid, child)
                    if child.pid not in seen:
                        seen.add(child.pid)
                        stack.append(child.pid)
        return [p for p in found.values() if not p.zombie]


TABLE = ProcessTable()
