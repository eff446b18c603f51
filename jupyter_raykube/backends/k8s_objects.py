"""The Kubernetes objects of one Ray cluster, as pure functions (kubespawner's `objects.py`).

`make_head_pod()`, `make_worker_pod()`, `make_head_service()` and `make_token_secret()` are
functions of their arguments only: no client, no environment, no clock, no randomness. Each
returns a `V1*` model; same inputs give an equal object, which is what the golden-dict tests
compare. The backend (`kubernetes.py`) resolves configuration into the frozen `ClusterMeta`,
`PodSettings` and `NodeSize` below and calls these once per object.

What a Ray user expects in these Pods (KubeRay does the same): `ray start --block` as the
container's main process (after raising the open-files limit, Ray opens many sockets),
`--num-cpus/--num-gpus/--memory` equal to what the container is given, a memory-backed
`/dev/shm` sized to the container's memory (the object store lives there, and DataLoader
workers and NCCL need room beside it), Ray's own health endpoints as probes, a metrics port
for Prometheus, the Ray token from a Secret, and `RAY_CLOUD_INSTANCE_ID` = the Pod name, which
is how the autoscaler matches a Ray node back to its Pod. Every Pod passes Pod Security
"restricted" and mounts no service account token (Ray needs no Kubernetes API: the
autoscaler runs in the Jupyter server).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import (
    V1Affinity,
    V1Capabilities,
    V1Container,
    V1ContainerPort,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1HTTPGetAction,
    V1LabelSelector,
    V1LocalObjectReference,
    V1NetworkPolicy,
    V1NetworkPolicyIngressRule,
    V1NetworkPolicyPeer,
    V1NetworkPolicySpec,
    V1ObjectFieldSelector,
    V1ObjectMeta,
    V1OwnerReference,
    V1Pod,
    V1PodSecurityContext,
    V1PodSpec,
    V1Probe,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1Secret,
    V1SecretKeySelector,
    V1SecurityContext,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from ..spec import ClusterSpec

HEAD = "head"
WORKER = "worker"
# A group's GPUs are requested as this extended resource unless configured otherwise
# (amd.com/gpu, gpu.intel.com/i915, a MIG slice such as nvidia.com/mig-1g.10gb).
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
# Ray's node labels for what a node runs on (tasks and actors select on them).
RAY_ACCELERATOR_LABEL = "ray.io/accelerator-type"
RAY_MARKET_LABEL = "ray.io/market-type"


def gpu_toleration(resource: str) -> dict[str, str]:
    """GPU node pools carry a taint named after their device resource (GKE, AKS and the NVIDIA
    GPU operator set nvidia.com/gpu; EKS users add it), so only Pods that ask for GPUs land
    there; clusters with the ExtendedResourceToleration admission plugin add the toleration
    themselves, others need it in the Pod."""
    return {"key": resource, "operator": "Exists", "effect": "NoSchedule"}
MANAGED_BY = "jupyter-raykube"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_CLUSTER = "raykube.io/cluster"
LABEL_CLUSTER_ID = "raykube.io/cluster-id"  # tells a cluster from an older one of the same name
LABEL_OWNER = "raykube.io/owner"
LABEL_GROUP = "raykube.io/group"
LABEL_NODE_TYPE = "raykube.io/node-type"
ANNOTATION_SPEC = "raykube.io/spec"  # the ClusterSpec as JSON, on the head Pod
ANNOTATION_OWNER = "raykube.io/owner"  # the owner's name as typed (the label is escaped)

TOKEN_KEY = "token"
POD_IP_ENV = "RAY_POD_IP"
HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
SHM_VOLUME = "dev-shm"
METRICS_PORT_NAME = "metrics"
# Raise the soft open-files limit to the hard one (runtimes start containers at 1024; Ray
# opens a socket per worker and per peer) and exec `ray` ($0) with its arguments, so `ray
# start` stays the container's main process and receives SIGTERM. Backquotes, not $(...),
# which Kubernetes would read as a variable reference.
RAISE_OPEN_FILES = 'ulimit -Sn `ulimit -Hn` 2>/dev/null; exec "$0" "$@"'
# The head must not be moved by node consolidation: it holds the GCS (the whole cluster).
HEAD_ANNOTATIONS = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
                    "karpenter.sh/do-not-disrupt": "true"}

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Ports:
    """The ports Ray listens on inside each Pod (every Pod has its own network namespace)."""

    gcs: int = 6379
    dashboard: int = 8265
    client: int = 10001
    dashboard_agent: int = 52365  # serves /api/local_raylet_healthz, the probes' target
    metrics: int = 8080  # Prometheus metrics of every node (`--metrics-export-port`, KubeRay's port)


@dataclass(frozen=True)
class ClusterMeta:
    """Names, labels and owners shared by every object of one cluster."""

    name: str
    namespace: str
    cluster_id: str
    owner: str
    labels: Mapping[str, str] = field(default_factory=dict)  # extra labels (spec.labels)
    owner_references: tuple[V1OwnerReference, ...] = ()
    cluster_domain: str = "cluster.local"

    @property
    def service_name(self) -> str:
        return service_name(self.name)

    @property
    def head_pod_name(self) -> str:
        return f"{self.name}-head"

    @property
    def secret_name(self) -> str:
        return f"{self.name}-ray-token"

    @property
    def network_policy_name(self) -> str:
        return f"{self.name}-ray"

    def cluster_selector(self) -> dict[str, str]:
        """Every Pod of this cluster (and no older cluster of the same name)."""
        return {LABEL_CLUSTER: self.name, LABEL_CLUSTER_ID: self.cluster_id}

    @property
    def gcs_host(self) -> str:
        """The head Service's DNS name, as Pods in any namespace of the cluster resolve it."""
        return f"{self.service_name}.{self.namespace}.svc.{self.cluster_domain}"

    def object_labels(self, group: str, node_type: str) -> dict[str, str]:
        labels = dict(self.labels)
        labels.update({LABEL_MANAGED_BY: MANAGED_BY, LABEL_CLUSTER: self.name,
                       LABEL_CLUSTER_ID: self.cluster_id, LABEL_OWNER: label_value(self.owner),
                       LABEL_GROUP: group, LABEL_NODE_TYPE: node_type})
        return labels

    def head_selector(self) -> dict[str, str]:
        return {LABEL_CLUSTER: self.name, LABEL_CLUSTER_ID: self.cluster_id, LABEL_NODE_TYPE: HEAD}

    def metadata(self, name: str, group: str, node_type: str,
                 annotations: Mapping[str, str] | None = None) -> V1ObjectMeta:
        return V1ObjectMeta(
            name=name, namespace=self.namespace, labels=self.object_labels(group, node_type),
            annotations={ANNOTATION_OWNER: self.owner, **(annotations or {})},
            owner_references=list(self.owner_references) or None)


