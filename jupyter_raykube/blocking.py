"""A `ClusterManager` for code that is not async: kernels, scripts, plain IPython.

The manager runs on its own event-loop thread (an anyio blocking portal), so its autoscaler
loops keep going between notebook cells, and the kernel's own event loop is never touched.
Clusters this manager started are stopped when the process exits.
"""

from __future__ import annotations

import atexit
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .manager import ClusterManager

T = TypeVar("T")


class BlockingManager:
    """Owns a portal thread and the manager living on it; `call` runs a manager coroutine."""

    def __init__(self, manager_factory: Callable[[], ClusterManager] | None = None) -> None:
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        factory = manager_factory or ClusterManager  # its backend: $RAYKUBE_BACKEND, else auto
        self.manager: ClusterManager = self.portal.call(_build, factory)
        self._serve = self.portal.start_task(self.manager.serve)[0]
        self._closed = False
        atexit.register(self.close)
        _exit_cleanly_on_sigterm()

    def call(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        return self.portal.call(lambda: func(*args, **kwargs))

    def close(self) -> None:
        """Stop owned clusters and the loop thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self.portal.call(self.manager.close)
        self._serve.cancel()
        try:
            self._serve.result(timeout=120)
        except BaseException:  # noqa: BLE001 - cancelled is the normal outcome
            pass
        self._portal_cm.__exit__(None, None, None)


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (how process managers stop a program) would skip `atexit` and leave this
    process's clusters running; make it a normal exit instead, unless someone else already
    handles the signal."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


async def _build(factory: Callable[[], ClusterManager]) -> ClusterManager:
    return factory()


_shared: BlockingManager | None = None
_shared_lock = threading.Lock()


def shared_manager() -> BlockingManager:
    """The process-wide manager the magic uses (created on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared._closed:
            _shared = BlockingManager()
        return _shared
