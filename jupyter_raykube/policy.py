"""What an administrator allows one user: resource caps checked before anything is created,
and the idle and lifetime rules that keep clusters from outliving their use.

On JupyterHub the spawner hook (`jupyter_raykube.hub`) writes the user's policy into the
single-user server's environment as `RAYKUBE_POLICY` (JSON); the manager reads it from there,
so the user cannot raise their own caps from inside their server. Caps count the most a
cluster may grow to (its groups' maxes), not what runs now: a request that could exceed a cap
is refused up front instead of stalling later with pending work.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from traitlets import TraitError, TraitType

from .errors import PolicyError, SpecError, echo
from .scheduling import SCHEDULING_FIELDS
from .spec import ClusterSpec

POLICY_ENV = "RAYKUBE_POLICY"
QUOTA_NAME = "raykube"  # the ResourceQuota (and LimitRange) the hub hook writes in the user's namespace
IdleAction = Literal["scale_to_zero", "restore", "stop"]


@dataclass(frozen=True)
class Usage:
    """The most a set of clusters may use: CPUs and GPUs of the head plus every worker at max."""

    cpus: float = 0.0
    gpus: float = 0.0
    workers: int = 0
    clusters: int = 0

    @classmethod
    def of(cls, spec: ClusterSpec) -> Usage:
        workers = sum(g.max for g in spec.groups)
        if spec.max_workers is not None:
            workers = min(workers, spec.max_workers)
        # With a cluster-wide max, the costliest groups could still fill it.
        cpus = _at_most(((g.cpus, g.max) for g in spec.groups), workers)
        gpus = _at_most(((g.gpus, g.max) for g in spec.groups), workers)
        return cls(cpus=spec.head.cpus + cpus, gpus=gpus, workers=workers, clusters=1)

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.cpus + other.cpus, self.gpus + other.gpus,
                     self.workers + other.workers, self.clusters + other.clusters)


@dataclass(frozen=True)
class Policy:
    """Caps for one user, across all their clusters; None means no cap."""

    max_cpus: float | None = None
    max_gpus: float | None = None
    max_workers: int | None = None
    max_clusters: int | None = None
    max_lifetime_s: float | None = None  # a cluster older than this is stopped
    idle_scale_down_s: float | None = None  # no real work (tasks, actors, jobs) this long: workers scaled to 0
    idle_stop_s: float | None = None  # ... and this long: the cluster is stopped
    # What all of the user's clusters on this server may cost (groups' `cost` per node-hour):
    # an event at 80 %, every group scaled to 0 workers at 100 % (cost.py)
    budget: float | None = None
    # Which of a group's `scheduling` fields (scheduling.SCHEDULING_FIELDS) the user's own
    # requests may set; the admin's per-group scheduling applies either way.
    user_scheduling: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (not isinstance(self.user_scheduling, (list, tuple))
                or not set(self.user_scheduling) <= set(SCHEDULING_FIELDS)):
            raise SpecError("policy.user_scheduling", self.user_scheduling,
                            f"a list of any of {', '.join(SCHEDULING_FIELDS)}")
        object.__setattr__(self, "user_scheduling", tuple(self.user_scheduling))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "user_scheduling" and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise SpecError(f"policy.{f.name}", value, "a number >= 0, or null for no limit")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Policy:
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise SpecError(f"policy.{key}", data[key], f"known limits are {', '.join(sorted(known))}")
        return cls(**dict(data))

    @classmethod
    def from_env(cls) -> Policy:
        """The policy the hub put in this server's environment; no limits without one."""
        text = os.environ.get(POLICY_ENV, "").strip()
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(POLICY_ENV, text, f"a JSON object of limits ({exc})") from None
        if not isinstance(data, Mapping):
            raise SpecError(POLICY_ENV, text, "a JSON object of limits")
        return cls.from_mapping(data)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "user_scheduling": list(self.user_scheduling)}

    def check(self, spec: ClusterSpec, others: Iterable[ClusterSpec], spent: float = 0.0) -> None:
        """Refuse `spec` (a new cluster, or a changed one, listed without itself in `others`)
        when it could take this user over a cap, or could add workers once the clusters have
        `spent` the budget. The message names the cap, what the request asks and what is left."""
        self.check_scheduling(spec)
        others = list(others)
        before = sum((Usage.of(o) for o in others), Usage())
        wanted = Usage.of(spec)
        if self.budget is not None and spent >= self.budget and wanted.workers > 0:
            raise PolicyError(f"your clusters have cost {_num(spent)} of your budget of {_num(self.budget)}: "
                              f"no workers can be added (a max of 0 is allowed) until your administrator "
                              f"raises it")
        after = before + wanted
        for cap, used, asked, unit in (
                (self.max_cpus, after.cpus, wanted.cpus, "CPUs"),
                (self.max_gpus, after.gpus, wanted.gpus, "GPUs"),
                (self.max_workers, after.workers, wanted.workers, "worker nodes"),
                (self.max_clusters, after.clusters, wanted.clusters, "clusters")):
            if cap is not None and used > cap:
                left = max(0.0, cap - (used - asked))
                raise PolicyError(
                    f"{spec.name!r} could use up to {_num(asked)} {unit} and your other clusters "
                    f"{_num(used - asked)}; your administrator allows {_num(cap)} {unit} in all, so at most "
                    f"{_num(left)} are left: lower the groups' max (or stop another cluster)")

    def check_scheduling(self, spec: ClusterSpec) -> None:
        """Refuse a group's `scheduling` field the admin has not opened to users: where Pods run
        (a priority class, a spot pool, a node selector) can cost or preempt others."""
        for group in spec.groups:
            for key, value in group.scheduling.items():
                if key not in self.user_scheduling:
                    allowed = (f"only {', '.join(self.user_scheduling)}" if self.user_scheduling
                               else "none of them")
                    raise PolicyError(f"groups.{group.name}.scheduling.{key}={echo(value)}: your administrator "
                                      f"lets users set {allowed} (c.RayKubeHubPolicy.user_scheduling); the "
                                      f"group's Pods are placed as the admin configured")

    def describe(self) -> str:
        """One line for the widget and the sidebar, e.g. "at most 16 CPUs, 1 GPU, 8 workers"."""
        parts = [f"{_num(v)} {unit}" for v, unit in ((self.max_cpus, "CPUs"), (self.max_gpus, "GPUs"),
                                                     (self.max_workers, "workers"),
                                                     (self.max_clusters, "clusters")) if v is not None]
        if self.max_lifetime_s is not None:
            parts.append(f"{describe_duration(self.max_lifetime_s)} lifetime")
        line = f"at most {', '.join(parts)}" if parts else ""
        if self.idle_stop_s is not None:
            line += ("; " if line else "") + f"stopped after {describe_duration(self.idle_stop_s)} idle"
        if self.budget is not None:
            line += ("; " if line else "") + f"a budget of {_num(self.budget)}"
        return line

    def idle_action(self, *, idle_s: float, scaled_down: bool) -> IdleAction | None:
        """What the idle rules want now, for a cluster idle for `idle_s` (0 while in use): no
        task, actor or job running; an attached driver alone does not count."""
        if self.idle_stop_s is not None and idle_s >= self.idle_stop_s:
            return "stop"
        if not scaled_down and self.idle_scale_down_s is not None and idle_s >= self.idle_scale_down_s:
            return "scale_to_zero"
        if scaled_down and idle_s == 0:
            return "restore"
        return None


class PolicyTrait(TraitType[Policy, Any]):
    """A `Policy` setting that config can give as a plain mapping of limits (JSON-like), so
    `c.ClusterManager.policy = {"max_gpus": 1}` works and a bad limit fails at start-up."""

    info_text = "a mapping of limits such as {\"max_cpus\": 16}, or a Policy"

    def validate(self, obj: Any, value: Any) -> Policy:
        if isinstance(value, Policy):
            return value
        if isinstance(value, Mapping):
            try:
                return Policy.from_mapping(value)
            except SpecError as exc:
                raise TraitError(str(exc)) from None
        self.error(obj, value)


def _at_most(per_node: Iterable[tuple[float, int]], nodes: int) -> float:
    """The most of a resource `nodes` workers could hold, taking the richest nodes first."""
    total, left = 0.0, nodes
    for amount, count in sorted(per_node, reverse=True):
        take = min(count, left)
        total += amount * take
        left -= take
    return total


def _num(value: float) -> str:
    return f"{value:g}"


def describe_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
