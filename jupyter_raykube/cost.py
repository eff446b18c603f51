"""What a cluster costs. A group's `cost` is read as its price per node-hour, in whatever unit
the administrator prices in (the planner compares groups by the same number). Every node of a
priced group that exists counts, starting ones too: clouds bill from the moment a machine is
provisioned. The head and unpriced groups count nothing.

One `CostMeter` per cluster, advanced once per policy round; the user's budget (policy
`budget`) is compared with what all of the user's clusters on this server have cost since it
started."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypedDict

from .spec import ClusterSpec

BILLED_STATES = frozenset({"starting", "running", "draining"})
BUDGET_WARNING = 0.8  # of the budget: an event says so once


class CostJson(TypedDict):
    per_hour: float  # what the cluster's nodes cost now, per hour
    so_far: float  # what it has cost since it started
    user_so_far: float  # all of this user's clusters on this server
    budget: float | None  # the user's budget (policy), None: none


def priced(spec: ClusterSpec) -> bool:
    return any(g.cost is not None for g in spec.groups)


def hourly_rate(spec: ClusterSpec, nodes: Iterable[Any]) -> float:
    """The price per hour of the nodes that exist now (`ObservedNode`s: `group`, `state`)."""
    price = {g.name: g.cost for g in spec.groups if g.cost is not None}
    return sum(price.get(n.group, 0.0) for n in nodes if n.state in BILLED_STATES)


@dataclass
class CostMeter:
    """Cost so far: the hourly rate seen at each round, held until the next."""

    so_far: float = 0.0
    per_hour: float = 0.0
    since: float | None = None  # epoch s of the last advance
    user_so_far: float = 0.0  # all of the owner's clusters on this server, at the last round

    def advance(self, now: float, per_hour: float) -> None:
        if self.since is not None:
            self.so_far += self.per_hour * max(0.0, now - self.since) / 3600.0
        self.since, self.per_hour = now, per_hour

    def stop(self, now: float) -> None:
        """The cluster is gone: count up to now, nothing after."""
        self.advance(now, 0.0)
