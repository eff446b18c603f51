"""The local backend's registry: one JSON file per cluster in the Jupyter runtime directory.

Any process of the same user (the Jupyter server, a kernel, a script) finds a running cluster
by name here, with the PIDs of its nodes so it can stop them. Files are written atomically and
readable by the user only.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Record = dict[str, Any]


class LocalStateStore:
    """`<root>/<cluster>.json` files. A lock serialises read-modify-write within a process;
    only the owning process writes a cluster's node list, so no cross-process lock is needed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.RLock()

    def path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def read(self, name: str) -> Record | None:
        try:
            return json.loads(self.path(name).read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return None  # a half-written file from a crashed writer: treat as absent

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json"))

    def create(self, record: Record) -> None:
        """Write a new record; refuses to overwrite (two creates of one name race here)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path(record["name"])
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)

    def write(self, record: Record) -> None:
        with self._lock:
            self._write(record)

    def delete(self, name: str) -> None:
        with self._lock:
            self.path(name).unlink(missing_ok=True)

    def update(self, name: str, change: Callable[[Record], None]) -> Record | None:
        """Apply `change` to the stored record and write it back; None if it is gone."""
        with self._edit(name) as record:
            if record is not None:
                change(record)
            return record

    @contextmanager
    def _edit(self, name: str) -> Iterator[Record | None]:
        with self._lock:
            record = self.read(name)
            yield record
            if record is not None:
                self._write(record)

    def _write(self, record: Record) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path(record["name"])
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)