@dataclass(frozen=True)
class PodSettings:
    """Kubernetes settings of one node type's Pods (resolved from the backend's traits)."""

    image: str
    ray_command: str = "ray"
    image_pull_policy: str = "IfNotPresent"
    ports: Ports = field(default_factory=Ports)
    env: Mapping[str, str] = field(default_factory=dict)  # extra env, after spec.env
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[V1Toleration, ...] = ()
    image_pull_secrets: tuple[str, ...] = ()
    service_account_name: str | None = None
    volumes: tuple[V1Volume, ...] = ()
    volume_mounts: tuple[V1VolumeMount, ...] = ()
    probes: bool = True
    ray_labels: Mapping[str, str] = field(default_factory=dict)  # ray.io/accelerator-type, ray.io/market-type
    affinity: V1Affinity | None = None
    priority_class_name: str | None = None
    runtime_class_name: str | None = None  # e.g. "nvidia" where the GPU runtime is not the default
    # Longer than Ray's own shutdown on SIGTERM (`ray stop` waits 16 s for its processes), so
    # a deleted node's raylet and workers exit cleanly before the kubelet's SIGKILL.
    termination_grace_period_s: int = 60


@dataclass(frozen=True)
class NodeSize:
    """What one Ray node gets, in Ray's terms; the container gets the same (see `resources`)."""

    cpus: int
    memory: int  # bytes of Ray `memory`
    object_store_memory: int  # bytes, in /dev/shm
    gpus: int = 0
    custom: Mapping[str, float] = field(default_factory=dict)
    gpu_resource: str = DEFAULT_GPU_RESOURCE  # the extended resource the container requests its GPUs as
    devices: Mapping[str, int] = field(default_factory=dict)  # other devices: google.com/tpu, aws.amazon.com/neuroncore
    min_container_cpus: int = 1  # the head's processes (GCS, dashboard) need CPUs Ray does not schedule

    @property
    def container_cpus(self) -> int:
        """A container needs some CPU even when Ray schedules no CPU work there (`cpus=0`)."""
        return max(self.cpus, self.min_container_cpus, 1)

    @property
    def container_memory(self) -> int:
        """Ray's `memory` plus the object store: /dev/shm counts against the memory limit."""
        return self.memory + self.object_store_memory


