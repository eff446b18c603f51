"""Start and stop node processes by PID, never by name.

`ray stop` kills every Ray process on the machine, the user's own included. Here each node is
one `ray start --block` process leading its own process group, and every process we start
carries a marker in its environment (inherited by raylet, GCS and Ray's worker processes), so a
stop ends exactly our processes and nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

CLUSTER_MARKER = "RAYKUBE_CLUSTER_UID"  # env var on every process of one cluster
NODE_MARKER = "RAYKUBE_NODE"  # env var naming the node a process belongs to


@dataclass(frozen=True)
class ProcessRef:
    """A PID plus its start time, so a recycled PID is never mistaken for ours."""

    pid: int
    create_time: float

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    @classmethod
    def of(cls, proc: subprocess.Popen[bytes]) -> ProcessRef:
        try:
            return cls(proc.pid, psutil.Process(proc.pid).create_time())
        except psutil.NoSuchProcess:
            return cls(proc.pid, 0.0)


def spawn(args: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `args` as the leader of a new session (so its whole group can be signalled)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(list(args), env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def terminate_group(ref: ProcessRef, *, child: subprocess.Popen[bytes] | None = None,
                    grace_s: float = 10.0) -> None:
    """Stop one node: SIGTERM its `ray start`, wait up to `grace_s`, SIGKILL its whole group."""
    terminate_groups([(ref, child)], grace_s=grace_s)


def terminate_groups(nodes: Sequence[tuple[ProcessRef, subprocess.Popen[bytes] | None]], *,
                     grace_s: float = 10.0) -> None:
    """Stop several nodes at once.

    SIGTERM goes to each `ray start --block` leader only: it shuts its raylet, GCS and agents
    down in order. Signalling the whole group instead kills the GCS first, and the node then
    spends 30 s trying to drain itself through a GCS that is gone. Whatever is left of a group
    after `grace_s` is SIGKILLed. Each entry's Popen is given when this process started the
    node (so it is reaped); another process stopping a node has only the PID reference.
    """
    live = [(ref, child) for ref, child in nodes if ref.alive()]
    for ref, _ in live:
        try:
            os.kill(ref.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_running(ref, child) for ref, child in live):
        time.sleep(0.05)
    for ref, child in nodes:
        _signal_group(ref.pid, signal.SIGKILL)
        if child is not None:
            try:
                child.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass


def _running(ref: ProcessRef, child: subprocess.Popen[bytes] | None) -> bool:
    if child is not None:
        return child.poll() is None
    return ref.alive()


def kill_marked(marker: str, value: str, *, grace_s: float = 3.0) -> int:
    """End every process whose environment has `marker=value`; returns how many there were.

    Ray's worker processes can outlive a killed raylet for a moment; this sweep is what makes
    "nothing leaks" true even after a SIGKILL.
    """
    procs = find_marked(marker, value)
    for proc in procs:
        _quietly(proc.terminate)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        _quietly(proc.kill)
    psutil.wait_procs(alive, timeout=grace_s)
    return len(procs)


def find_marked(marker: str, value: str | None = None) -> list[psutil.Process]:
    """Processes of this user whose environment has `marker` (set to `value` if given)."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if marker in env and (value is None or env[marker] == value):
            found.append(proc)
    return found


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _quietly(action) -> None:  # type: ignore[no-untyped-def]
    try:
        action()
    except psutil.Error:
        pass
