"""The planner's request and reply: plain frozen data, no Ray types, so the planner can be
replayed from a snapshot and the reconciler, tests and ``bench/`` share one vocabulary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Resources = Mapping[str, float]


@dataclass(frozen=True)
class LabelConstraint:
    """One condition of a Ray label selector on one node label: ``{"key": "A100"}`` is
    ``in`` ("A100",), ``"in(A100, H100)"`` is ``in`` both, ``"!spot"`` is ``not_in`` ("spot",).
    A node without the label fails ``in`` and passes ``not_in``, as in Ray's scheduler."""

    key: str
    op: Literal["in", "not_in"]
    values: tuple[str, ...]


# All constraints of a selector must hold on a node; a task's selectors are its label_selector
# and then its fallback_strategy's, and any one of them may hold.
LabelSelector = tuple[LabelConstraint, ...]


@dataclass(frozen=True)
class NodeGroup:
    """A worker group (a KubeRay workerGroupSpec, or a kind of local worker process)."""

    name: str
    resources: Resources  # what ONE node of this group offers to Ray
    min_nodes: int = 0
    max_nodes: int = 0
    cost: float | None = None  # None -> default_cost(resources)
    idle_timeout_s: float = 60.0
    labels: Mapping[str, str] = field(default_factory=dict)  # Ray node labels its nodes start with
    warm_nodes: int = 0  # idle nodes kept ready beyond demand (a warm pool), within max_nodes


@dataclass(frozen=True)
class NodeView:
    """One worker node the backend knows about, as the planner needs to see it."""

    node_id: str  # the backend's node name (stable from starting to running)
    group: str
    state: Literal["starting", "running", "draining"]  # draining: offers nothing, not counted
    total: Resources
    available: Resources  # for a starting node, == total
    idle_s: float = 0.0  # seconds the Ray node has been idle; 0 when busy or starting


@dataclass(frozen=True)
class ResourceDemand:
    """Pending tasks/actors of one shape: one object per (shape, count), never per task."""

    shape: Resources
    count: int
    selectors: tuple[LabelSelector, ...] = ()  # only on nodes one of these matches; () = any


@dataclass(frozen=True)
class GangDemand:
    """A pending placement group: placed all-or-nothing."""

    id: str
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
    bundles: tuple[Resources, ...]
    bundle_selectors: tuple[tuple[LabelSelector, ...], ...] = ()  # per bundle, as in ResourceDemand


@dataclass(frozen=True)
class PlanRequest:
    """Everything the planner may look at. Nothing else (no clock, no environment)."""

    groups: tuple[NodeGroup, ...]
    nodes: tuple[NodeView, ...] = ()
    demand: tuple[ResourceDemand, ...] = ()
    gangs: tuple[GangDemand, ...] = ()
    # ray.autoscaler.sdk.request_resources: packed against TOTAL (not free) resources.
    constraints: tuple[ResourceDemand, ...] = ()
    max_workers: int | None = None  # global cap on worker nodes (starting + running)
    blocked_groups: Mapping[str, str] = field(default_factory=dict)  # group -> back-off reason


@dataclass(frozen=True)
class Termination:
    """A node the reconciler should drain (and then remove), with the sentence to log."""

    node_id: str
    group: str
    reason: str


@dataclass(frozen=True)
class PendingStatus:
    """Why a pending shape is (or is not) being served, for the UI and the event log."""

    kind: Literal["task", "placement_group", "request_resources"]
    shape: Resources  # for a placement group: its largest bundle (all of them in `bundles`)
    count: int
    status: Literal["waiting", "capped", "infeasible"]
    reason: str
    bundles: tuple[Resources, ...] = ()
    selector: str = ""  # the label selector(s) the shape must meet, as reasons write them


@dataclass(frozen=True)
class PlanReply:
    """The decision: what to launch, what to drain, and a status for every pending shape."""

    launch: Mapping[str, int]  # group -> number of new nodes; only groups with > 0
    terminate: tuple[Termination, ...]
    pending: tuple[PendingStatus, ...]
    launch_reasons: Mapping[str, str]  # group -> phrase, e.g. "3 pending {CPU: 1} tasks"


# Accelerators are what make a node expensive. A node offering one is an "accelerator node";
