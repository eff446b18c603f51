"""What the Kubernetes backend is configured with (`c.KubernetesBackend.*`, each option declared
once, here) and how each default is found where the Jupyter server runs: a Pod's service
account and downward-API variables (the JupyterHub hook sets them), else a kubeconfig as
kubectl reads it. The backend (kubernetes.py) inherits this and does the work."""

from __future__ import annotations

import getpass
import os
import sys
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from kubernetes import config as kube_config
from kubernetes.client import Configuration
from kubernetes.config.config_exception import ConfigException
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default, validate

from ..errors import BackendError
from ..versions import default_image
from .base import Backend
from .k8s_phases import StartTimeouts

GiB = 1024**3
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
        cluster spec's `image` overrides it). Default: the official image matching this
        server's Ray and Python, e.g. rayproject/ray:2.60.0-py311. Drivers need the same Ray
        and Python versions as the image; `check_ray_versions` refuses a mismatch.""")

    gpu_image = Unicode(config=True, help="""Image of worker Pods of groups with GPUs. Default:
        the default image's CUDA variant (rayproject/ray:2.60.0-py311-gpu) when `image` is
        the default, else `image`.""")

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
    head_memory = Int(2 * GiB, config=True, help="Ray `memory` (bytes) of the head, unless the spec sets it.")
    head_object_store_memory = Int(1 * GiB, config=True,
                                   help="Object store (bytes) of the head, unless the spec sets it.")

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
        return default_image(package_version("ray"), sys.version_info[:2])

    @default("gpu_image")
    def _default_gpu_image(self) -> str:
        return self.image + "-gpu" if self.image == self._default_image() else self.image

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