# --- names and values ----------------------------------------------------------------------


def service_name(cluster: str) -> str:
    """`<cluster>-head-svc` (KubeRay's name). Service names must start with a letter (DNS-1035);
    cluster names may not."""
    return f"{cluster}-head-svc" if cluster[:1].isalpha() else f"ray-{cluster}-head-svc"


def worker_pod_name(cluster: str, group: str, suffix: str) -> str:
    """`<cluster>-<group>-<suffix>`: at most 40 + 15 + 5 + 2 = 62 characters (a DNS label)."""
    return f"{cluster}-{group}-{suffix}"


def label_value(text: str) -> str:
    """`text` as a valid label value: kept when it already is one, else escaped and hashed
    (JupyterHub user names may be e-mail addresses)."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")[:54].rstrip("-_.")
    return f"{safe}-{digest}" if safe else digest


def format_bytes(amount: int) -> str:
    """A memory quantity: "4Gi"/"512Mi" when exact, else plain bytes (both parse_quantity-clean)."""
    for suffix, unit in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if amount and amount % unit == 0:
            return f"{amount // unit}{suffix}"
    return str(amount)


# --- the objects ---------------------------------------------------------------------------


def make_token_secret(meta: ClusterMeta, token: str) -> V1Secret:
    """The Ray token (Ray 2.60 token auth), read by every node through `secretKeyRef`."""
    return V1Secret(api_version="v1", kind="Secret",
                    metadata=meta.metadata(meta.secret_name, HEAD, HEAD),
                    type="Opaque", immutable=True, string_data={TOKEN_KEY: token})


def make_head_service(meta: ClusterMeta, ports: Ports) -> V1Service:
    """GCS, dashboard and Ray Client ports of the head. Not-ready addresses are published so
    workers can join while the head's readiness probe still waits for the dashboard."""
    return V1Service(
        api_version="v1", kind="Service",
        metadata=meta.metadata(meta.service_name, HEAD, HEAD),
        spec=V1ServiceSpec(
            type="ClusterIP", selector=meta.head_selector(), publish_not_ready_addresses=True,
            ports=[V1ServicePort(name="gcs", port=ports.gcs, target_port="gcs", protocol="TCP"),
                   V1ServicePort(name="dashboard", port=ports.dashboard, target_port="dashboard",
                                 protocol="TCP"),
                   V1ServicePort(name="client", port=ports.client, target_port="client", protocol="TCP")]))


def make_network_policy(meta: ClusterMeta, server_selector: Mapping[str, str],
                        extra_peers: Sequence[V1NetworkPolicyPeer] = ()) -> V1NetworkPolicy:
    """The cluster's Pods accept connections only from each other and from the owner's
    Jupyter server Pod (`server_selector`, its labels), plus `extra_peers` (e.g. a monitoring
    namespace); egress is left to the namespace's own policies."""
    peers = [V1NetworkPolicyPeer(pod_selector=V1LabelSelector(match_labels=meta.cluster_selector()))]
    if server_selector:
        peers.append(V1NetworkPolicyPeer(pod_selector=V1LabelSelector(match_labels=dict(server_selector))))
    return V1NetworkPolicy(
        api_version="networking.k8s.io/v1", kind="NetworkPolicy",
        metadata=meta.metadata(meta.network_policy_name, HEAD, HEAD),
        spec=V1NetworkPolicySpec(pod_selector=V1LabelSelector(match_labels=meta.cluster_selector()),
                                 policy_types=["Ingress"],
                                 ingress=[V1NetworkPolicyIngressRule(_from=[*peers, *extra_peers])]))


def spec_annotation(spec: ClusterSpec) -> str:
    """The head Pod's record of the cluster's desired state (read back by `discover()`)."""
    return json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"))


