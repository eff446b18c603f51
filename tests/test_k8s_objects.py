"""The Kubernetes objects of a Ray cluster: golden dicts (kubespawner's `test_objects.py` style),
built without a cluster; the real kube-apiserver's verdict on them (a server-side dry run with
strict field validation, in a namespace enforcing Pod Security "restricted"); the RBAC manifest;
and the image version check."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import (
    ApiClient,
    CoreV1Api,
    NetworkingV1Api,
    RbacAuthorizationV1Api,
    V1Affinity,
    V1NetworkPolicyPeer,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)
from kubernetes.client.exceptions import ApiException

from jupyter_raykube.backends import k8s_objects as o
from jupyter_raykube.backends.k8s_network import server_selector
from jupyter_raykube.backends.base import HEAD_RAY_ENV
from jupyter_raykube.backends.kubernetes import KubernetesBackend
from jupyter_raykube.errors import RayVersionMismatch
from jupyter_raykube.versions import check_ray_versions, default_image, image_versions
from jupyter_raykube.spec import ClusterSpec, HeadSpec, WorkerGroup

GiB = 1024**3
RBAC = Path(__file__).parent.parent / "deploy" / "rbac.yaml"

SPEC = ClusterSpec(name="alice-1", backend="kubernetes", head=HeadSpec(cpus=0), env={"HF_HOME": "/data/hf"},
                   labels={"team": "ml"},
                   groups=(WorkerGroup("gpu", cpus=4, gpus=1, memory=8 * GiB, object_store_memory=2 * GiB,
                                       custom={"accel_l4": 1}, max=2),))
META = o.ClusterMeta(name="alice-1", namespace="jhub", cluster_id="0a1b2c3d", owner="alice@example.com",
                     labels={"team": "ml"}, owner_references=(o.owner_reference("jupyter-alice", "1111-2222"),))
HEAD_SIZE = o.NodeSize(cpus=0, memory=2 * GiB, object_store_memory=1 * GiB)
GPU_SIZE = o.NodeSize(cpus=4, gpus=1, memory=8 * GiB, object_store_memory=2 * GiB, custom={"accel_l4": 1})

LABELS = {"team": "ml", "app.kubernetes.io/managed-by": "jupyter-raykube", "raykube.io/cluster": "alice-1",
          "raykube.io/cluster-id": "0a1b2c3d", "raykube.io/owner": "alice-example.com-ff8d9819"}
OWNER_REFS = [{"apiVersion": "v1", "kind": "Pod", "name": "jupyter-alice", "uid": "1111-2222"}]
RAY_ENV = [
    {"name": "RAY_AUTH_MODE", "value": "token"},
    {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"key": "token", "name": "alice-1-ray-token"}}},
    {"name": "RAY_enable_autoscaler_v2", "value": "1"},
    {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    {"name": "RAY_CLOUD_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
]
POD_IP_ENV = {"name": "RAY_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
RESTRICTED_CONTAINER = {"securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
RESTRICTED_POD = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                  "automountServiceAccountToken": False}  # Ray needs no API token
# `ray start` after raising the open-files limit, as the container's main process (exec)
COMMAND = ["/bin/sh", "-c", 'ulimit -Sn `ulimit -Hn` 2>/dev/null; exec "$0" "$@"', "ray"]
METRICS = {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"}


def as_dict(obj: Any) -> dict[str, Any]:
    return ApiClient().sanitize_for_serialization(obj)


Validate = Callable[[dict[str, Any]], None]


@pytest.fixture
def assert_valid(kube_admin: ApiClient, make_kube_namespace: Callable[..., str]) -> Iterator[Validate]:
    """``assert_valid(manifest)``: kube-apiserver accepts it (a dry-run create in a namespace that
    enforces Pod Security "restricted"; unknown or duplicate fields are errors, not warnings)."""
    namespace = make_kube_namespace("objects", {"pod-security.kubernetes.io/enforce": "restricted"})

    core, rbac = CoreV1Api(kube_admin), RbacAuthorizationV1Api(kube_admin)
    create = {"Pod": core.create_namespaced_pod, "Service": core.create_namespaced_service,
              "NetworkPolicy": NetworkingV1Api(kube_admin).create_namespaced_network_policy,
              "Secret": core.create_namespaced_secret, "ServiceAccount": core.create_namespaced_service_account,
              "Role": rbac.create_namespaced_role, "RoleBinding": rbac.create_namespaced_role_binding}

    def check(manifest: dict[str, Any]) -> None:
        manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
        try:
            create[manifest["kind"]](namespace, manifest, dry_run="All", field_validation="Strict")
        except ApiException as exc:
            raise AssertionError(f"kube-apiserver refused {manifest['kind']} {manifest['metadata'].get('name')}: "
                                 f"{exc.status} {exc.body}") from None

    yield check


def test_head_pod() -> None:
    pod = as_dict(o.make_head_pod(META, SPEC, HEAD_SIZE, o.PodSettings(image="rayproject/ray:2.60.0-py311")))
    spec_json = pod["metadata"]["annotations"].pop("raykube.io/spec")
    assert ClusterSpec.from_dict(json.loads(spec_json)) == SPEC  # discover() rebuilds the spec from it
    probe = {"httpGet": {"path": "/api/healthz", "port": "dashboard-agent"}, "periodSeconds": 5,
             "timeoutSeconds": 2, "successThreshold": 1}
    assert pod == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "alice-1-head",
            "namespace": "jhub",
            "labels": {**LABELS, "raykube.io/group": "head", "raykube.io/node-type": "head"},
            # node consolidation (cluster-autoscaler, Karpenter) must not evict the GCS
            "annotations": {"raykube.io/owner": "alice@example.com", **METRICS,
                            "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
                            "karpenter.sh/do-not-disrupt": "true"},
            "ownerReferences": OWNER_REFS,
        },
        "spec": {
            "containers": [{
                "name": "ray-head",
                "image": "rayproject/ray:2.60.0-py311",
                "imagePullPolicy": "IfNotPresent",
                "command": COMMAND,
                "args": ["start", "--head", "--block", "--port=6379", "--dashboard-host=0.0.0.0",
                         "--dashboard-port=8265", "--ray-client-server-port=10001",
                         "--node-ip-address=$(RAY_POD_IP)", "--dashboard-agent-listen-port=52365",
                         "--metrics-export-port=8080",
                         "--num-cpus=0", "--num-gpus=0", "--memory=2147483648",
                         "--object-store-memory=1073741824",
                         "--labels=raykube.io/cluster=alice-1,raykube.io/group=head", "--disable-usage-stats", "--no-monitor"],
                "env": [{"name": "HF_HOME", "value": "/data/hf"}, *RAY_ENV,
                        {"name": "RAY_NODE_TYPE_NAME", "value": "head"}, POD_IP_ENV],
                "ports": [{"name": "gcs", "containerPort": 6379, "protocol": "TCP"},
                          {"name": "dashboard", "containerPort": 8265, "protocol": "TCP"},
                          {"name": "client", "containerPort": 10001, "protocol": "TCP"},
                          {"name": "dashboard-agent", "containerPort": 52365, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 8080, "protocol": "TCP"}],
                # the head schedules no Ray CPU work (--num-cpus=0) but its processes need a CPU
                "resources": {"limits": {"cpu": "1", "memory": "3Gi"}, "requests": {"cpu": "1", "memory": "3Gi"}},
                "readinessProbe": {**probe, "initialDelaySeconds": 10, "failureThreshold": 10},
                "livenessProbe": {**probe, "initialDelaySeconds": 30, "failureThreshold": 120},
                "volumeMounts": [{"name": "dev-shm", "mountPath": "/dev/shm"}],
                **RESTRICTED_CONTAINER,
            }],
            "restartPolicy": "Never",
            **RESTRICTED_POD,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 60,  # longer than Ray's own 16 s shutdown
            # /dev/shm as big as the container's memory: the object store and DataLoader/NCCL beside it
            "volumes": [{"name": "dev-shm", "emptyDir": {"medium": "Memory", "sizeLimit": "3Gi"}}],
        },
    }


def test_gpu_worker_pod_with_scheduling_settings() -> None:
    settings = o.PodSettings(
        image="rayproject/ray:2.60.0-py311-gpu", env={"RAY_agent_register_timeout_ms": "120000"},
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=o.to_models(V1Toleration, [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                "effect": "NoSchedule"}]),
        image_pull_secrets=("regcred",), service_account_name="ray-nodes",
        volumes=o.to_models(V1Volume, [{"name": "data", "persistentVolumeClaim": {"claimName": "alice-data"}}]),
        volume_mounts=o.to_models(V1VolumeMount, [{"name": "data", "mountPath": "/data"}]), probes=False)
    pod = as_dict(o.make_worker_pod(META, SPEC, "gpu", "alice-1-gpu-x7k2p", GPU_SIZE, settings))
    assert pod == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "alice-1-gpu-x7k2p",
            "namespace": "jhub",
            "labels": {**LABELS, "raykube.io/group": "gpu", "raykube.io/node-type": "worker"},
            "annotations": {"raykube.io/owner": "alice@example.com", **METRICS},
            "ownerReferences": OWNER_REFS,
        },
        "spec": {
            "containers": [{
                "name": "ray-worker",
                "image": "rayproject/ray:2.60.0-py311-gpu",
                "imagePullPolicy": "IfNotPresent",
                "command": COMMAND,
                "args": ["start", "--block", "--address=alice-1-head-svc.jhub.svc.cluster.local:6379",
                         "--node-ip-address=$(RAY_POD_IP)", "--dashboard-agent-listen-port=52365",
                         "--metrics-export-port=8080",
                         "--num-cpus=4", "--num-gpus=1", "--memory=8589934592", "--object-store-memory=2147483648",
                         '--resources={"accel_l4":1}', "--labels=raykube.io/cluster=alice-1,raykube.io/group=gpu"],
                "env": [{"name": "HF_HOME", "value": "/data/hf"},
                        {"name": "RAY_agent_register_timeout_ms", "value": "120000"}, *RAY_ENV,
                        {"name": "RAY_NODE_TYPE_NAME", "value": "gpu"}, POD_IP_ENV],
                "ports": [{"name": "dashboard-agent", "containerPort": 52365, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 8080, "protocol": "TCP"}],
                # Ray memory + object store (/dev/shm counts against the limit); GPUs as nvidia.com/gpu
                "resources": {"limits": {"cpu": "4", "memory": "10Gi", "nvidia.com/gpu": "1"},
                              "requests": {"cpu": "4", "memory": "10Gi", "nvidia.com/gpu": "1"}},
                "volumeMounts": [{"name": "dev-shm", "mountPath": "/dev/shm"}, {"name": "data", "mountPath": "/data"}],
                **RESTRICTED_CONTAINER,
            }],
            "restartPolicy": "Never",
            **RESTRICTED_POD,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 60,
            "serviceAccountName": "ray-nodes",
            "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "imagePullSecrets": [{"name": "regcred"}],
            "volumes": [{"name": "dev-shm", "emptyDir": {"medium": "Memory", "sizeLimit": "10Gi"}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": "alice-data"}}],
        },
    }


def test_any_accelerator_and_per_group_scheduling() -> None:
    """A group of AMD GPUs on spot nodes with the admin's affinity, priority and runtime class."""
    size = o.NodeSize(cpus=8, gpus=2, memory=8 * GiB, object_store_memory=2 * GiB, gpu_resource="amd.com/gpu",
                      custom={"accelerator_type:MI300X": 1})
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]}]}}}
    settings = o.PodSettings(image="rayproject/ray:2.60.0-py311", ray_labels={
        "ray.io/accelerator-type": "MI300X", "ray.io/market-type": "spot"},
        affinity=V1Affinity.from_dict(affinity), priority_class_name="ray-batch", runtime_class_name="rocm")
    pod = as_dict(o.make_worker_pod(META, SPEC, "gpu", "alice-1-gpu-x7k2p", size, settings))
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "10Gi", "amd.com/gpu": "2"}
    assert container["args"][-2:] == ['--resources={"accelerator_type:MI300X":1}',
                                      "--labels=ray.io/accelerator-type=MI300X,ray.io/market-type=spot,"
                                      "raykube.io/cluster=alice-1,raykube.io/group=gpu"]
    assert (pod["spec"]["affinity"], pod["spec"]["priorityClassName"], pod["spec"]["runtimeClassName"]) == (
        affinity, "ray-batch", "rocm")
    assert o.gpu_toleration("nvidia.com/mig-1g.10gb") == {"key": "nvidia.com/mig-1g.10gb", "operator": "Exists",
                                                          "effect": "NoSchedule"}


