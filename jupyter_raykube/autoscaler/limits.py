"""The administrator's lifetime and idle rules for one cluster, checked once per autoscaler
round beside (not inside) the autoscaler loop, so stopping the cluster does not cancel the task
doing it. Idle means no real work: no task or actor holding CPUs/GPUs, no job running tasks or
submitted through Ray Jobs, nothing pending; a driver merely attached does not count. After
`idle_scale_down_s` every group is scaled to 0 (new work, pending, gets its workers back),
after `idle_stop_s` the cluster is stopped. A failing round is an event, as in the autoscaler."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..cost import BUDGET_WARNING, hourly_rate, priced
from ..formatting import number
from ..policy import Policy, describe_duration
from ..spec import ClusterSpec

if TYPE_CHECKING:
    from ..cluster import Cluster

SetSpec = Callable[["Cluster", ClusterSpec], None]
Stop = Callable[..., Awaitable[None]]  # stop(cluster, reason=...)


class LimitsKeeper:
    """Runs the rules of `cluster.policy` until the cluster stops."""

    def __init__(self, cluster: Cluster, *, interval_s: float, set_spec: SetSpec, stop: Stop,
                 log: logging.Logger | logging.LoggerAdapter[Any],
                 user_spent: Callable[[], float] = lambda: 0.0) -> None:
        self.cluster = cluster
        self.interval_s = interval_s
        self.set_spec = set_spec
        self.stop = stop
        self.log = log
        self.user_spent = user_spent  # what all of the owner's clusters have cost (the budget's measure)
        self._budget_warned = False

    async def run(self) -> None:
        cluster, policy = self.cluster, self.cluster.policy
        if (policy.max_lifetime_s is None and policy.idle_scale_down_s is None and policy.idle_stop_s is None
                and policy.budget is None and not priced(cluster.spec)):
            return
        while cluster.state not in ("stopping", "stopped", "failed"):
            await anyio.sleep(self.interval_s)
            try:
                await self.apply(policy)
            except Exception as exc:  # noqa: BLE001 - one bad round must not end the rules
                self.log.exception("policy round failed for %s", cluster.name)
                cluster.events.add(time.time(), "error", f"limits check failed: {exc}")

    async def apply(self, policy: Policy) -> None:
        cluster = self.cluster
        obs, handle, now = cluster.observation, cluster.handle, time.time()
        if obs is None or handle is None:
            return
        cluster.cost.advance(now, hourly_rate(cluster.spec, obs.nodes))  # a start's workers are billed too
        cluster.cost.user_so_far = self.user_spent()
        if cluster.state != "running":
            return
        if policy.max_lifetime_s is not None and now - handle.created_at >= policy.max_lifetime_s:
            await self._stop(f"it reached the maximum lifetime of "
                             f"{describe_duration(policy.max_lifetime_s)} set by your administrator")
            return
        # Real work only: a notebook left attached (a connected driver doing nothing) is idle.
        busy = obs.ray.working_jobs > 0 or bool(obs.pending) or any(_running_work(n) for n in obs.nodes)
        cluster.idle_since = None if busy else (cluster.idle_since or now)
        idle_s = 0.0 if cluster.idle_since is None else now - cluster.idle_since
        action = policy.idle_action(idle_s=idle_s, scaled_down=cluster.saved_ranges is not None)
        why = f"idle for {describe_duration(idle_s)} (no task, actor or job running, nothing pending)"
        if action == "stop":
            await self._stop(why)
        elif action == "scale_to_zero":
            cluster.saved_ranges = {g.name: (g.min, g.max) for g in cluster.spec.groups}
            self.set_spec(cluster, _no_workers(cluster.spec))
            cluster.events.add(now, "scale_down", f"{why}: every group scaled to 0 workers; "
                                                  f"new work brings them back")
        elif action == "restore" and cluster.saved_ranges is not None:
            spec = cluster.spec
            for name, (low, high) in cluster.saved_ranges.items():
                spec = spec.with_group_range(name, low, high)
            ranges = ", ".join(f"{g.name} {g.min}..{g.max}" for g in spec.groups)
            cluster.saved_ranges = None
            self.set_spec(cluster, spec)
            cluster.events.add(now, "scaled", f"in use again: group ranges restored ({ranges})")
        self._keep_budget(policy, now)

    def _keep_budget(self, policy: Policy, now: float) -> None:
        """Warn once at 80 % of the user's budget; at 100 % scale every group to 0 workers (again
        after any change that raised a max: running work is drained as nodes go idle)."""
        cluster, budget = self.cluster, policy.budget
        if budget is None:
            return
        spent = cluster.cost.user_so_far
        what = f"{number(spent)} of your budget of {number(budget)} is spent"
        if spent >= budget:
            if any(g.max > 0 for g in cluster.spec.groups):
                self.set_spec(cluster, _no_workers(cluster.spec))
                cluster.events.add(now, "scale_down", f"{what}: every group scaled to 0 workers")
        elif spent >= BUDGET_WARNING * budget and not self._budget_warned:
            self._budget_warned = True
            cluster.events.add(now, "info", f"{what} ({number(100 * spent / budget, 0)} %)")

    async def _stop(self, reason: str) -> None:
        self.cluster.events.add(time.time(), "info", f"stopping the cluster: {reason}")
        await self.stop(self.cluster, reason=reason)


def _no_workers(spec: ClusterSpec) -> ClusterSpec:
    for group in spec.groups:
        spec = spec.with_group_range(group.name, 0, 0)
    return spec


def _running_work(node: Any) -> bool:
    """A node with CPUs or GPUs in use (object-store bytes alone do not keep a cluster busy)."""
    used = node.ray.used if node.ray else {}
    return any(v > 0 for k, v in used.items() if k in ("CPU", "GPU"))
