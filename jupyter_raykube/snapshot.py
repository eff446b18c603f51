"""The snapshot: one JSON shape for the widget, the sidebar, `%raycluster status`, the REST API
and the tests, built here and nowhere else. The TypedDicts are the contract; the sidebar's
TypeScript interfaces (labextension/src/api.ts) mirror them field for field. Numbers are plain
JSON numbers in base units (bytes, seconds); front-ends format them (formatting.py)."""

from __future__ import annotations

import platform
import time
from typing import TYPE_CHECKING, Any, TypedDict

import ray

from .autoscaler.reconciler import describe_pending
from .backends.base import HEAD_GROUP, Quota
from .cost import CostJson, priced

if TYPE_CHECKING:
    from .cluster import Cluster


class GroupJson(TypedDict):
    name: str
    min: int
    max: int
    warm: int  # idle nodes kept ready beyond demand
    resources: dict[str, float]  # what one node offers: CPU, GPU, memory (bytes), custom
    labels: dict[str, str]  # Ray node labels of its nodes: the group's own, ray.io/accelerator-type, ray.io/market-type
    nodes: int  # running
    starting: int
    draining: int


class NodeJson(TypedDict):
    id: str  # the Ray node id ("" until the node joins)
    name: str  # the process or Pod
    group: str
    state: str  # starting, running, draining
    head: bool
    resources_total: dict[str, float]
    resources_used: dict[str, float]
    object_store_used_bytes: float
    object_store_total_bytes: float
    idle_s: float
    activity: list[str]
    message: str  # why it is pending, how it exited
    age_s: float


class EventJson(TypedDict):
    id: int  # increasing within the cluster's log: GET events?after=ID follows it
    time: str  # ISO 8601, UTC ("2026-11-22T10:00:00Z")
    kind: str
    message: str


class QuotaUseJson(TypedDict):
    resource: str  # the quota's key: "requests.cpu", "requests.memory", "requests.nvidia.com/gpu", "pods"
    used: float  # base units: cores, bytes, devices, objects
    hard: float


class QuotaJson(TypedDict):
    """The platform's limit on everything the user runs (the hub hook's ResourceQuota), which
    the user's own configuration cannot raise; formatting.quota_text makes it one line."""

    name: str
    namespace: str
    resources: list[QuotaUseJson]


class SnapshotJson(TypedDict):
    name: str
    backend: str
    state: str  # starting, running, stopping, stopped, failed
    step: str  # what a start is doing now
    error: str  # one line, when failed
    owner: str
    owned_here: bool  # this process autoscales it (else: attached)
    address: str
    client_address: str
    image: str
    dashboard_url: str
    ray_version: str
    python_version: str
    created_at: float | None
    idle_timeout_s: float
    idle_s: float
    policy: dict[str, Any]  # the user's limits, plus "summary": one line
    max_workers: int | None
    groups: list[GroupJson]
    nodes: list[NodeJson]
    demand: list[dict[str, object]]  # see autoscaler.reconciler.describe_pending
    events: list[EventJson]  # oldest first
    cost: CostJson | None  # when a group is priced or the policy sets a budget (cost.py)
    quota: QuotaJson | None  # the namespace's ResourceQuota `raykube`; None: local, or no such quota


def cluster_snapshot(cluster: Cluster) -> SnapshotJson:
    obs = cluster.observation
    nodes = obs.nodes if obs else ()
    groups: list[GroupJson] = []
    for group in cluster.spec.groups:
        mine = [n for n in nodes if n.group == group.name]
        groups.append({"name": group.name, "min": group.min, "max": group.max, "warm": group.warm,
                       "resources": group.resources, "labels": cluster.backend.node_labels(cluster.spec, group),
                       "nodes": sum(1 for n in mine if n.state == "running"),
                       "starting": sum(1 for n in mine if n.state == "starting"),
                       "draining": sum(1 for n in mine if n.state == "draining")})
    handle = cluster.handle
    return {
        "name": cluster.name,
        "backend": cluster.spec.backend,
        "state": cluster.state,
        "step": cluster.step,
        "error": cluster.error,
        "owner": handle.owner if handle else cluster.owner,
        "owned_here": cluster.owned,
        "address": handle.address if handle else "",
        "client_address": handle.client_address if handle else "",
        "image": str(handle.details.get("image", "")) if handle else "",
        "dashboard_url": cluster.dashboard_url,
        "ray_version": ray.__version__,
        "python_version": platform.python_version().rsplit(".", 1)[0],
        "created_at": handle.created_at if handle else None,
        "idle_timeout_s": cluster.spec.idle_timeout_s,
        "idle_s": max(0.0, time.time() - cluster.idle_since) if cluster.idle_since is not None else 0.0,
        "policy": {**cluster.policy.to_json(), "summary": cluster.policy.describe()},
        "max_workers": cluster.spec.max_workers,
        "groups": groups,
        "nodes": [node_json(n, obs.at if obs else 0.0) for n in nodes],
        "demand": [describe_pending(p) for p in (obs.pending if obs else ())],
        "events": cluster.events.to_json(last=50),  # type: ignore[typeddict-item]
        "cost": cost_json(cluster),
        "quota": quota_json(obs.quota) if obs else None,
    }


def quota_json(quota: Quota | None) -> QuotaJson | None:
    if quota is None:
        return None
    return {"name": quota.name, "namespace": quota.namespace,
            "resources": [{"resource": r.resource, "used": r.used, "hard": r.hard} for r in quota.resources]}


def cost_json(cluster: Cluster) -> CostJson | None:
    budget = cluster.policy.budget
    if budget is None and not priced(cluster.spec):
        return None
    meter = cluster.cost
    return {"per_hour": meter.per_hour, "so_far": meter.so_far,
            "user_so_far": max(meter.user_so_far, meter.so_far), "budget": budget}


def node_json(node: Any, now: float) -> NodeJson:
    ray_node = node.ray
    total = dict(ray_node.total) if ray_node else {}
    used = ray_node.used if ray_node else {}
    return {
        "id": ray_node.node_id if ray_node else "",
        "name": node.name,
        "group": node.group,
        "state": node.state,
        "head": node.group == HEAD_GROUP,
        "resources_total": {k: v for k, v in total.items() if not k.startswith("node:") and k != "object_store_memory"},
        "resources_used": {k: v for k, v in used.items() if not k.startswith("node:") and k != "object_store_memory"},
        "object_store_used_bytes": used.get("object_store_memory", 0.0),
        "object_store_total_bytes": total.get("object_store_memory", 0.0),
        "idle_s": ray_node.idle_s if ray_node else 0.0,
        "activity": list(ray_node.activity) if ray_node else [],
        "message": node.message,
        "age_s": max(0.0, now - node.created_at),
    }