def test_head_service_and_token_secret() -> None:
    labels = {**LABELS, "raykube.io/group": "head", "raykube.io/node-type": "head"}
    metadata = {"namespace": "jhub", "labels": labels, "annotations": {"raykube.io/owner": "alice@example.com"},
                "ownerReferences": OWNER_REFS}
    assert as_dict(o.make_head_service(META, o.Ports(gcs=6380))) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "alice-1-head-svc", **metadata},
        "spec": {
            "type": "ClusterIP",
            "selector": {"raykube.io/cluster": "alice-1", "raykube.io/cluster-id": "0a1b2c3d",
                         "raykube.io/node-type": "head"},
            "publishNotReadyAddresses": True,
            "ports": [{"name": "gcs", "port": 6380, "targetPort": "gcs", "protocol": "TCP"},
                      {"name": "dashboard", "port": 8265, "targetPort": "dashboard", "protocol": "TCP"},
                      {"name": "client", "port": 10001, "targetPort": "client", "protocol": "TCP"}],
        },
    }
    assert as_dict(o.make_token_secret(META, "s3cret")) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "alice-1-ray-token", **metadata},
        "type": "Opaque",
        "immutable": True,
        "stringData": {"token": "s3cret"},
    }


def test_network_policy() -> None:
    """Ingress to the cluster's Pods from its own Pods, the owner's server Pod and what the
    admin adds; no egress rules (the namespace's own policies decide those)."""
    monitoring = o.to_models(V1NetworkPolicyPeer, [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
    server = {"component": "singleuser-server", "hub.jupyter.org/username": "alice"}
    own = {"raykube.io/cluster": "alice-1", "raykube.io/cluster-id": "0a1b2c3d"}
    assert as_dict(o.make_network_policy(META, server, monitoring)) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "alice-1-ray", "namespace": "jhub",
                     "labels": {**LABELS, "raykube.io/group": "head", "raykube.io/node-type": "head"},
                     "annotations": {"raykube.io/owner": "alice@example.com"}, "ownerReferences": OWNER_REFS},
        "spec": {
            "podSelector": {"matchLabels": own},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": own}}, {"podSelector": {"matchLabels": server}},
                                  {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}],
        },
    }