def make_head_pod(meta: ClusterMeta, spec: ClusterSpec, size: NodeSize, settings: PodSettings) -> V1Pod:
    """The head: GCS, dashboard, Ray Client server and a raylet (`--num-cpus=0` by default, so
    tasks go to autoscaled workers). The spec is kept as an annotation for `discover()`."""
    ports = settings.ports
    args = ["start", "--head", "--block", f"--port={ports.gcs}", "--dashboard-host=0.0.0.0",
            f"--dashboard-port={ports.dashboard}", f"--ray-client-server-port={ports.client}",
            *_node_args(meta, HEAD, size, ports), "--disable-usage-stats", "--no-monitor"]
    container_ports = [V1ContainerPort(name="gcs", container_port=ports.gcs, protocol="TCP"),
                       V1ContainerPort(name="dashboard", container_port=ports.dashboard, protocol="TCP"),
                       V1ContainerPort(name="client", container_port=ports.client, protocol="TCP"),
                       V1ContainerPort(name="dashboard-agent", container_port=ports.dashboard_agent,
                                       protocol="TCP")]
    annotations = {ANNOTATION_SPEC: spec_annotation(spec), **HEAD_ANNOTATIONS, **_metrics_annotations(ports)}
    return _pod(meta, meta.metadata(meta.head_pod_name, HEAD, HEAD, annotations), HEAD_CONTAINER, HEAD,
                args, container_ports, size, settings, spec.env, health_path="/api/healthz")


def make_worker_pod(meta: ClusterMeta, spec: ClusterSpec, group: str, name: str, size: NodeSize,
                    settings: PodSettings) -> V1Pod:
    """One Ray worker node of `group`, joining through the head Service's DNS name."""
    ports = settings.ports
    args = ["start", "--block", f"--address={meta.gcs_host}:{ports.gcs}",
            *_node_args(meta, group, size, ports, {**spec.group(group).labels, **settings.ray_labels})]
    container_ports = [V1ContainerPort(name="dashboard-agent", container_port=ports.dashboard_agent,
                                       protocol="TCP")]
    return _pod(meta, meta.metadata(name, group, WORKER, _metrics_annotations(ports)), WORKER_CONTAINER, group,
                args, container_ports, size, settings, spec.env, health_path="/api/local_raylet_healthz")


def _metrics_annotations(ports: Ports) -> dict[str, str]:
    """Where Prometheus' annotation-based Pod discovery finds Ray's metrics."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(ports.metrics)}


def _node_args(meta: ClusterMeta, group: str, size: NodeSize, ports: Ports,
               labels: Mapping[str, str] | None = None) -> list[str]:
    """`ray start` flags every node shares. `labels` are the group's own Ray node labels (what
    tasks' label_selector match); ours, naming cluster and group, come last and win."""
    args = [f"--node-ip-address=$({POD_IP_ENV})", f"--dashboard-agent-listen-port={ports.dashboard_agent}",
            f"--metrics-export-port={ports.metrics}",
            f"--num-cpus={size.cpus}", f"--num-gpus={size.gpus}", f"--memory={size.memory}",
            f"--object-store-memory={size.object_store_memory}"]
    if size.custom:
        args.append("--resources=" + json.dumps({k: size.custom[k] for k in sorted(size.custom)},
                                                separators=(",", ":")))
    node_labels = {**(labels or {}), LABEL_CLUSTER: meta.name, LABEL_GROUP: group}
    args.append("--labels=" + ",".join(f"{k}={v}" for k, v in node_labels.items()))
    return args


def resources(size: NodeSize) -> V1ResourceRequirements:
    """Requests equal to limits (Guaranteed QoS): Ray plans with exactly these numbers."""
    amounts = {"cpu": str(size.container_cpus), "memory": format_bytes(size.container_memory)}
    if size.gpus:
        amounts[size.gpu_resource] = str(size.gpus)
    amounts.update({device: str(count) for device, count in size.devices.items()})
    return V1ResourceRequirements(requests=dict(amounts), limits=dict(amounts))


