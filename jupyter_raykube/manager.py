"""`ClusterManager`: the one place where clusters are created, scaled, stopped and found
(each one's record is a `Cluster`, in cluster.py).

Front-ends (magic, widgets, REST handlers, the hub hook) only call this. It is async and runs
on one event loop: the Jupyter server's, or a private loop thread (`BlockingManager`) in a
kernel or script. Each owned cluster has an autoscaler loop in the manager's task group.
A cluster another process owns can be attached: it is observed and explained here, and its
owner keeps autoscaling it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from .auth import load_or_create_token, use_token
from .autoscaler.demand import GcsReader
from .autoscaler.limits import LimitsKeeper
from .autoscaler.reconciler import AutoscalerSettings, HeadLost, Reconciler
from .backends.base import Backend, ClusterHandle
from .cluster import Cluster, Progress
from .errors import ClusterExistsError, ClusterNotFound, ClusterNotRunning, NotOwnedError, PolicyError
from .readiness import one_line, wait_for_group, wait_for_groups, wait_for_head
from .settings import ManagerSettings
from .spec import ClusterSpec, parse_group_changes


class ClusterManager(ManagerSettings):
    """Creates, finds, scales and stops clusters. Each cluster runs on one backend: the
    default one, or the one its spec names (`%raycluster start --backend kubernetes`),
    created on first use and configured from this manager's config (`ManagerSettings`,
    settings.py: every `c.ClusterManager.*` option and what a new cluster gets)."""


    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clusters: dict[str, Cluster] = {}
        self._forgotten: dict[str, float] = {}  # name -> when this manager stopped that cluster
        self._retired_cost = 0.0  # what stopped clusters cost (CostMeter.so_far), for the budget
        self._registry_lock = anyio.Lock()  # name checks and inserts of new clusters
        self._backends: dict[str, Backend] = {self.backend.name: self.backend}
        self._tg: TaskGroup | None = None
        self.token = load_or_create_token(Path(self.token_path))
        use_token(self.token)

    # --- running -----------------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host the autoscaler loops until cancelled; then stop owned clusters (if configured).

        It starts by looking for this user's clusters: the backend reaps those whose owner
        died (a server killed with SIGKILL), and with `adopt_on_start` the rest are taken over."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                found = await self._discover()
                if self.adopt_on_start:
                    for handle, _ in found:
                        await self.adopt(handle.name)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self._close_clusters()
                for backend in self._backends.values():
                    await backend.close()

    async def _close_clusters(self) -> None:
        for cluster in list(self._clusters.values()):
            if cluster.scope is not None:
                cluster.scope.cancel()
            if cluster.owned and self.stop_clusters_on_close and cluster.handle is not None:
                await self._stop(cluster, reason="the manager closed")

    # --- the API -----------------------------------------------------------------------------

    async def default_request(self) -> dict[str, Any]:
        """What a new cluster gets when a request says nothing, with the name the next one
        would get: the form a front-end pre-fills (it then sends back only what changed)."""
        async with self._registry_lock:
            name = self._free_name(await self._taken_names())
        return self._defaults(name, None).to_dict()

    async def _taken_names(self) -> set[str]:
        found = {h.name for h, _ in await self._discover() if not self._is_forgotten(h)}
        return found | set(self._clusters)

    async def create(self, spec: ClusterSpec | Mapping[str, Any], *, progress: Progress | None = None) -> Cluster:
        """Start a cluster and wait until its head (and `min` workers of each group) are up.
        `spec` may be a request body (see `spec_from_request`); without a name it gets the next
        free `<owner>-<n>`. On failure everything it started is removed and the error is raised."""
        cluster = await self._register(spec)
        await self._bring_up(cluster, progress or (lambda step, done, total: None), keep_failed=False)
        return cluster

    async def start(self, spec: ClusterSpec | Mapping[str, Any]) -> Cluster:
        """Validate and register now (bad input and duplicates raise at once), bring the
        cluster up in the background. Poll `snapshot()`: `state` ends in running or failed.
        `spec` may be a request body, as for `create`."""
        cluster = await self._register(spec)  # bad input is refused before anything else
        if self._tg is None:
            del self._clusters[cluster.name]
            raise RuntimeError("ClusterManager.serve() is not running")
        # Made before the task runs, so a stop() that comes first still cancels (and waits for) it.
        cluster.start_scope, cluster.start_done = anyio.CancelScope(), anyio.Event()

        async def bring_up() -> None:
            assert cluster.start_scope is not None and cluster.start_done is not None
            try:
                with cluster.start_scope:
                    await self._bring_up(cluster, lambda step, done, total: None, keep_failed=True)
            finally:
                cluster.start_done.set()

        self._tg.start_soon(bring_up, name=f"raykube-start-{cluster.name}")
        return cluster

    async def _register(self, wanted: ClusterSpec | Mapping[str, Any]) -> Cluster:
        """Check and record a new cluster under the registry lock, so two requests at once can
        neither take the same name nor both pass a cap; a request without a name is named here."""
        async with self._registry_lock:
            taken = await self._taken_names()
            if isinstance(wanted, ClusterSpec):
                spec = wanted
            else:
                unnamed = isinstance(wanted, Mapping) and wanted.get("name") is None
                spec = self.spec_from_request({**wanted, "name": self._free_name(taken)} if unnamed else wanted)
            backend = self.backend_for(spec.backend)
            if spec.name in taken:
                raise ClusterExistsError(f"a cluster named {spec.name!r} already exists; "
                                         f"stop it first or choose another name")
            owned = sum(1 for c in self._clusters.values() if c.owned and c.state != "failed")
            if self.max_clusters is not None and owned >= self.max_clusters:
                raise PolicyError(f"at most {self.max_clusters} cluster{'s' if self.max_clusters != 1 else ''} "
                                  f"may run at once ({owned} running); stop one first")
            self.policy.check(spec, self._committed_specs(except_name=spec.name), spent=self._user_spent())
            await backend.check_spec(spec)
            cluster = Cluster(spec=spec, backend=backend, owned=True, owner=self.owner, step="queued",
                              policy=self.policy)
            self._clusters[spec.name] = cluster
            return cluster

    async def _bring_up(self, cluster: Cluster, report: Progress, keep_failed: bool) -> None:
        spec = cluster.spec
        started = time.monotonic()
        total = 3 if any(g.min for g in spec.groups) else 2
        try:
            with anyio.fail_after(self.start_timeout_s):
                self._step(cluster, report, "starting the head node", 0, total)
                with anyio.CancelScope(shield=True):  # a stop must not lose what the create made
                    cluster.handle = await cluster.backend.create_cluster(
                        spec, owner=self.owner, token=self.token, **self._owner_kwargs(cluster.backend))
                await anyio.lowlevel.checkpoint()  # ... so a stop meanwhile cancels here, handle known
                if cluster.spec != spec:  # changed while the head was being created: keep the newer
                    cluster.handle = await cluster.backend.save_spec(cluster.handle, cluster.spec)
                cluster.dashboard_url = self._dashboard_url(cluster.handle)
                self._step(cluster, report, "waiting for the head node to join", 1, total)
                await wait_for_head(cluster, self.log)
                self._start_autoscaler(cluster)
                while cluster.observation is None:  # the first snapshot already lists the head
                    await anyio.sleep(0.05)
                if total == 3:
                    wanted = sum(g.min for g in spec.groups)
                    self._step(cluster, report, f"waiting for {wanted} minimum worker(s)", 2, total)
                    await wait_for_groups(cluster)
        except BaseException as exc:
            await self._fail(cluster, exc, started, keep=keep_failed)
            if keep_failed and not isinstance(exc, anyio.get_cancelled_exc_class()):
                return
            raise
        cluster.state = "running"
        self._step(cluster, report, "", total, total)
        cluster.events.add(time.time(), "created",
                           f"cluster started in {time.monotonic() - started:.1f} s")

    async def get(self, name: str) -> Cluster:
        cluster = self._clusters.get(name)
        if cluster is None:
            return await self.attach(name)
        return cluster

    async def running(self, name: str, needs: str) -> Cluster:
        """The cluster `name`, which must be running for what `needs` says it needs."""
        cluster = await self.get(name)
        if cluster.handle is None or cluster.state != "running":
            raise ClusterNotRunning(f"cluster {name!r} is {cluster.state}; {needs}")
        return cluster

    async def list(self) -> list[Cluster]:
        """Clusters owned here plus those other processes of this user run (with the desired
        state their owner last wrote)."""
        for handle, backend in await self._discover():
            known = self._clusters.get(handle.name)
            if known is None and not self._is_forgotten(handle):
                self._clusters[handle.name] = self._attached(handle, backend)
            elif (known is not None and not known.owned and known.handle is not None
                  and known.handle.created_at == handle.created_at and known.spec != handle.spec):
                known.handle = handle  # its owner scaled it since we attached
                self._set_spec(known, handle.spec)
        return sorted(self._clusters.values(), key=lambda c: c.name)

    async def attach(self, name: str) -> Cluster:
        """Find a running cluster by name (started by any process of this user)."""
        if name in self._clusters:
            return self._clusters[name]
        found = next(((h, b) for h, b in await self._discover()
                      if h.name == name and not self._is_forgotten(h)), None)
        if found is None:
            raise ClusterNotFound(f"no running cluster named {name!r}")
        if name in self._clusters:  # registered by a concurrent request during discover()
            return self._clusters[name]
        cluster = self._attached(*found)
        self._clusters[name] = cluster
        await self.refresh(cluster)
        return cluster

    async def adopt(self, name: str) -> Cluster:
        """Take over autoscaling of a running cluster whose previous owner is gone."""
        cluster = await self.attach(name)
        if not cluster.owned:
            cluster.owned = True
            cluster.events.add(time.time(), "info", "this server now autoscales the cluster")
            self._start_autoscaler(cluster)
        return cluster

    async def refresh(self, cluster: Cluster) -> Cluster:
        """Bring an attached cluster's observation up to date (owned ones refresh themselves)."""
        if cluster.reconciler is not None and cluster.scope is None and cluster.handle is not None:
            try:
                await cluster.reconciler.step()
            except ClusterNotFound:
                self._forget(cluster, "stopped by another process")
        return cluster

    async def scale(self, name: str, group: str, min_nodes: int, max_nodes: int, *,
                    wait: bool = False, progress: Progress | None = None) -> Cluster:
        """Set a group's range. `scale(name, "cpu", 2, 2)` pins it to exactly 2 nodes; with
        `wait`, return once the group has settled inside the range."""
        cluster = await self.change_groups(name, {group: {"min": min_nodes, "max": max_nodes}})
        if wait:
            await wait_for_group(cluster, group, progress)
        return cluster

    async def change_groups(self, name: str, changes: Mapping[str, Mapping[str, Any]]) -> Cluster:
        """Change several groups' fields at once, all or nothing: the whole change is parsed
        and checked against the policy before any of it is applied, so a refused change
        (unknown group, bad value, over a cap) leaves the cluster exactly as it was."""
        cluster = await self.get(name)
        new_spec = replace(cluster.spec, groups=parse_group_changes(changes, cluster.spec.groups))
        if not cluster.owned:
            raise NotOwnedError(f"cluster {name!r} is autoscaled by the process that started it; "
                                f"change it there (or through the Jupyter server that owns it)")
        self.policy.check(new_spec, self._committed_specs(except_name=name), spent=self._user_spent())
        await cluster.backend.check_spec(new_spec)
        if cluster.saved_ranges is not None:  # scaled to 0 while idle: the user's range wins
            cluster.saved_ranges = None
        before = {g.name: g for g in cluster.spec.groups}
        if cluster.handle is not None:  # written first: other processes and a restarted server see it
            cluster.handle = await cluster.backend.save_spec(cluster.handle, new_spec)
        self._set_spec(cluster, new_spec)
        for group in new_spec.groups:
            if group.name in changes and group != before[group.name]:
                cluster.events.add(time.time(), "scaled",
                                   f"{group.name} group set to {group.min}..{group.max} nodes")
        return cluster

    async def stop(self, name: str) -> None:
        cluster = self._clusters.get(name) or await self.attach(name)
        await self._stop(cluster, reason="stopped by request")

    async def close(self) -> None:
        await self._close_clusters()

    # --- helpers -----------------------------------------------------------------------------

    def _committed_specs(self, *, except_name: str) -> list[ClusterSpec]:
        """What this user's other clusters may grow to (idle-scaled ones at their saved range)."""
        specs = []
        for cluster in self._clusters.values():
            if cluster.name == except_name or not cluster.owned or cluster.state in ("failed", "stopped"):
                continue
            spec = cluster.spec
            for group, (low, high) in (cluster.saved_ranges or {}).items():
                spec = spec.with_group_range(group, low, high)
            specs.append(spec)
        return specs

    def _set_spec(self, cluster: Cluster, spec: ClusterSpec) -> None:
        cluster.spec = spec
        if cluster.reconciler is not None:
            cluster.reconciler.spec = spec
            cluster.reconciler.wake()

    def backend_for(self, name: str) -> Backend:
        """The backend called `name`, built on first use with this manager's configuration.
        A backend that cannot work here (no Kubernetes configuration) is a SpecError on
        `backend`, so the caller sees which field to change."""
        if name not in self._backends:
            self._backends[name] = self._build_backend(name)
        return self._backends[name]

    async def _discover(self) -> list[tuple[ClusterHandle, Backend]]:
        """Running clusters of this owner on every backend in use, with their backend."""
        found = []
        for backend in list(self._backends.values()):
            found += [(handle, backend) for handle in await backend.discover()]
        return found

    def _owner_kwargs(self, backend: Backend) -> dict[str, Any]:
        """Local clusters started by a manager that stops them on close die with its process."""
        if backend.name == "local" and self.stop_clusters_on_close:
            return {"owner_pid": os.getpid()}
        return {}

    def _dashboard_url(self, handle: ClusterHandle) -> str:
        if self.dashboard_url_template:
            return self.dashboard_url_template.format(name=handle.name, address=handle.dashboard_address)
        return f"http://{handle.dashboard_address}"

    def _step(self, cluster: Cluster, report: Progress, step: str, done: int, total: int) -> None:
        cluster.step = step
        report(step, done, total)

    def _reconciler(self, cluster: Cluster, act: bool) -> Reconciler:
        assert cluster.handle is not None
        in_flight = self.max_launch_in_flight
        settings = AutoscalerSettings(
            interval_s=self.autoscale_interval_s, join_timeout_s=self.join_timeout_s, backoff_s=self.backoff_s,
            max_launch_in_flight=in_flight if in_flight is not None else cluster.backend.launch_concurrency())
        return Reconciler(handle=cluster.handle, backend=cluster.backend, reader=GcsReader(cluster.handle.address),
                          events=cluster.events, spec=cluster.spec, settings=settings, act=act, log=self.log)

    def _attached(self, handle: ClusterHandle, backend: Backend) -> Cluster:
        cluster = Cluster(spec=handle.spec, backend=backend, owned=False, handle=handle, state="running",
                          dashboard_url=self._dashboard_url(handle), policy=self.policy)
        cluster.reconciler = self._reconciler(cluster, act=False)
        return cluster

    def _start_autoscaler(self, cluster: Cluster) -> None:
        assert cluster.handle is not None
        if self._tg is None:
            raise RuntimeError("ClusterManager.serve() is not running")
        cluster.reconciler = self._reconciler(cluster, act=True)
        cluster.scope = anyio.CancelScope()

        async def autoscale() -> None:
            assert cluster.scope is not None and cluster.reconciler is not None
            with cluster.scope:
                try:
                    await cluster.reconciler.run()
                except ClusterNotFound:
                    self._forget(cluster, "stopped by another process")
                except HeadLost as exc:
                    await self._lost(cluster, str(exc))

        self._tg.start_soon(autoscale, name=f"raykube-autoscaler-{cluster.name}")
        limits = LimitsKeeper(cluster, interval_s=self.autoscale_interval_s, set_spec=self._set_spec,
                              stop=self._stop, log=self.log, user_spent=self._user_spent)
        self._tg.start_soon(limits.run, name=f"raykube-policy-{cluster.name}")

    async def _fail(self, cluster: Cluster, exc: BaseException, started: float, *, keep: bool) -> None:
        """Remove everything the cluster started. `keep`: leave the record (state failed, with
        the error) for the UI to show until it is deleted."""
        stopped = cluster.state == "stopping"  # cancelled by stop(), which finishes the job
        with anyio.CancelScope(shield=True):
            if cluster.scope is not None:
                cluster.scope.cancel()
            if cluster.handle is not None:
                await cluster.backend.delete_cluster(cluster.handle)
        if stopped:
            return
        cluster.state = "failed"
        cluster.step = ""
        cluster.error = one_line(exc)
        if isinstance(exc, TimeoutError):
            cluster.error = f"the cluster was not ready within {self.start_timeout_s:.0f} s"
        if not keep:
            self._clusters.pop(cluster.name, None)
        cluster.events.add(time.time(), "error", f"cluster failed to start: {cluster.error}")
        self.log.warning("Ray cluster %s failed to start after %.1f s: %s", cluster.name,
                         time.monotonic() - started, exc)

    async def _stop(self, cluster: Cluster, *, reason: str) -> None:
        failed = cluster.state == "failed"  # its processes are already gone
        cluster.state = "stopping"
        for scope in (cluster.start_scope, cluster.scope):
            if scope is not None:
                scope.cancel()
        if cluster.start_done is not None:
            with anyio.CancelScope(shield=True):
                await cluster.start_done.wait()  # a cancelled start removes what it made first
        if cluster.handle is not None and not failed:
            await cluster.backend.delete_cluster(cluster.handle)  # safe after that removal too
        self._forget(cluster, reason)

    async def _lost(self, cluster: Cluster, reason: str) -> None:
        """The head died: remove what is left and keep the record, failed, saying why."""
        cluster.state = "failed"
        cluster.error = reason
        cluster.events.add(time.time(), "error", f"cluster failed: {reason}")
        self.log.error("Ray cluster %s failed: %s", cluster.name, reason)
        assert cluster.handle is not None
        with anyio.CancelScope(shield=True):
            await cluster.backend.delete_cluster(cluster.handle)

    def _user_spent(self) -> float:
        """What the owner's clusters have cost since this manager started (the policy's budget)."""
        return self._retired_cost + sum(c.cost.so_far for c in self._clusters.values())

    def _forget(self, cluster: Cluster, reason: str) -> None:
        if self._clusters.get(cluster.name) is cluster:
            cluster.cost.stop(time.time())
            self._retired_cost += cluster.cost.so_far
        cluster.state = "stopped"
        cluster.events.add(time.time(), "stopped", f"cluster stopped: {reason}")
        if self._clusters.get(cluster.name) is cluster:
            del self._clusters[cluster.name]
        # A list() or attach() that looked before the stop finished must not bring it back.
        self._forgotten[cluster.name] = time.time()

    def _is_forgotten(self, handle: ClusterHandle) -> bool:
        """A handle of a cluster this manager has stopped (a newer one of that name is not)."""
        return handle.created_at <= self._forgotten.get(handle.name, 0.0)