def test_the_server_pod_is_picked_by_its_own_labels() -> None:
    kubespawner = {"app": "jupyterhub", "component": "singleuser-server", "heritage": "jupyterhub",
                   "hub.jupyter.org/network-access-hub": "true", "hub.jupyter.org/username": "alice",
                   "hub.jupyter.org/servername": "", "release": "jhub"}
    assert server_selector(kubespawner) == {"component": "singleuser-server", "hub.jupyter.org/username": "alice",
                                            "hub.jupyter.org/servername": ""}
    assert server_selector({"app": "my-notebook", "run": "n1"}) == {"app": "my-notebook", "run": "n1"}


def test_builders_are_pure() -> None:
    settings = o.PodSettings(image="rayproject/ray:2.60.0-py311")
    first = o.make_worker_pod(META, SPEC, "gpu", "alice-1-gpu-x7k2p", GPU_SIZE, settings)
    again = o.make_worker_pod(META, SPEC, "gpu", "alice-1-gpu-x7k2p", GPU_SIZE, settings)
    assert as_dict(first) == as_dict(again)
    first.metadata.labels["mutated"] = "yes"  # a builder never shares the caller's dicts
    assert "mutated" not in META.labels and "mutated" not in as_dict(again)["metadata"]["labels"]


@pytest.mark.k8s
@pytest.mark.parametrize("cluster", ["alice-1", "7up", "a" * 40])
def test_every_object_passes_api_server_validation(cluster: str, assert_valid: Validate) -> None:
    """The apiserver's own validation (names, quantities, GPU limits, port names, volume mounts,
    unknown fields) and Pod Security admission, on every object of a cluster."""
    spec = ClusterSpec(name=cluster, backend="kubernetes",
                       groups=(WorkerGroup("cpu", cpus=2), WorkerGroup("gpu-l4", cpus=1, gpus=2,
                                                                       custom={"x/y.z": 0.5})))
    meta = o.ClusterMeta(name=cluster, namespace="default", cluster_id="ffff0000", owner="bob",
                         owner_references=(o.owner_reference("jupyter-bob", "u-1"),))
    backend_sizes = (o.NodeSize(cpus=2, memory=2 * GiB + 1, object_store_memory=300_000_000),
                     o.NodeSize(cpus=1, gpus=2, memory=GiB, object_store_memory=GiB, custom={"x/y.z": 0.5}))
    settings = o.PodSettings(image="rayproject/ray:2.60.0-py311", tolerations=o.to_models(
        V1Toleration, [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]))
    manifests = [o.make_token_secret(meta, "t" * 64), o.make_head_service(meta, o.Ports()),
                 o.make_network_policy(meta, {"hub.jupyter.org/username": "bob"}),
                 o.make_head_pod(meta, spec, HEAD_SIZE, settings)]
    for group, size in zip(spec.groups, backend_sizes):
        name = o.worker_pod_name(cluster, group.name, "abcde")
        manifests.append(o.make_worker_pod(meta, spec, group.name, name, size, settings))
    for manifest in manifests:
        assert_valid(as_dict(manifest))
    assert o.service_name("7up")[0].isalpha()  # Service names are DNS-1035 labels


