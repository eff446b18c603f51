"""One loop per cluster: observe (backend + GCS), plan (pure), act (launch, drain, remove).

Observation joins the backend's nodes (processes or Pods) with the GCS's Ray nodes through the
instance id each node was started with. Starting nodes count as capacity, so a node is never
launched twice for the same demand. Scale-down is always drain-first: Ray's raylet refuses to
drain a node that runs work or holds primary object copies, and a node is removed only after
Ray accepted the drain (from then on Ray schedules nothing there), at once, as Ray's own
autoscaler terminates a drained instance. Every decision becomes an event; an error in one
round is recorded and the loop goes on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Literal

import anyio
from anyio.abc import TaskGroup

from ..backends.base import Backend, BackendError, BackendNode, ClusterHandle, ClusterNotFound, Quota
from ..events import EventKind, EventLog
from ..node_logs import failure_tail
from ..spec import ClusterSpec
from .demand import ClusterState, GcsReader, RayNode
from .planner import (
    NodeGroup,
    NodeView,
    PendingStatus,
    PlanReply,
    PlanRequest,
    format_shape,
    plan,
)

NodeState = Literal["starting", "running", "draining"]  # a failed node is removed, not shown


class RemovalCause(Enum):
    """Why the reconciler removes a worker node: typed to the end, its sentence made once."""

    IDLE = "idle"  # drained after its idle timeout: a scale-down
    FAILED = "failed"  # its process or Pod exited, or its Ray node died
    NOT_JOINED = "not_joined"  # not in Ray within the join timeout (its group backs off)

    @property
    def event_kind(self) -> EventKind:
        return "scale_down" if self is RemovalCause.IDLE else "node_failed"


@dataclass(frozen=True)
class Removal:
    name: str
    cause: RemovalCause
    message: str  # for people: the event's sentence


class HeadLost(RuntimeError):
    """The head node's process or Pod has exited: the cluster cannot recover by itself."""


@dataclass(frozen=True)
class AutoscalerSettings:
    interval_s: float = 1.0  # how often the GCS is read; demand shows up there within ~0.25 s
    max_launch_in_flight: int = 8  # nodes starting at once, per cluster
    join_timeout_s: float = 120.0  # a node that has not joined Ray by then is removed
    backoff_s: float = 60.0  # a group whose node failed to join launches nothing for this long
    drain_timeout_s: float = 30.0  # a drained node whose removal failed is tried again by then
    # Rounds while something may change within a second: a drain or a held-back launch waits
    # on Ray, demand is pending, or a driver is connected (its next tasks are seen this soon).
    quick_interval_s: float = 0.25


@dataclass(frozen=True)
class ObservedNode:
    """A node as shown to users: the backend's view joined with Ray's."""

    name: str
    group: str
    state: NodeState
    created_at: float
    ray: RayNode | None = None
    message: str = ""


@dataclass(frozen=True)
class Observation:
    at: float
    nodes: tuple[ObservedNode, ...]
    ray: ClusterState
    pending: tuple[PendingStatus, ...]
    quota: Quota | None = None  # the platform's limit on the user's nodes (a namespace quota)


@dataclass
class _Backoff:
    until: float
    reason: str


@dataclass
class _Drain:
    requested_at: float
    reason: str


