"""Read what a cluster needs and what it has, straight from its GCS.

One `get_cluster_resource_state` call (0.5–3 ms) returns every node with its total, available
and idle time, and every pending request already grouped by shape: tasks and actors, placement
groups (as gangs) and `request_resources` constraints (these need `RAY_enable_autoscaler_v2=1`
on the head, which the backends set). The dashboard and `ray status` lag by seconds; this does
not. Calls block, so callers on an event loop run them in a thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from ray._raylet import GcsClient
from ray.core.generated import autoscaler_pb2, common_pb2

from .planner import GangDemand, LabelConstraint, LabelSelector, ResourceDemand

RayNodeStatus = Literal["running", "idle", "draining", "dead"]
_STATUS: dict[int, RayNodeStatus] = {
    autoscaler_pb2.NodeStatus.RUNNING: "running",
    autoscaler_pb2.NodeStatus.IDLE: "idle",
    autoscaler_pb2.NodeStatus.DRAINING: "draining",
    autoscaler_pb2.NodeStatus.DEAD: "dead",
}
_STRATEGIES = ("STRICT_SPREAD", "STRICT_PACK", "SPREAD", "PACK")
_LABEL_OPS = {common_pb2.LabelSelectorOperator.Value("LABEL_OPERATOR_IN"): "in",
              common_pb2.LabelSelectorOperator.Value("LABEL_OPERATOR_NOT_IN"): "not_in"}
_IDLE_TERMINATION = autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_IDLE_TERMINATION")

_SUBMISSION_ID = "job_submission_id"  # in the JobConfig metadata of a job submitted through Ray Jobs


@dataclass(frozen=True)
class RayNode:
    """A node as the GCS sees it. `instance_id` is the backend node name we set."""

    node_id: str  # hex
    instance_id: str
    node_type: str
    status: RayNodeStatus
    idle_s: float
    total: Mapping[str, float]
    available: Mapping[str, float]
    activity: tuple[str, ...]
    ip: str

    @property
    def used(self) -> dict[str, float]:
        return {k: v - self.available.get(k, 0.0) for k, v in self.total.items()}


@dataclass(frozen=True)
class ClusterState:
    nodes: tuple[RayNode, ...]
    demand: tuple[ResourceDemand, ...]
    gangs: tuple[GangDemand, ...]
    constraints: tuple[ResourceDemand, ...]
    drivers: int = 0  # connected drivers (live jobs): a cluster someone is attached to is in use
    working_jobs: int = 0  # live jobs running tasks, and submitted Ray Jobs: real work, not a mere connection


class GcsReader:
    """A GCS client for one cluster. The process must already present the cluster's token."""

    def __init__(self, address: str, *, timeout_s: float = 5.0) -> None:
        self.address = address
        self._client = GcsClient(address=address)
        self._timeout_s = timeout_s

    def read(self) -> ClusterState:
        """One bounded call: a GCS that does not answer raises instead of hanging a round."""
        reply = autoscaler_pb2.GetClusterResourceStateReply()
        reply.ParseFromString(self._client.get_cluster_resource_state(timeout_s=self._timeout_s))
        jobs = self._client.get_all_job_info(skip_submission_job_info_field=True,
                                             skip_is_running_tasks_field=False, timeout=self._timeout_s)
        live = [job for job in jobs.values() if not job.is_dead]
        working = sum(1 for job in live if job.is_running_tasks or job.config.metadata.get(_SUBMISSION_ID))
        return replace(parse_state(reply.cluster_resource_state), drivers=len(live), working_jobs=working)

    def drain_idle_node(self, node_id: str, message: str) -> tuple[bool, str]:
        """Ask Ray to drain an idle node; the raylet refuses if the node is running work or
        holds primary object copies. Returns (accepted, why not)."""
        accepted, rejection = self._client.drain_node(node_id, _IDLE_TERMINATION, message, 0)
        return bool(accepted), str(rejection or "")


def parse_state(state: autoscaler_pb2.ClusterResourceState) -> ClusterState:
    """Protobuf to plain frozen data (the planner never sees Ray types)."""
    nodes = tuple(
        RayNode(node_id=n.node_id.hex(), instance_id=n.instance_id, node_type=n.ray_node_type_name,
                status=_STATUS.get(n.status, "running"), idle_s=n.idle_duration_ms / 1000.0,
                total=dict(n.total_resources), available=dict(n.available_resources),
                activity=tuple(n.node_activity), ip=n.node_ip_address)
        for n in state.node_states)
    demand = tuple(ResourceDemand(shape=dict(r.request.resources_bundle), count=r.count,
                                  selectors=_selectors(r.request))
                   for r in state.pending_resource_requests if r.count > 0)
    gangs = tuple(_gang(index, g) for index, g in enumerate(state.pending_gang_resource_requests))
    constraints = tuple(ResourceDemand(shape=dict(r.request.resources_bundle), count=r.count)
                        for c in state.cluster_resource_constraints for r in c.resource_requests
                        if r.count > 0)
    return ClusterState(nodes=nodes, demand=demand, gangs=gangs, constraints=constraints)


def _gang(index: int, gang: autoscaler_pb2.GangResourceRequest) -> GangDemand:
    """A placement group. Ray writes "<pg id>:<STRATEGY>|<state>" in `details`; STRICT_SPREAD
    bundles also carry anti-affinity and STRICT_PACK affinity constraints."""
    pg_id, _, rest = gang.details.partition(":")
    strategy = next((s for s in _STRATEGIES if rest.startswith(s)), "")
    if not strategy:
        constraints = [c for r in gang.requests for c in r.placement_constraints]
        strategy = ("STRICT_SPREAD" if any(c.HasField("anti_affinity") for c in constraints)
                    else "STRICT_PACK" if any(c.HasField("affinity") for c in constraints) else "PACK")
    bundles = tuple(dict(r.resources_bundle) for r in gang.requests)
    selectors = tuple(_selectors(r) for r in gang.requests)
    return GangDemand(id=pg_id or f"gang-{index}", strategy=strategy, bundles=bundles,
                      bundle_selectors=selectors if any(selectors) else ())


def _selectors(request: autoscaler_pb2.ResourceRequest) -> tuple[LabelSelector, ...]:
    """A request's ``label_selector`` and then its ``fallback_strategy`` selectors, as the GCS
    lists them: a node must meet every constraint of one of them. A selector without
    constraints matches every node, so the request is not restricted at all."""
    out = []
    for selector in request.label_selectors:
        constraints = tuple(sorted(
            (LabelConstraint(c.label_key, _LABEL_OPS[c.operator], tuple(sorted(c.label_values)))  # type: ignore[arg-type]
             for c in selector.label_constraints if c.operator in _LABEL_OPS),
            key=lambda c: (c.key, c.op, c.values)))
        if not constraints:
            return ()
        out.append(constraints)
    return tuple(out)