@pytest.mark.k8s
def test_rbac_manifest_is_valid_and_namespaced(assert_valid: Validate) -> None:
    documents = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    assert [d["kind"] for d in documents] == ["ServiceAccount", "Role", "RoleBinding"]
    for document in documents:
        assert_valid(document)
        assert document["metadata"]["namespace"]
    # The verbs the backend needs; tests/test_k8s_quota_rbac.py checks that it calls no others.
    role = documents[1]
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {("pods", v) for v in ("create", "get", "list", "watch", "patch", "delete")} | {("pods/log", "get")} \
        | {("services", v) for v in ("create", "get", "list", "delete")} \
        | {("secrets", v) for v in ("create", "get", "delete")} | {("events", "list")} \
        | {("networkpolicies", v) for v in ("create", "get", "delete")} | {("resourcequotas", "get")}


def test_label_values_and_quantities() -> None:
    assert o.label_value("alice") == "alice"
    escaped = o.label_value("Alice Smith <alice@example.com>")
    assert escaped == "Alice-Smith-alice-example.com-" + escaped[-8:] and len(escaped) <= 63
    assert o.label_value("x" * 80) != o.label_value("x" * 79) and len(o.label_value("x" * 80)) <= 63
    assert o.label_value("@@@") and o.label_value("@@@") == o.label_value("@@@")
    assert [o.format_bytes(n) for n in (3 * GiB, 512 * 1024**2, 2048, 2 * GiB + 1)] == ["3Gi", "512Mi", "2Ki",
                                                                                       "2147483649"]


