"""`Cluster`: everything the manager knows about one cluster, in one record (no parallel
dicts keyed by name). The manager changes it; front-ends read it through `snapshot()`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import anyio

from .autoscaler.reconciler import Observation, Reconciler
from .backends.base import Backend, ClusterHandle
from .cost import CostMeter
from .events import EventLog
from .policy import Policy
from .snapshot import SnapshotJson, cluster_snapshot
from .spec import ClusterSpec

Progress = Callable[[str, int, int], None]  # (step, done, total)
ClusterStateName = Literal["starting", "running", "stopping", "stopped", "failed"]


@dataclass(eq=False)
class Cluster:
    """Everything the manager knows about one cluster (one record, not parallel dicts)."""

    spec: ClusterSpec
    backend: Backend
    owned: bool
    owner: str = ""
    events: EventLog = field(default_factory=EventLog)
    handle: ClusterHandle | None = None
    state: ClusterStateName = "starting"
    step: str = ""
    error: str = ""
    dashboard_url: str = ""
    reconciler: Reconciler | None = None
    scope: anyio.CancelScope | None = None  # the autoscaler loop
    policy: Policy = field(default_factory=Policy)
    idle_since: float | None = None  # no real work (tasks, actors, jobs) since then (epoch s)
    saved_ranges: dict[str, tuple[int, int]] | None = None  # group ranges before an idle scale-to-0
    start_scope: anyio.CancelScope | None = None  # a background start, cancelled by stop()
    start_done: anyio.Event | None = None  # set once a background start has finished or cleaned up
    cost: CostMeter = field(default_factory=CostMeter)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def observation(self) -> Observation | None:
        return self.reconciler.observation if self.reconciler else None

    def snapshot(self) -> SnapshotJson:
        """The JSON shape shared by widgets, sidebar, REST and tests (built in `snapshot.py`)."""
        return cluster_snapshot(self)
