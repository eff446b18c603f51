"""One container = one local process tree, started in its own session and killed as a whole.

Ray's ``ray start --block`` forks raylet, GCS, dashboard and workers, and some of them call
``setpgrp``; killing only the top process would leak them. So every process a container
starts carries a marker variable (``PROCESS_KUBELET_POD=<kubelet id>/<pod uid>``) and a kill
sweeps the leader's descendants, its session and every process with the marker (see
``proctable.py``): SIGTERM, wait up to the grace period, then SIGKILL, then sweep again for
anything spawned meanwhile. The same marker lets the test fixture prove nothing leaked.
The session is swept only while the leader is not yet reaped (its PID, and so the session ID,
cannot have been reused by an unrelated process), and every signal goes through a pidfd
opened after checking the process's start time, so a recycled PID is never signalled.
"""

from __future__ import annotations

import os
import resource
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Mapping

from .proctable import MARKER, TABLE, ProcInfo, read_proc

__all__ = ["MARKER", "ContainerProcess", "StartError", "resolve_executable"]


class StartError(Exception):
    """The executable could not be started (containerd's ``StartError``, exit code 128)."""


def resolve_executable(argv0: str, path_env: str, executables: Mapping[str, str]) -> str:
    """``executables`` mapping first (by name or basename), then ``PATH``, as exec would."""
    if argv0 in executables:
        return executables[argv0]
    base = os.path.basename(argv0)
    if base in executables:
        return executables[base]
    if "/" in argv0:
        if os.access(argv0, os.X_OK):
            return argv0
    else:
        found = shutil.which(argv0, path=path_env)
        if found:
            return found
    raise StartError(f'exec: "{argv0}": executable file not found in $PATH')


class _Target:
    """A process to kill, pinned by a pidfd once its identity (start time) is confirmed."""

    def __init__(self, info: ProcInfo) -> None:
        self.fd = -1
        try:
            fd = os.pidfd_open(info.pid)
        except OSError:
            return
        now = read_proc(info.pid)
        if now is not None and now.start_ticks == info.start_ticks:
            self.fd = fd
        else:
            os.close(fd)

    def signal(self, sig: int) -> None:
        if self.fd >= 0:
            try:
                signal.pidfd_send_signal(self.fd, sig)
            except OSError:
                pass  # already exited

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _wait_exit(targets: list[_Target], timeout_s: float) -> list[_Target]:
    """Wait until the targets exit (a pidfd turns readable); returns those still alive."""
    deadline = time.monotonic() + max(timeout_s, 0.0)
    alive = [t for t in targets if t.fd >= 0]
    while alive:
        poller = select.poll()
        for t in alive:
            poller.register(t.fd, select.POLLIN)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready = {fd for fd, _ in poller.poll(remaining * 1000)}
        alive = [t for t in alive if t.fd not in ready]
    return alive


# Container runtimes start processes with a soft open-files limit of 1024 (containerd and
# Docker under systemd's LimitNOFILE=1024:524288): what a Ray Pod's command must raise itself.
CONTAINER_NOFILE_SOFT = 1024


def _container_limits() -> None:
    """In the child before exec: the runtime's soft open-files limit (the hard one is kept)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(CONTAINER_NOFILE_SOFT, hard), hard))


class ContainerProcess:
    """A started container process with its log file; ``wait`` is driven by a pidfd (no polling)."""

    def __init__(self, argv: list[str], env: Mapping[str, str], cwd: Path, log_path: Path) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            try:
                self.popen = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                              preexec_fn=_container_limits)
            except OSError as exc:
                raise StartError(f"exec {argv[0]!r}: {exc.strerror or exc}") from None
        self.pid = self.popen.pid
        self.marker = env.get(MARKER, "")
        self._pidfd = os.pidfd_open(self.pid)

    def wait(self, timeout_s: float | None, wake_fd: int | None = None) -> int | None:
        """Exit status once the process exits, else None after ``timeout_s`` or when ``wake_fd`` is readable."""
        if self._pidfd < 0:
            try:
                return self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return None
        fds = [self._pidfd] + ([wake_fd] if wake_fd is not None else [])
        readable, _, _ = select.select(fds, [], [], timeout_s)
        if self._pidfd in readable:
            return self.popen.wait()
        return self.popen.poll()

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def kill_tree(self, grace_s: float) -> int:
        """SIGTERM everything this container started, SIGKILL what is left after ``grace_s``.

        Returns the leader's exit status; the leader is waited for through ``Popen`` so that
        its real status is kept.
        """
        began = time.monotonic()
        leader_held = self.popen.returncode is None
        family = TABLE.family(self.pid if leader_held else None, self.marker, not_before=began)
        targets = [_Target(p) for p in family if p.pid != self.pid]
        try:
            if leader_held:
                try:
                    self.popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass  # exited just now; wait() below collects it
            for target in targets:
                target.signal(signal.SIGTERM)
            if leader_held and self.wait(max(grace_s, 0.0)) is None:
                self.popen.kill()
            for target in _wait_exit(targets, grace_s - (time.monotonic() - began)):
                target.signal(signal.SIGKILL)
            _wait_exit(targets, 5.0)
        finally:
            for target in targets:
                target.close()
        code = self.popen.wait()
        for _ in range(3):  # anything forked while we were killing
            late = [_Target(p) for p in TABLE.marked(self.marker, not_before=time.monotonic())]
            if not late:
                break
            for target in late:
                target.signal(signal.SIGKILL)
            _wait_exit(late, 2.0)
            for target in late:
                target.close()
        return code
