"""Node pools of the process kubelet: the Node objects it registers and the Leases it renews.

A real kubelet registers its Node (capacity, allocatable, labels, taints, addresses, the port
the apiserver reaches it on) and then proves it is alive by renewing a Lease in
``kube-node-lease``; the node lifecycle controller marks a Node whose Lease goes stale
``Unknown`` and taints it. These functions do the same with the node's own credentials, so the
Node authorizer and the NodeRestriction admission plugin judge them as they judge a kubelet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Mapping

from kubernetes import client
from kubernetes.client.exceptions import ApiException

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40  # the kubelet's default; renewed every RENEW_S
RENEW_S = 5.0
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@dataclass(frozen=True)
class NodePool:
    """``count`` identical Nodes named ``<name>-<i>``. ``gpus`` adds capacity of ``gpu_resource``
    (``nvidia.com/gpu``, or another vendor's device resource such as ``amd.com/gpu``) and, with
    ``taint_gpus``, the taint of that name GPU pools carry on GKE/EKS/AKS. ``appear_after_s``
    makes the pool scale up from zero the way cluster-autoscaler does (see ``scaleup.py``).
    ``serve_pods=False`` leaves the Pods bound there Pending with an empty status."""

    name: str
    count: int = 1
    cpu: str = "8"
    memory: str = "32Gi"
    gpus: int = 0
    pods: int = 110
    labels: Mapping[str, str] = field(default_factory=dict)
    taint_gpus: bool = True
    gpu_resource: str = "nvidia.com/gpu"
    appear_after_s: float | None = None
    max_count: int | None = None
    serve_pods: bool = True  # False: a hung kubelet, its Node registered but its Pods never started

    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.count)]

    def capacity(self) -> dict[str, str]:
        cap = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.pods), "ephemeral-storage": "100Gi"}
        if self.gpus:
            cap[self.gpu_resource] = str(self.gpus)
        return cap

    def taints(self) -> list[dict[str, str]]:
        return [{**GPU_TAINT, "key": self.gpu_resource}] if self.gpus and self.taint_gpus else []

    def node_labels(self, node_name: str) -> dict[str, str]:
        """Labels a kubelet may set on itself (NodeRestriction refuses most other kubernetes.io ones)."""
        labels = {"kubernetes.io/hostname": node_name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "node.kubernetes.io/instance-type": f"process-{self.cpu}cpu", "raykube.io/test-pool": self.name}
        if self.gpus and self.gpu_resource.startswith("nvidia.com/"):
            labels["nvidia.com/gpu.present"] = "true"
        return {**labels, **self.labels}


DEFAULT_POOLS = (NodePool("cpu-pool", count=2), NodePool("gpu-pool", count=1, gpus=2))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _ready_condition(now: dt.datetime) -> dict[str, Any]:
    return {"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "process kubelet is posting ready status", "lastHeartbeatTime": now.isoformat(),
            "lastTransitionTime": now.isoformat()}


def node_manifest(pool: NodePool, node_name: str, host_ip: str, port: int) -> dict[str, Any]:
    """The Node as the kubelet registers it. Only an InternalIP address: the apiserver dials
    the first of its preferred address types it finds, and a Hostname would not resolve here."""
    now = _now()
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node_name, "labels": pool.node_labels(node_name)},
        "spec": {"taints": pool.taints()},
        "status": {"capacity": pool.capacity(), "allocatable": pool.capacity(),
                   "conditions": [_ready_condition(now)],
                   "addresses": [{"type": "InternalIP", "address": host_ip}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                   "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                                "osImage": "process kubelet", "containerRuntimeVersion": "process://1",
                                "kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "operatingSystem": "linux",
                                "architecture": "amd64"}},
    }


def register_node(api: client.ApiClient, pool: NodePool, node_name: str, host_ip: str, port: int) -> None:
    """Create the Node (as the node itself); a Node left by an earlier run is taken over."""
    core = client.CoreV1Api(api)
    body = node_manifest(pool, node_name, host_ip, port)
    try:
        core.create_node(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.patch_node_status(node_name, {"status": body["status"]})
    renew_lease(api, node_name)


def post_ready(api: client.ApiClient, node_name: str) -> None:
    """Refresh the Ready condition's heartbeat (the kubelet does this on status changes and every 5 min)."""
    now = _now()
    condition = _ready_condition(now)
    client.CoreV1Api(api).patch_node_status(node_name, {"status": {"conditions": [condition]}})


def renew_lease(api: client.ApiClient, node_name: str) -> None:
    """Create or renew ``kube-node-lease/<node>``: what keeps the node lifecycle controller happy."""
    coord = client.CoordinationV1Api(api)
    now = dt.datetime.now(dt.timezone.utc)
    spec = {"holderIdentity": node_name, "leaseDurationSeconds": LEASE_DURATION_S,
            "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    try:
        coord.patch_namespaced_lease(node_name, LEASE_NAMESPACE, {"spec": spec})
    except ApiException as exc:
        if exc.status != 404:
            raise
        coord.create_namespaced_lease(LEASE_NAMESPACE, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                                        "metadata": {"name": node_name}, "spec": spec})
