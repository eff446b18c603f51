"""What the Kubernetes backend is configured with (`c.KubernetesBackend.*`, each option declared
once, here) and how each default is found where the Jupyter server runs: a Pod's service
account and downward-API variables (the JupyterHub hook sets them), else a kubeconfig as
kubectl reads it. The backend (kubernetes.py) inherits this and does the work."""

from __future__ import annotations

import getpass
import os
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Mapping

from kubernetes import config as kube_config
from kubernetes.client import Configuration
from kubernetes.config.config_exception import ConfigException
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default, validate

from ..errors import BackendError
from ..scheduling import check_scheduling
from ..spec import SpecError, WorkerGroup, parse_group_setting
from ..versions import default_image
from .base import Backend
from .k8s_phases import StartTimeouts

GiB = 1024**3
# What a new cluster's groups are on Kubernetes (unless c.ClusterManager.default_groups says):
# sized for the node pools, after Ray's guidance (several CPUs per node, 4 GiB per CPU, a GPU
# node with a usable CPU and memory share), never from this server's own Pod.
DEFAULT_WORKER_GROUPS = [
    {"name": "cpu", "cpus": 4, "memory": "12Gi", "object_store_memory": "4Gi", "min": 0, "max": 10},
    {"name": "gpu", "cpus": 8, "gpus": 1, "memory": "24Gi", "object_store_memory": "8Gi", "min": 0, "max": 2},
]
IMAGE_SPEC_ENV = "JUPYTER_IMAGE_SPEC"  # KubeSpawner: the image of the user's server
NAMESPACE_ENV = "RAYKUBE_NAMESPACE"  # set by the JupyterHub hook (jupyter_raykube.hub)
_SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubernetesSettings(Backend):
    """The options; traitlets reads them from the `KubernetesBackend` section too (it matches
    every class of the instance's MRO), which is the name the docs use."""

    # --- where -------------------------------------------------------------------------------

    kubeconfig = Unicode("", config=True, help="""Path of a kubeconfig file. Empty: the Pod's
        service account when this server runs in a Pod (in-cluster configuration), else
        $KUBECONFIG or ~/.kube/config, as kubectl does.""")

    context = Unicode("", config=True, help="kubeconfig context to use. Empty: the current context.")

    in_cluster = Bool(config=True, help="""Use the Pod's service account (in-cluster configuration).
        Default: true when running in a Pod and no kubeconfig is set.""")

    namespace = Unicode(config=True, help="""Namespace of the Ray clusters' Pods, Services and
        Secrets. Default: $RAYKUBE_NAMESPACE (the JupyterHub hook sets it), else the
        namespace of this server's Pod (in-cluster), else the namespace
        of the kubeconfig context, else "default". The service account needs the Role in
        deploy/rbac.yaml there.""")

    cluster_domain = Unicode("cluster.local", config=True, help="""The cluster's DNS domain.
        Workers reach the head at <service>.<namespace>.svc.<cluster_domain>.""")

    address_type = Enum(["service", "pod-ip"], "service", config=True, help="""How this process
        reaches a cluster's head (GCS, dashboard, Ray Client). "service": the head Service's
        DNS name, for a Jupyter server inside the same Kubernetes cluster. "pod-ip": the head
        Pod's IP, for a server that can route to Pod IPs but does not use the cluster's DNS
        (a server on a node's host network, or tests). Workers always use the Service.""")

    # --- what runs ---------------------------------------------------------------------------

    image = Unicode(config=True, help="""Container image of head and CPU worker Pods (a
        cluster spec's `image`, `%raycluster start --image` or the REST field, overrides it).
        Default, the first that applies: `image_map`'s entry for this server's Ray and Python;
        the user's own server image ($JUPYTER_IMAGE_SPEC, which KubeSpawner sets: it has this
        very Ray, since this server runs in it, and the notebook's packages); the official
        image matching this server's Ray and Python, e.g. rayproject/ray:2.60.0-py311.
        Drivers need the same Ray and Python versions as the image; `check_ray_versions`
        refuses a mismatch and says how to fix it.""")

    gpu_image = Unicode(config=True, help="""Image of worker Pods of groups with GPUs. Default:
        `image_map`'s entry for this server's Ray, Python and CUDA ("RAY/PYTHON/cuXYZ"), else its
        "RAY/PYTHON/gpu" entry; the official image's CUDA variant
        (rayproject/ray:2.60.0-py311-gpu) when `image` is the official one; else `image`.""")

    image_map = Dict(value_trait=Unicode(), config=True, help="""The administrator's images per
        Ray, Python and CUDA version: "RAY/PYTHON" for CPU Pods, "RAY/PYTHON/cuXYZ" for GPU
        Pods when this server's CUDA is X.YZ (`cuda_version`), "RAY/PYTHON/gpu" for GPU Pods
        otherwise: {"2.60.0/3.11": "registry.example/ray:2.60.0-py311", "2.60.0/3.11/cu124":
        "registry.example/ray:2.60.0-py311-cu124", "2.60.0/3.11/gpu":
        "registry.example/ray:2.60.0-py311-cu128"}. The entries for this server's versions are
        the default `image`/`gpu_image`.""")

    cuda_version = Unicode(config=True, help="""The CUDA version GPU workers should have ("12.4"),
        which picks the "RAY/PYTHON/cuXYZ" entry of `image_map`: the notebook's CUDA libraries
        and the workers' must match for the same code (torch wheels are built per CUDA).
        Default: $CUDA_VERSION (NVIDIA's CUDA images set it), else the version of the installed
        nvidia-cuda-runtime wheel (what pip's torch pulls in), else none.""")

    image_pull_policy = Enum(["Always", "IfNotPresent", "Never"], "IfNotPresent", config=True,
                             help="imagePullPolicy of the Ray containers.")

    image_pull_secrets = List(Unicode(), config=True, help="""Names of Secrets (in the namespace)
        used to pull the image from a private registry.""")

    ray_command = Unicode("ray", config=True, help="""The `ray` executable in the image, run as
        `<ray_command> start ... --block` (the container's command).""")

    service_account_name = Unicode("", config=True, help="""Service account of the Ray Pods.
        Empty: the namespace's default one. Ray itself needs no Kubernetes permissions.""")

    gcs_port = Int(6379, config=True, help="GCS port of the head (what `ray.init(address=...)` uses).")
    dashboard_port = Int(8265, config=True, help="Ray dashboard port of the head (HTTP).")
    client_port = Int(10001, config=True, help="Ray Client server port of the head (ray://).")
    dashboard_agent_port = Int(52365, config=True, help="""Port of each node's dashboard agent,
        which serves the health endpoints the probes use.""")

    metrics_port = Int(8080, config=True, help="""Port of each node's Prometheus metrics
        (`ray start --metrics-export-port`), declared as the containerPort "metrics" and in
        the Pods' prometheus.io/scrape and prometheus.io/port annotations.""")

    termination_grace_period_s = Int(60, config=True, help="""terminationGracePeriodSeconds of
        the Ray Pods: longer than Ray's own shutdown on SIGTERM (`ray stop` gives its
        processes 16 s), so a removed node exits cleanly before the kubelet's SIGKILL.""")

    health_probes = Enum(["all", "head", "none"], "all", config=True, help="""Which Pods get
        readiness and liveness probes on Ray's health endpoints (the head's /api/healthz and
        each worker's /api/local_raylet_healthz, on the dashboard agent port, as KubeRay
        does). "head" or "none" where Pods cannot be reached on their own ports, e.g. Pods
        sharing one network namespace (hostNetwork), whose agent ports must then differ.""")

    node_selector = Dict(config=True, help="""nodeSelector per group: {"gpu": {"cloud.google.com/
        gke-accelerator": "nvidia-l4"}}. "head" is the head; "*" applies to every Pod and is
        merged under the group's own entry.""")

    tolerations = Dict(config=True, help="""Tolerations per group, as Kubernetes JSON: {"gpu":
        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}. "head" is
        the head; "*" entries are added to every Pod.""")

    gpu_resource = Dict(value_trait=Unicode(), config=True, help="""Extended resource a group's
        GPUs are requested as, per group ("*": every group): {"amd": "amd.com/gpu", "intel":
        "gpu.intel.com/i915", "mig": "nvidia.com/mig-1g.10gb"}. Default nvidia.com/gpu. Ray
        sees them as GPU either way (`num_gpus`); the Pod tolerates a taint of that name.""")

    accelerator_type = Dict(value_trait=Unicode(), config=True, help="""Accelerator of each group's
        nodes, e.g. {"gpu": "A100"}: the nodes get the Ray label ray.io/accelerator-type and
        the resource accelerator_type:A100, so `@ray.remote(accelerator_type="A100")` and
        label selectors find them, and the Pods get that accelerator's node selector
        (`accelerator_scheduling`). A user's request may choose it where the policy allows
        (`user_scheduling`, `%raycluster start --gpu-type A100`).""")

    accelerator_scheduling = Dict(value_trait=Dict(), config=True, help="""Where an accelerator
        type's Pods run, per Ray accelerator type, as {"node_selector": {...}, "tolerations":
        [...]}: {"L4": {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}},
        "TPU-V6E": {"node_selector": {"cloud.google.com/gke-tpu-accelerator": "tpu-v6e-slice",
        "cloud.google.com/gke-tpu-topology": "2x2"}}}. A type with no entry selects nodes whose
        `accelerator_node_label` is the type in lowercase.""")

    accelerator_node_label = Unicode("karpenter.k8s.aws/instance-gpu-name", config=True, help="""The
        node label that names a node's GPU model, for accelerator types `accelerator_scheduling`
        does not list: Karpenter's (a100, h100, l4, t4, a10g: Ray's type in lowercase) by
        default. Empty: such types select no nodes (only the Ray label is set).""")

    market_type = Dict(value_trait=Enum(["spot", "on-demand"]), config=True, help="""Market of each
        group's nodes, {"gpu-spot": "spot"}: the Ray label ray.io/market-type, and the Pods get
        that market's node selector and tolerations (`market_scheduling`). A user's request may
        choose it where the policy allows (`%raycluster start --market spot`).""")

    market_scheduling = Dict(value_trait=Dict(), default_value={
        "spot": {"node_selector": {"karpenter.sh/capacity-type": "spot"}},
        "on-demand": {"node_selector": {"karpenter.sh/capacity-type": "on-demand"}}},
        config=True, help="""Where each market's Pods run, as {"node_selector": {...},
        "tolerations": [...]}. Default: Karpenter's karpenter.sh/capacity-type label. On GKE:
        {"spot": {"node_selector": {"cloud.google.com/gke-spot": "true"}, "tolerations":
        [{"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect":
        "NoSchedule"}]}, "on-demand": {}}.""")

    device_resources = Dict(value_trait=Unicode(), default_value={
        "TPU": "google.com/tpu", "neuron_cores": "aws.amazon.com/neuroncore"}, config=True, help="""Ray
        custom resources that are devices Kubernetes hands out, and the extended resource each
        is requested as: a group with custom {"TPU": 4} gets Pods requesting google.com/tpu: 4
        (and tolerating that taint), and Ray on the node offers TPU: 4. Whole devices only.""")

    affinity = Dict(config=True, help="""Pod affinity per group ("*", "head", a group), as
        Kubernetes JSON: {"gpu": {"nodeAffinity": {...}}}. The group's entry wins over "*".""")

    priority_class_name = Dict(value_trait=Unicode(), config=True, help="""priorityClassName per
        group ("*", "head", a group), e.g. {"head": "high-priority"}.""")

    runtime_class_name = Dict(value_trait=Unicode(), config=True, help="""runtimeClassName per
        group ("*", "head", a group), e.g. {"gpu": "nvidia"} where the NVIDIA runtime is not the
        node's default.""")

    extra_env = Dict(value_trait=Unicode(), config=True, help="""Environment variables of every
        Ray container, after the cluster spec's `env`. Ray's own (token, node name) win.""")

    volumes = List(Dict(), config=True, help="""Extra volumes of every Ray Pod, as Kubernetes
        JSON ({"name": ..., "persistentVolumeClaim": {...}}); mount them with `volume_mounts`.""")

    volume_mounts = List(Dict(), config=True, help="""Extra volumeMounts of every Ray container,
        as Kubernetes JSON ({"name": ..., "mountPath": ...}).""")

    worker_memory = Int(2 * GiB, config=True, help="""Ray `memory` (bytes) of a worker whose
        group does not set one. The container's memory limit is this plus the object store.""")
    worker_object_store_memory = Int(1 * GiB, config=True, help="""Object store (bytes, in a
        memory-backed /dev/shm) of a worker whose group does not set one.""")
    head_memory = Int(6 * GiB, config=True, help="""Ray `memory` (bytes) of the head, unless the
        spec sets it. With the object store, the head's container has 8 GiB: the GCS and the
        dashboard grow with the cluster (Ray asks for at least 8 GiB on a head).""")
    head_object_store_memory = Int(2 * GiB, config=True,
                                   help="Object store (bytes) of the head, unless the spec sets it.")
    head_container_cpus = Int(2, config=True, help="""CPUs of the head's container, at least: the
        GCS, dashboard and Ray Client server need them even though the head schedules no tasks
        (its Ray --num-cpus is the spec's head.cpus, 0 by default).""")

    default_worker_groups = List(Dict(), default_value=DEFAULT_WORKER_GROUPS, config=True, help="""Worker
        groups of a new cluster on Kubernetes when c.ClusterManager.default_groups is not set,
        as REST group objects. Default: "cpu", 4-CPU nodes with 12 GiB + 4 GiB object store, up
        to 10; "gpu", 1 GPU with 8 CPUs and 24 GiB + 8 GiB object store, up to 2. Sized for the
        cluster's node pools, not this server's Pod: a CPU-only server still offers GPU nodes.""")

    # --- whose -------------------------------------------------------------------------------

    owner = Unicode(config=True, help="""`discover()` finds only clusters whose raykube.io/owner
        label is this user. Default: $JUPYTERHUB_USER, else the OS user (as ClusterManager.owner).
        Empty string: every cluster in the namespace.""")

    owner_pod_name = Unicode(config=True, help="""The Pod running this Jupyter server. When set,
        every object gets an ownerReference to it, so deleting the server (e.g. stopping it in
        JupyterHub) deletes its Ray clusters. It must be in `namespace`. Default:
        $JUPYTER_POD_NAME (set it with the downward API, fieldPath metadata.name).""")

    owner_pod_uid = Unicode(config=True, help="""UID of `owner_pod_name`. Default:
        $JUPYTER_POD_UID (downward API, fieldPath metadata.uid), else read from the Pod.""")

    # --- who may connect ---------------------------------------------------------------------

    network_policy = Bool(True, config=True, help="""Create a NetworkPolicy with each cluster:
        its Pods accept connections only from each other and from this server's Pod (see
        `server_pod_selector`). Needs create/get/delete on networkpolicies (deploy/rbac.yaml);
        enforced where the cluster's network plugin implements NetworkPolicy.""")

    server_pod_selector = Dict(value_trait=Unicode(), config=True, help="""Labels of the Jupyter
        server Pod(s) allowed to reach a cluster's Pods. Default: read from this server's Pod
        (owner_pod_name): KubeSpawner's component, hub.jupyter.org/username and
        hub.jupyter.org/servername labels, else all of its labels. A server that runs in no Pod
        and sets none gets no NetworkPolicy (nothing would let it in).""")

    network_policy_ingress_from = List(Dict(), config=True, help="""More peers the cluster's Pods
        accept connections from, as Kubernetes NetworkPolicyPeer JSON, e.g. Prometheus:
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}].""")

    # --- how patiently -----------------------------------------------------------------------

    request_timeout = Float(10.0, config=True, help="Seconds one API request may take.")

    retry_timeout = Float(60.0, config=True, help="""Seconds a call is retried while the API
        server is unavailable (5xx, 429, timeouts), with exponential backoff, before it fails.""")

    delete_wait_s = Float(60.0, config=True, help="""Seconds `delete_cluster` waits for the
        cluster's Pods to be gone (their containers get SIGTERM and their grace period).""")

    start_timeouts = Dict(config=True, help="""Seconds a node's Pod may spend in each phase of
        its start before it counts as failed (removed, its group backed off), per group: "*"
        for every Pod, "head" for the head, a group's name for its workers, each merged over
        the defaults: {"*": {"unschedulable_s": 120, "node_s": 900, "image_pull_s": 1800},
        "gpu": {"image_pull_s": 3600}}. unschedulable_s: no room and no scale-up announced
        (no TriggeredScaleUp Event from cluster-autoscaler or Karpenter); node_s: after a
        TriggeredScaleUp (cluster-autoscaler's max-node-provision-time is 15 minutes);
        image_pull_s: bound to a node, its container not started. Once the container runs,
        ClusterManager.join_timeout_s applies. Image pull errors, NotTriggerScaleUp, crashes
        and OOMKilled fail a start at once.""")

    events_after_s = Float(10.0, config=True, help="""A Pending Pod's Events (cluster-autoscaler's
        TriggeredScaleUp/NotTriggerScaleUp, the newest Warning: FailedMount,
        FailedCreatePodSandBox, ...) are read once it is this many seconds old, then at most
        this often.""")

    @validate("default_worker_groups")
    def _valid_default_worker_groups(self, proposal: Any) -> list[dict[str, Any]]:
        _parse_groups(proposal["value"])
        return list(proposal["value"])

    def default_groups(self) -> tuple[WorkerGroup, ...]:
        return _parse_groups(self.default_worker_groups)

    @validate("accelerator_scheduling", "market_scheduling")
    def _valid_scheduling_table(self, proposal: Any) -> dict[str, Any]:
        name = proposal["trait"].name
        for key, entry in proposal["value"].items():
            try:
                check_scheduling(f"{name}[{key!r}]", entry)
                if set(entry) - {"node_selector", "tolerations"}:
                    raise SpecError(f"{name}[{key!r}]", entry, "an object of node_selector and tolerations")
            except SpecError as exc:
                raise TraitError(str(exc)) from None
        return dict(proposal["value"])

    @validate("start_timeouts")
    def _valid_start_timeouts(self, proposal: Any) -> dict[str, Any]:
        try:
            StartTimeouts.check(proposal["value"])
        except ValueError as exc:
            raise TraitError(str(exc)) from None
        return dict(proposal["value"])

    def start_timeouts_for(self, group: str) -> StartTimeouts:
        return StartTimeouts.for_group(self.start_timeouts, group)

    @default("in_cluster")
    def _default_in_cluster(self) -> bool:
        return not self.kubeconfig and "KUBERNETES_SERVICE_HOST" in os.environ and \
            (_SERVICE_ACCOUNT_DIR / "token").exists()

    @default("namespace")
    def _default_namespace(self) -> str:
        if os.environ.get(NAMESPACE_ENV):
            return os.environ[NAMESPACE_ENV]
        if self.in_cluster:
            try:
                return (_SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or "default"
            except OSError:
                return "default"
        try:
            contexts, current = kube_config.list_kube_config_contexts(self.kubeconfig or None)
        except (ConfigException, OSError):
            return "default"
        chosen = next((c for c in contexts if c["name"] == self.context), current) if self.context else current
        return ((chosen or {}).get("context") or {}).get("namespace") or "default"

    @default("image")
    def _default_image(self) -> str:
        return choose_images(self.image_map, os.environ.get(IMAGE_SPEC_ENV, ""), cuda=self.cuda_version)[0]

    @default("gpu_image")
    def _default_gpu_image(self) -> str:
        chosen = choose_images(self.image_map, os.environ.get(IMAGE_SPEC_ENV, ""), cuda=self.cuda_version)
        return chosen[1] if self.image == chosen[0] else self.image

    @default("cuda_version")
    def _default_cuda_version(self) -> str:
        return detect_cuda_version()

    @default("owner")
    def _default_owner(self) -> str:
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()

    @default("owner_pod_name")
    def _default_owner_pod_name(self) -> str:
        return os.environ.get("JUPYTER_POD_NAME", "")

    @default("owner_pod_uid")
    def _default_owner_pod_uid(self) -> str:
        return os.environ.get("JUPYTER_POD_UID", "")

    def _configuration(self) -> Configuration:
        configuration = Configuration()
        try:
            if self.in_cluster:
                kube_config.load_incluster_config(client_configuration=configuration)
            else:
                kube_config.load_kube_config(config_file=self.kubeconfig or None, context=self.context or None,
                                             client_configuration=configuration, persist_config=False)
        except (ConfigException, OSError) as exc:
            raise BackendError(f"no Kubernetes configuration found ({exc}); run the server in a Pod "
                               f"or set c.KubernetesBackend.kubeconfig") from exc
        configuration.retries = False  # retries (and Retry-After) are ours, see _api()
        return configuration


def _parse_groups(items: list[dict[str, Any]]) -> tuple[WorkerGroup, ...]:
    try:
        return parse_group_setting("default_worker_groups", items)
    except SpecError as exc:
        raise TraitError(str(exc)) from None


def choose_images(image_map: Mapping[str, str], server_image: str, ray_version: str = "",
                  python: tuple[int, int] | None = None, *, cuda: str = "") -> tuple[str, str]:
    """(CPU image, GPU image) for this server's Ray, Python and CUDA: the admin's map, else the
    server's own image (for both: it has this Ray), else the official image and its -gpu."""
    ray_version = ray_version or package_version("ray")
    python = python or (sys.version_info[0], sys.version_info[1])
    key = f"{ray_version}/{python[0]}.{python[1]}"
    gpu_keys = [*([f"{key}/cu{''.join(cuda.split('.')[:2])}"] if cuda else []), f"{key}/gpu"]
    mapped_gpu = next((image_map[k] for k in gpu_keys if k in image_map), None)
    if key in image_map:
        return image_map[key], mapped_gpu or image_map[key]
    if server_image:
        return server_image, mapped_gpu or server_image
    official = default_image(ray_version, python)
    return official, mapped_gpu or official + "-gpu"


def detect_cuda_version() -> str:
    """"12.4" from $CUDA_VERSION (set by NVIDIA's CUDA images) or the nvidia-cuda-runtime wheel."""
    found = os.environ.get("CUDA_VERSION", "")
    if not found:
        for wheel in ("nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime-cu11", "nvidia-cuda-runtime"):
            try:
                found = package_version(wheel)
                break
            except PackageNotFoundError:
                continue
    return ".".join(found.split(".")[:2]) if found[:1].isdigit() else ""
