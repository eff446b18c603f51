"""A cluster's event log: every decision as a plain sentence, newest last, bounded."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

EventKind = Literal["created", "scale_up", "scale_down", "node_failed", "backoff", "scaled",
                    "error", "stopped", "info"]


@dataclass(frozen=True)
class Event:
    time: float  # epoch seconds
    kind: EventKind
    message: str

    def to_json(self) -> dict[str, str]:
        stamp = datetime.fromtimestamp(self.time, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"time": stamp, "kind": self.kind, "message": self.message}


class EventLog:
    """The last `maxlen` events. A message repeated back to back is recorded once, so a loop
    that keeps hitting the same error does not flush everything else out."""

    def __init__(self, maxlen: int = 200) -> None:
        self._events: deque[Event] = deque(maxlen=maxlen)

    def add(self, now: float, kind: EventKind, message: str) -> Event | None:
        if self._events and self._events[-1].kind == kind and self._events[-1].message == message:
            return None
        event = Event(now, kind, message)
        self._events.append(event)
        return event

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(tuple(self._events))

    def __len__(self) -> int:
        return len(self._events)

    def to_json(self, last: int | None = None) -> list[dict[str, str]]:
        events = list(self._events)
        return [e.to_json() for e in (events[-last:] if last else events)]