@dataclass
class Reconciler:
    """Keeps one cluster's workers matched to its demand. `act=False` observes and explains
    (for a process that is attached to a cluster another process autoscales)."""

    handle: ClusterHandle
    backend: Backend
    reader: GcsReader
    events: EventLog
    spec: ClusterSpec
    settings: AutoscalerSettings = field(default_factory=AutoscalerSettings)
    act: bool = True
    clock: Callable[[], float] = time.time
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("jupyter_raykube"))
    observation: Observation | None = None
    _backoff: dict[str, _Backoff] = field(default_factory=dict)
    _provisioned_at: dict[str, float] = field(default_factory=dict)  # node -> last seen provisioning
    _draining: dict[str, _Drain] = field(default_factory=dict)
    _steps: dict[str, str] = field(default_factory=dict)  # starting node -> the start phase last told
    _wake: anyio.Event = field(default_factory=anyio.Event)
    _next_round_s: float = 0.0  # when the round after this one is due (set by each round)
    _launches_held_back: bool = False  # the last plan wanted more nodes than were free to start
    _removing: set[str] = field(default_factory=set)  # nodes whose processes or Pods are being removed
    _idle_since: dict[str, float] = field(default_factory=dict)  # node -> first seen idle (see _idle)
    _background: TaskGroup | None = None  # where `run` lets removals finish outside the rounds

    def wake(self) -> None:
        """Run the next round now (after a scale request) instead of at the next tick."""
        self._wake.set()

    async def run(self) -> None:
        """Rounds until cancelled; raises ClusterNotFound or HeadLost as they are (not wrapped
        in the ExceptionGroup of the task group where node removals finish)."""
        lost: ClusterNotFound | HeadLost | None = None
        async with anyio.create_task_group() as background:
            self._background = background
            try:
                while True:
                    self._next_round_s = self.settings.interval_s
                    await self.step()
                    with anyio.move_on_after(self._next_round_s):
                        await self._wake.wait()
                    self._wake = anyio.Event()
            except (ClusterNotFound, HeadLost) as exc:
                lost = exc
                background.cancel_scope.cancel()
            finally:
                self._background = None
        if lost is not None:
            raise lost

    async def step(self) -> Observation | None:
        """One round. Never raises (except cancellation): failures become events."""
        try:
            return await self._step()
        except (ClusterNotFound, HeadLost):
            raise
        except Exception as exc:  # one bad round must not stop autoscaling
            self.log.exception("autoscaler round failed for %s", self.handle.name)
            self.events.add(self.clock(), "error", f"autoscaler round failed: {exc}")
            return None

    async def _step(self) -> Observation:
        backend_nodes = await self.backend.list_nodes(self.handle)
        head = next((n for n in backend_nodes if n.is_head), None)
        if head is not None and head.phase == "exited":
            raise HeadLost(f"the head node {head.name} stopped: {head.message or 'it exited'}")
        state = await anyio.to_thread.run_sync(self.reader.read)
        now = self.clock()
        nodes = await self._observe(backend_nodes, state, now)
        reply = plan(self._plan_request(nodes, state, now))
        if self.act:
            await self._launch(reply, nodes)
            await self._drain(reply, nodes, now)
            self._schedule_next_round(nodes, state)
        quota = await self.backend.quota()  # cached by the backend: not an API call per round
        self.observation = Observation(at=now, nodes=nodes, ray=state, pending=reply.pending, quota=quota)
        return self.observation

    # --- observe -----------------------------------------------------------------------------

    async def _observe(self, backend_nodes: list[BackendNode], state: ClusterState,
                       now: float) -> tuple[ObservedNode, ...]:
        ray_by_instance = {n.instance_id: n for n in state.nodes if n.status != "dead"}
        dead = {n.instance_id for n in state.nodes if n.status == "dead"}
        listed = {n.name for n in backend_nodes}
        self._provisioned_at = {n: t for n, t in self._provisioned_at.items() if n in listed}
        self._idle_since = {n: t for n, t in self._idle_since.items() if n in listed}
        observed: list[ObservedNode] = []
        to_remove: list[Removal] = []
        self._steps = {n: step for n, step in self._steps.items() if n in listed}
        for node in backend_nodes:
            if node.name in self._removing:
                continue  # on its way out: neither capacity nor a candidate for another removal
            ray_node = ray_by_instance.get(node.name)
            self._note_step(node, ray_node, now)
            if node.is_head:
                observed.append(ObservedNode(node.name, node.group, "running" if ray_node else "starting",
                                             node.created_at, ray_node, node.message))
                continue
            drain = self._draining.get(node.name)
            if drain is not None:
                if ray_node is None or now - drain.requested_at > self.settings.drain_timeout_s:
                    to_remove.append(Removal(node.name, RemovalCause.IDLE,
                                             f"removed idle {node.group} node {node.name}: {drain.reason}"))
                    continue
                observed.append(ObservedNode(node.name, node.group, "draining", node.created_at, ray_node))
            elif node.failed:  # the backend's verdict: no node coming, no image, a crash
                reason = f"{node.group} node {node.name} could not start: {node.message}"
                to_remove.append(Removal(node.name, RemovalCause.FAILED, reason))
                self._back_off(node.group, reason, now)
            elif node.phase == "exited" or node.name in dead:
                why = node.message or "its Ray node died"
                to_remove.append(Removal(node.name, RemovalCause.FAILED, f"{node.group} node {node.name} failed: {why}"))
            elif ray_node is not None:
                observed.append(ObservedNode(node.name, node.group, "running", node.created_at,
                                             self._idle(node.name, ray_node, now)))
            elif node.provisioning:
                self._provisioned_at[node.name] = now  # its join clock starts once it has a machine
                observed.append(ObservedNode(node.name, node.group, "starting", node.created_at, None, node.message))
            elif now - max(node.created_at, self._provisioned_at.get(node.name, 0.0)) > self.settings.join_timeout_s:
                reason = (f"{node.group} node {node.name} did not join Ray within "
                          f"{self.settings.join_timeout_s:.0f} s{': ' + node.message if node.message else ''}")
                to_remove.append(Removal(node.name, RemovalCause.NOT_JOINED, reason))
                self._back_off(node.group, reason, now)
            else:
                observed.append(ObservedNode(node.name, node.group, "starting", node.created_at,
                                             None, node.message))
        if self.act and to_remove:
            await self._remove(to_remove)
        return tuple(observed)

    def _note_step(self, node: BackendNode, ray_node: RayNode | None, now: float) -> None:
        """An event for each phase a starting node enters (waiting for a node, pulling image,
        starting Ray) and for its joining, so a slow start reads as progress."""
        if ray_node is not None:
            if self._steps.pop(node.name, None) is not None:
                self.events.add(now, "info", f"{node.group} node {node.name} joined Ray "
                                             f"{max(0.0, now - node.created_at):.0f} s after it was created")
        elif node.step and self._steps.get(node.name) != node.step:
            self._steps[node.name] = node.step
            self.events.add(now, "info", f"{node.group} node {node.name}: {node.step}")

    def _idle(self, name: str, ray_node: RayNode, now: float) -> RayNode:
        """The node with its idle time counted from when it was first seen idle, not from Ray's
        last restart of its clock: Ray restarts the idle clock of the other nodes when one
        node drains (bench/README.md), so nodes that finished together would be removed one
        idle timeout after another. Any round that sees the node busy starts it over."""
        if ray_node.idle_s <= 0:
            self._idle_since.pop(name, None)
            return ray_node
        since = min(self._idle_since.get(name, now), now - ray_node.idle_s)
        self._idle_since[name] = since
        return replace(ray_node, idle_s=now - since)

    async def _remove(self, removals: list[Removal]) -> None:
        async def remove(removal: Removal) -> None:
            message = removal.message
            if removal.cause is RemovalCause.FAILED:  # its logs go with its process or Pod: keep the last lines
                tail = await failure_tail(self.backend, self.handle, removal.name)
                message += f"; its last log lines:\n{tail}" if tail else ""
            await self.backend.remove_node(self.handle, removal.name)
            self._draining.pop(removal.name, None)
            self.events.add(self.clock(), removal.cause.event_kind, message)

        async def remove_in_background(removal: Removal) -> None:
            try:
                await remove(removal)
            except Exception as exc:  # one failed removal must not stop the loop
                self.log.exception("removing %s failed", removal.name)
                self.events.add(self.clock(), "error", f"could not remove {removal.name}: {exc}")
            finally:
                self._removing.discard(removal.name)

        if self._background is not None:
            # Stopping a node's processes takes seconds (Ray shuts them down in order): the
            # next rounds go on meanwhile, so the next idle node is drained on time.
            for removal in removals:
                self._removing.add(removal.name)
                self._background.start_soon(remove_in_background, removal)
            return
        async with anyio.create_task_group() as tg:
            for removal in removals:
                tg.start_soon(remove, removal)

    def _back_off(self, group: str, reason: str, now: float) -> None:
        self._backoff[group] = _Backoff(now + self.settings.backoff_s, reason)
        self.events.add(now, "backoff",
                        f"backing off the {group} group for {self.settings.backoff_s:.0f} s: {reason}")

    def _schedule_next_round(self, nodes: tuple[ObservedNode, ...], state: ClusterState) -> None:
        """Come back sooner than the regular interval when something is about to change: the
        moment the next idle node passes its idle timeout (not up to a round later), and
        every quick interval while a drained node is on its way out, launches wait for a free
        slot, demand is pending or a driver is connected (Ray's GCS offers no subscription to
        new demand; one read costs a few ms), so each step follows Ray's by a fraction of a
        second. A cluster nobody uses is read once per interval."""
        soon = self._next_round_s
        waiting = bool(state.demand or state.gangs or state.constraints or state.drivers)
        if self._draining or self._launches_held_back or waiting:
            soon = min(soon, self.settings.quick_interval_s)
        groups = {g.name: g for g in self.spec.groups}
        for node in nodes:
            if node.state == "running" and node.ray is not None and node.ray.idle_s > 0 and node.group in groups:
                left = self.spec.idle_timeout_for(groups[node.group]) - node.ray.idle_s
                if left > 0:
                    soon = min(soon, left + 0.05)
        self._next_round_s = max(0.05, soon)

    # --- plan --------------------------------------------------------------------------------

    def _plan_request(self, nodes: tuple[ObservedNode, ...], state: ClusterState, now: float) -> PlanRequest:
        spec = self.spec
        groups = tuple(
            NodeGroup(name=g.name, resources=self.backend.node_resources(spec, g), min_nodes=g.min,
                      max_nodes=g.max, cost=g.cost, idle_timeout_s=spec.idle_timeout_for(g),
                      labels=self.backend.node_labels(spec, g),
                      warm_nodes=g.warm)
            for g in spec.groups)
        views = tuple(_view(n, dict(self.backend.node_resources(spec, spec.group(n.group))))
                      for n in nodes if n.group in {g.name for g in spec.groups})
        self._backoff = {g: b for g, b in self._backoff.items() if b.until > now}
        return PlanRequest(groups=groups, nodes=views, demand=state.demand, gangs=state.gangs,
                           constraints=state.constraints, max_workers=spec.max_workers,
                           blocked_groups={g: b.reason for g, b in self._backoff.items()})

    # --- act ---------------------------------------------------------------------------------

    async def _launch(self, reply: PlanReply, nodes: tuple[ObservedNode, ...]) -> None:
        starting = sum(1 for n in nodes if n.state == "starting" and n.group != "head")
        budget = max(0, self.settings.max_launch_in_flight - starting)
        launched: Counter[str] = Counter()

        async def launch(group_name: str) -> None:
            try:
                await self.backend.create_worker(self.handle, self.spec.group(group_name))
            except BackendError as exc:  # refused (a quota, a permission): every round would fail the same way
                self._back_off(group_name, f"could not create a {group_name} node: {exc}", self.clock())
                return
            launched[group_name] += 1

        wanted = sum(reply.launch.values())
        self._launches_held_back = wanted > budget
        async with anyio.create_task_group() as tg:
            for group_name, count in sorted(reply.launch.items()):
                for _ in range(min(count, budget)):
                    budget -= 1
                    tg.start_soon(launch, group_name)
        for group_name, count in sorted(launched.items()):
            why = reply.launch_reasons.get(group_name, "")
            noun = "node" if count == 1 else "nodes"
            self.events.add(self.clock(), "scale_up",
                            f"launched {count} {group_name} {noun}" + (f" for {why}" if why else ""))

    async def _drain(self, reply: PlanReply, nodes: tuple[ObservedNode, ...], now: float) -> None:
        """Drain what the plan releases, and remove each node whose drain Ray accepted right
        away, as Ray's autoscaler terminates a drained instance (a removal that fails is tried
        again from `_observe` once Ray reports the node dead or the drain times out)."""
        by_name = {n.name: n for n in nodes}
        accepted_removals: list[Removal] = []
        for termination in reply.terminate:
            node = by_name.get(termination.node_id)
            if node is None or node.ray is None or node.name in self._draining:
                continue
            accepted, why_not = await anyio.to_thread.run_sync(
                self.reader.drain_idle_node, node.ray.node_id, termination.reason)
            if accepted:
                self._draining[node.name] = _Drain(now, termination.reason)
                self.events.add(now, "scale_down", f"draining {node.group} node {node.name}: {termination.reason}")
                accepted_removals.append(Removal(node.name, RemovalCause.IDLE,
                                                 f"removed idle {node.group} node {node.name}: {termination.reason}"))
            else:
                self.log.debug("drain of %s refused by Ray: %s", node.name, why_not)
        if accepted_removals:
            await self._remove(accepted_removals)


def _view(node: ObservedNode, configured: dict[str, float]) -> NodeView:
    """The planner's view: a starting node offers its whole configured capacity."""
    if node.ray is None:
        return NodeView(node_id=node.name, group=node.group, state="starting", total=configured,
                        available=configured, idle_s=0.0)
    state = "draining" if node.state == "draining" else "running"
    return NodeView(node_id=node.name, group=node.group, state=state, total=dict(node.ray.total),
                    available=dict(node.ray.available), idle_s=node.ray.idle_s)


def describe_pending(pending: PendingStatus) -> dict[str, object]:
    """The snapshot's `demand` entry for one pending shape."""
    entry: dict[str, object] = {"kind": pending.kind, "shape": dict(pending.shape), "count": pending.count,
                                "status": pending.status, "reason": pending.reason}
    if pending.bundles:
        entry["bundles"] = [dict(b) for b in pending.bundles]
    entry["label"] = format_shape(pending.shape)
    return entry
