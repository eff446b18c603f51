"""A cluster's event log: every decision as a plain sentence, newest last, bounded."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

import anyio

EventKind = Literal["created", "scale_up", "scale_down", "node_failed", "backoff", "scaled",
                    "error", "stopped", "info"]


@dataclass(frozen=True)
class Event:
    time: float  # epoch seconds
    kind: EventKind
    message: str
    id: int = 0  # 1, 2, 3 ... within one log: what a follower asks for "after"

    def to_json(self) -> dict[str, str | int]:
        stamp = datetime.fromtimestamp(self.time, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"id": self.id, "time": stamp, "kind": self.kind, "message": self.message}


class EventLog:
    """The last `maxlen` events. A message repeated back to back is recorded once, so a loop
    that keeps hitting the same error does not flush everything else out."""

    def __init__(self, maxlen: int = 200) -> None:
        self._events: deque[Event] = deque(maxlen=maxlen)
        self._last_id = 0
        self._added: anyio.Event | None = None  # set on the next add, for `wait_after`

    def add(self, now: float, kind: EventKind, message: str) -> Event | None:
        """Record an event. Called on the manager's event loop, like `wait_after`."""
        if self._events and self._events[-1].kind == kind and self._events[-1].message == message:
            return None
        self._last_id += 1
        event = Event(now, kind, message, self._last_id)
        self._events.append(event)
        if self._added is not None:
            self._added.set()
            self._added = None
        return event

    @property
    def last_id(self) -> int:
        return self._last_id

    def after(self, event_id: int) -> list[Event]:
        """The events newer than `event_id`, oldest first (all of them after a restart of the
        log, when `event_id` is from a log that counted further)."""
        if event_id > self._last_id:
            event_id = 0
        return [e for e in self._events if e.id > event_id]

    async def wait_after(self, event_id: int, timeout_s: float) -> list[Event]:
        """`after(event_id)`, waiting up to `timeout_s` for one to arrive: how a follower (the
        driver's `(raykube)` lines) hears of decisions at once without polling."""
        with anyio.move_on_after(timeout_s):
            while not self.after(event_id):
                if self._added is None:
                    self._added = anyio.Event()
                await self._added.wait()
        return self.after(event_id)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(tuple(self._events))

    def __len__(self) -> int:
        return len(self._events)

    def to_json(self, last: int | None = None) -> list[dict[str, str]]:
        events = list(self._events)
        return [e.to_json() for e in (events[-last:] if last else events)]
