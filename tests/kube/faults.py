"""Fault rules and the request log of the fault proxy (``faultproxy.py``).

Backends must survive an apiserver that is slow, overloaded (429 + Retry-After), briefly
broken (500/503) or racing with another writer (409). Tests arm a :class:`Fault` for matching
requests and then read the :class:`RequestRecord` log to prove, e.g., that a retried create
did not create twice.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fault:
    """A rule: requests matching method/path/query get ``delay_s`` of latency and/or a failure.

    ``status`` None means "delay only, then serve normally". ``times`` None means forever.
    ``hits`` counts the requests the rule has fired on.
    """

    method: str | None = None
    path_regex: str | None = None
    query_regex: str | None = None
    status: int | None = 500
    times: int | None = 1
    delay_s: float = 0.0
    retry_after_s: int | None = None
    reason: str | None = None
    message: str | None = None
    hits: int = 0
    _registry: "FaultRegistry | None" = field(default=None, repr=False, compare=False)

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.path_regex is not None and not re.search(self.path_regex, path):
            return False
        if self.query_regex is not None and not re.search(self.query_regex, query):
            return False
        return self.times is None or self.hits < self.times

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def remove(self) -> None:
        if self._registry is not None:
            self._registry.remove(self)


@dataclass(frozen=True)
class RequestRecord:
    """One served HTTP request: what a test inspects to count creates, retries, watches."""

    method: str
    path: str
    query: str
    status: int
    time: float
    user_agent: str = ""
    fault: bool = False


class FaultRegistry:
    """Thread-safe fault rules plus the request log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._log: list[RequestRecord] = []

    def add(self, fault: Fault) -> Fault:
        fault._registry = self
        with self._lock:
            self._faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        with self._lock:
            if fault in self._faults:
                self._faults.remove(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str, query: str) -> Fault | None:
        """The first armed rule matching this request, with its hit counted."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, query):
                    fault.hits += 1
                    return fault
        return None

    def record(self, method: str, path: str, query: str, status: int, user_agent: str, fault: bool) -> None:
        with self._lock:
            self._log.append(RequestRecord(method, path, query, status, time.time(), user_agent, fault))

    def records(self, method: str | None = None, path_regex: str | None = None) -> list[RequestRecord]:
        with self._lock:
            log = list(self._log)
        return [r for r in log if (method is None or r.method == method.upper())
                and (path_regex is None or re.search(path_regex, r.path))]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"method": f.method, "path_regex": f.path_regex, "status": f.status, "hits": f.hits,
                     "times": f.times} for f in self._faults]