def test_image_versions_and_mismatch_message() -> None:
    assert default_image("2.60.0", (3, 11)) == "rayproject/ray:2.60.0-py311"
    assert image_versions("rayproject/ray:2.60.0-py311-gpu") == ("2.60.0", "3.11")
    assert image_versions("registry.local:5000/ray:2.59.1") == ("2.59.1", None)
    assert image_versions("rayproject/ray:latest") is None
    assert image_versions("rayproject/ray@sha256:" + "0" * 64) is None
    assert image_versions("registry.local:5000/ray") is None

    check_ray_versions("rayproject/ray:2.60.0-py311", ray_version="2.60.0", python_version="3.11")
    check_ray_versions("my/custom:v7", ray_version="2.60.0", python_version="3.11")  # nothing to compare
    with pytest.raises(RayVersionMismatch) as info:
        check_ray_versions("rayproject/ray:2.59.0-py310", ray_version="2.60.0", python_version="3.11")
    message = str(info.value)
    assert "Ray 2.60.0 on Python 3.11" in message and "Ray 2.59.0 on Python 3.10" in message
    assert "c.KubernetesBackend.image = 'rayproject/ray:2.60.0-py311'" in message
    assert "ray==2.59.0 on Python 3.10" in message
    with pytest.raises(RayVersionMismatch, match="Python 3.12"):
        check_ray_versions("rayproject/ray:2.60.0-py312", ray_version="2.60.0", python_version="3.11")


def test_backend_defaults_need_no_cluster(offline_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configuration is read when a backend is made (never at import): the namespace comes from
    the kubeconfig context, the image from this Python's Ray."""
    monkeypatch.setenv("JUPYTER_POD_NAME", "jupyter-alice")
    backend = KubernetesBackend(kubeconfig=str(offline_kubeconfig))
    assert backend.namespace == "ray-users" and not backend.in_cluster
    python = f"-py{sys.version_info.major}{sys.version_info.minor}"
    assert backend.image.startswith("rayproject/ray:2.60.") and backend.image.endswith(python)
    assert backend.gpu_image == backend.image + "-gpu"
    assert backend.owner_pod_name == "jupyter-alice"
    group = WorkerGroup("cpu", cpus=2)
    assert backend.node_resources(SPEC, group) == {"CPU": 2, "memory": backend.worker_memory}
    # the head pulls demand every 100 ms and prints no "(scheduler" lines, as a local head does
    assert backend.pod_settings(SPEC, None).env == HEAD_RAY_ENV and backend.pod_settings(SPEC, group).env == {}
