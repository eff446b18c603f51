"""Feed a ``PlanRequest`` to Ray 2.60's own v2 ``ResourceDemandScheduler.schedule``.

No Ray cluster is needed: the scheduler is pure apart from protobuf messages. The conversion
mirrors what Ray's autoscaler builds from the GCS (see ray/autoscaler/v2/scheduler.py and the
GCS autoscaler state manager): one ``ResourceRequestByCount`` per task shape; a placement group
is a ``GangResourceRequest`` whose bundles carry an anti-affinity constraint on the label
``_PG_<id>`` for STRICT_SPREAD and an affinity constraint on it for STRICT_PACK (the scheduler
merges affinity bundles into one request); request_resources is a ``ClusterResourceConstraint``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from ray.autoscaler.v2.instance_manager.config import NodeTypeConfig
from ray.autoscaler.v2.scheduler import (
    ResourceDemandScheduler,
    ResourceRequestSource,
    SchedulingNodeStatus,
    SchedulingReply,
    SchedulingRequest,
)
from ray.autoscaler.v2.schema import AutoscalerInstance
from ray.core.generated.autoscaler_pb2 import (
    AffinityConstraint,
    AntiAffinityConstraint,
    ClusterResourceConstraint,
    GangResourceRequest,
    NodeState,
    NodeStatus,
    PlacementConstraint,
    ResourceRequest,
    ResourceRequestByCount,
)
from ray.core.generated.instance_manager_pb2 import Instance, NodeKind

from jupyter_raykube.autoscaler.planner import PlanRequest

HEAD = "head"


def _rr(shape, constraints=()) -> ResourceRequest:
    return ResourceRequest(resources_bundle={k: float(v) for k, v in shape.items() if v > 0},
                           placement_constraints=list(constraints))


def _instance(i: int, node_type: str, total, available, status: str, idle_s: float,
              kind=NodeKind.WORKER) -> AutoscalerInstance:
    node_id = i.to_bytes(8, "big")
    im = Instance(instance_id=f"i-{i}", cloud_instance_id=f"pod-{i}", instance_type=node_type,
                  status=getattr(Instance, status), node_kind=kind,
                  node_id=node_id.hex() if status == "RAY_RUNNING" else "")
    ray_node = None
    if status == "RAY_RUNNING":
        ray_node = NodeState(node_id=node_id, instance_id=f"pod-{i}", ray_node_type_name=node_type,
                             status=NodeStatus.IDLE if idle_s else NodeStatus.RUNNING,
                             idle_duration_ms=int(idle_s * 1000),
                             total_resources={k: float(v) for k, v in total.items()},
                             available_resources={k: float(v) for k, v in available.items()})
    return AutoscalerInstance(im_instance=im, ray_node=ray_node, cloud_instance_id=f"pod-{i}")


def to_scheduling_request(req: PlanRequest) -> SchedulingRequest:
    """The same snapshot as Ray's autoscaler would hand its scheduler. A head node with no
    resources is added (like ``num-cpus: 0``), so max_workers becomes max_num_nodes - 1."""
    cfgs = {g.name: NodeTypeConfig(name=g.name, min_worker_nodes=g.min_nodes,
                                   max_worker_nodes=g.max_nodes, idle_timeout_s=g.idle_timeout_s,
                                   resources={k: float(v) for k, v in g.resources.items()})
            for g in req.groups}
    cfgs[HEAD] = NodeTypeConfig(name=HEAD, min_worker_nodes=0, max_worker_nodes=0, resources={})
    instances = [_instance(0, HEAD, {}, {}, "RAY_RUNNING", 0, kind=NodeKind.HEAD)]
    for i, n in enumerate(req.nodes, start=1):
        if n.state == "draining":
            continue  # Ray's scheduler does not see stopping instances as capacity either
        status = "RAY_RUNNING" if n.state == "running" else "ALLOCATED"
        instances.append(_instance(i, n.group, n.total, n.available, status, n.idle_s))
    gangs = []
    for g in req.gangs:
        label = f"_PG_{g.id}"
        if g.strategy == "STRICT_SPREAD":
            cons = [PlacementConstraint(anti_affinity=AntiAffinityConstraint(label_name=label, label_value=""))]
        elif g.strategy == "STRICT_PACK":
            cons = [PlacementConstraint(affinity=AffinityConstraint(label_name=label, label_value=""))]
        else:
            cons = []
        gangs.append(GangResourceRequest(requests=[_rr(b, cons) for b in g.bundles],
                                         details=f"{g.id}:{g.strategy}|PENDING"))
    constraints = []
    if req.constraints:
        constraints.append(ClusterResourceConstraint(resource_requests=[
            ResourceRequestByCount(request=_rr(c.shape), count=c.count) for c in req.constraints]))
    return SchedulingRequest(
        disable_launch_config_check=True,
        node_type_configs=cfgs,
        max_num_nodes=None if req.max_workers is None else req.max_workers + 1,
        idle_timeout_s=60.0,
        resource_requests=[ResourceRequestByCount(request=_rr(d.shape), count=d.count)
                           for d in req.demand],
        gang_resource_requests=gangs,
        cluster_resource_constraints=constraints,
        current_instances=instances,
    )


def schedule(req: PlanRequest) -> tuple[SchedulingReply, float]:
    """One timed call of Ray's scheduler (building its protobuf input is not timed)."""
    sched_req = to_scheduling_request(req)
    t = time.perf_counter()
    reply = ResourceDemandScheduler().schedule(sched_req)
    return reply, time.perf_counter() - t