def _env(node_type_name: str, secret: str, spec_env: Mapping[str, str],
         extra: Mapping[str, str]) -> list[V1EnvVar]:
    env = [V1EnvVar(name=k, value=v) for k, v in {**spec_env, **extra}.items()]
    return env + [
        V1EnvVar(name="RAY_AUTH_MODE", value="token"),
        V1EnvVar(name="RAY_AUTH_TOKEN", value_from=V1EnvVarSource(
            secret_key_ref=V1SecretKeySelector(name=secret, key=TOKEN_KEY))),
        V1EnvVar(name="RAY_enable_autoscaler_v2", value="1"),
        V1EnvVar(name="RAY_USAGE_STATS_ENABLED", value="0"),
        V1EnvVar(name="RAY_CLOUD_INSTANCE_ID", value_from=V1EnvVarSource(
            field_ref=V1ObjectFieldSelector(field_path="metadata.name"))),
        V1EnvVar(name="RAY_NODE_TYPE_NAME", value=node_type_name),
        V1EnvVar(name=POD_IP_ENV, value_from=V1EnvVarSource(
            field_ref=V1ObjectFieldSelector(field_path="status.podIP"))),
    ]


def _probes(path: str) -> tuple[V1Probe, V1Probe]:
    """KubeRay's timings: readiness soon and often, liveness patient (10 minutes of failures)."""
    action = V1HTTPGetAction(path=path, port="dashboard-agent")
    readiness = V1Probe(http_get=action, initial_delay_seconds=10, period_seconds=5, timeout_seconds=2,
                        success_threshold=1, failure_threshold=10)
    liveness = V1Probe(http_get=action, initial_delay_seconds=30, period_seconds=5, timeout_seconds=2,
                       success_threshold=1, failure_threshold=120)
    return readiness, liveness


def _pod(meta: ClusterMeta, metadata: V1ObjectMeta, container_name: str, group: str, args: list[str],
         container_ports: list[V1ContainerPort], size: NodeSize, settings: PodSettings,
         spec_env: Mapping[str, str], *, health_path: str) -> V1Pod:
    readiness, liveness = _probes(health_path) if settings.probes else (None, None)
    mounts = [V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm"), *settings.volume_mounts]
    container_ports = [*container_ports, V1ContainerPort(name=METRICS_PORT_NAME, container_port=settings.ports.metrics,
                                                         protocol="TCP")]
    container = V1Container(
        name=container_name, image=settings.image, image_pull_policy=settings.image_pull_policy,
        command=["/bin/sh", "-c", RAISE_OPEN_FILES, settings.ray_command], args=args, ports=container_ports,
        env=_env(group, meta.secret_name, spec_env, settings.env), resources=resources(size),
        volume_mounts=mounts, readiness_probe=readiness, liveness_probe=liveness,
        security_context=V1SecurityContext(allow_privilege_escalation=False,
                                           capabilities=V1Capabilities(drop=["ALL"])))
    shm = V1Volume(name=SHM_VOLUME, empty_dir=V1EmptyDirVolumeSource(
        medium="Memory", size_limit=format_bytes(size.container_memory)))
    return V1Pod(
        api_version="v1", kind="Pod", metadata=metadata,
        spec=V1PodSpec(
            containers=[container], restart_policy="Never", enable_service_links=False,
            automount_service_account_token=False,
            termination_grace_period_seconds=settings.termination_grace_period_s,
            volumes=[shm, *settings.volumes],
            node_selector=dict(settings.node_selector) or None,
            affinity=settings.affinity, priority_class_name=settings.priority_class_name,
            runtime_class_name=settings.runtime_class_name,
            tolerations=list(settings.tolerations) or None,
            image_pull_secrets=[V1LocalObjectReference(name=n) for n in settings.image_pull_secrets] or None,
            service_account_name=settings.service_account_name,
            # Pod Security "restricted", which user namespaces often enforce; Ray needs none of
            # what it forbids (the rayproject/ray images run as the non-root user "ray")
            security_context=V1PodSecurityContext(run_as_non_root=True,
                                                  seccomp_profile=V1SeccompProfile(type="RuntimeDefault"))))


def owner_reference(pod_name: str, pod_uid: str) -> V1OwnerReference:
    """A reference to the Pod that runs the Jupyter server: deleting it deletes the cluster.
    Not `blockOwnerDeletion` (that needs update rights on the owner's finalizers)."""
    return V1OwnerReference(api_version="v1", kind="Pod", name=pod_name, uid=pod_uid)


def to_models(model: Any, items: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
    """Config dicts (Kubernetes JSON spelling) to `V1*` models, e.g. tolerations and volumes."""
    return tuple(model.from_dict(dict(item)) for item in items)