@dataclass
class RayOutcome:
    launch: dict[str, int]
    infeasible: int  # units no node type could ever hold (tasks; +1 per gang/constraint)
    capped: int  # the rest of what Ray's reply lists as infeasible: a max was reached
    gpu_nodes_for_cpu: int  # launched GPU nodes whose only demand is CPU-only
    terminate: int


def outcome(req: PlanRequest, reply: SchedulingReply, gpu_groups: set[str]) -> RayOutcome:
    """Read Ray's reply. Ray lists capped demand as infeasible too; we split the two by asking
    whether any node type could ever hold the request. The per-node contents need the final
    scheduling context, which the reply does not carry, so one extra (untimed) run records it
    through a spy on the last pass."""
    types = [dict(g.resources) for g in req.groups]

    def holdable(bundle) -> bool:
        return any(all(t.get(k, 0) >= v for k, v in bundle.items() if v > 0) for t in types)

    infeasible = capped = 0
    for r in reply.infeasible_resource_requests:
        if holdable(dict(r.resources_bundle)):
            capped += 1
        else:
            infeasible += 1
    by_detail = {f"{g.id}:{g.strategy}|PENDING": g for g in req.gangs}
    for gang in reply.infeasible_gang_resource_requests:
        g = by_detail[gang.details]
        if g.strategy == "STRICT_PACK":
            total = {}
            for b in g.bundles:
                for k, v in b.items():
                    total[k] = total.get(k, 0) + v
            ok = holdable(total)
        else:
            ok = all(holdable(b) for b in g.bundles)
        capped, infeasible = (capped + 1, infeasible) if ok else (capped, infeasible + 1)
    for c in reply.infeasible_cluster_resource_constraints:
        ok = all(holdable(dict(rc.request.resources_bundle)) for rc in c.resource_requests)
        capped, infeasible = (capped + 1, infeasible) if ok else (capped, infeasible + 1)

    gpu_for_cpu = 0
    for node in _final_nodes(req):
        if node.status != SchedulingNodeStatus.TO_LAUNCH or node.node_type not in gpu_groups:
            continue
        requests = [r for source in ResourceRequestSource for r in node.sched_requests[source]]
        if requests and not any(r.resources_bundle.get("GPU", 0) > 0 for r in requests):
            gpu_for_cpu += 1
    launch = Counter()
    for lr in reply.to_launch:
        launch[lr.instance_type] += lr.count
    return RayOutcome(dict(launch), infeasible, capped, gpu_for_cpu, len(reply.to_terminate))


def _final_nodes(req: PlanRequest):
    seen = []
    original = ResourceDemandScheduler._enforce_idle_termination

    def spy(ctx):
        original(ctx)
        seen.extend(ctx.get_nodes())

    ResourceDemandScheduler._enforce_idle_termination = staticmethod(spy)
    try:
        ResourceDemandScheduler().schedule(to_scheduling_request(req))
    finally:
        ResourceDemandScheduler._enforce_idle_termination = staticmethod(original)
    return seen
