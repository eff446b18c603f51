"""A user's Ray cluster on Kubernetes from start to stop, against the real control plane
(tests/kube) and the process kubelet: `%raycluster start --backend kubernetes` autoscaling
worker Pods and stopping clean, the auto backend, the default group sizes on a CPU-only server,
a group of AMD GPUs, a new manager adopting a running cluster, and the real garbage collector
deleting a cluster whose server Pod is gone. See tests/kube/backend_helpers.py for who is who
and how addresses work here."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import kubernetes
import psutil
import pytest
import ray
from IPython.core.interactiveshell import InteractiveShell
from kubernetes.client import CoreV1Api
from traitlets.config import Config

from jupyter_raykube.backends.base import BackendError, ClusterNotFound
from jupyter_raykube.backends.kubernetes import KubernetesBackend
from jupyter_raykube.backends.registry import BACKEND_ENV, resolve_backend
from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.client import LocalClient
from jupyter_raykube.connect import connect_driver
from jupyter_raykube.magics import RayClusterMagics
from jupyter_raykube.manager import ClusterManager
from jupyter_raykube.spec import ClusterSpec, SpecError, WorkerGroup, default_groups, detect_gpus
from tests.kube.backend_helpers import (
    MiB,
    SMALL,
    assert_api_use_is_clean,
    autoscaled,
    backend_settings,
    blocking_manager_for,
    close_backend,
    created_pods,
    events_of,
    eventually,
    find_node,
    kubectl_objects,
    make_backend,
    on_gpu,
    own_ports,
    pods_path,
    snapshot_of,
    stop_and_check_clean,
    where,
    worker_pods,
)
from tests.kube.controlplane import ControlPlane
from tests.kube.faultproxy import FaultProxy
from tests.kube.fixtures import running_kubelet
from tests.kube.helpers import pod as pod_manifest
from tests.kube.helpers import restricted, wait_until
from tests.kube.kubelet import ProcessKubelet
from tests.kube.nodes import NodePool

pytestmark = pytest.mark.k8s


def test_deleting_the_server_pod_deletes_the_cluster(kube_config_file: Path, kube_fault_proxy: FaultProxy,
                                                     kube_control_plane: ControlPlane, v1: CoreV1Api,
                                                     ns: str) -> None:
    """The real garbage collector deletes every object of the cluster once the Pod running the
    Jupyter server (their ownerReference) is deleted, as when JupyterHub stops the server."""
    server_labels = {"app": "jupyterhub", "release": "jhub", "component": "singleuser-server",
                     "hub.jupyter.org/username": "alice"}  # as KubeSpawner labels a server Pod
    server = v1.create_namespaced_pod(ns, restricted(pod_manifest("jupyter-alice", server_labels,
                                                                  ["sleep", "inf"])))
    backend = make_backend(kube_config_file, address_type="service", owner_pod_name="jupyter-alice")
    spec = ClusterSpec(name="k-owned", backend="kubernetes", groups=(WorkerGroup("cpu", max=2),))
    networking = kubernetes.client.NetworkingV1Api(v1.api_client)

    async def scenario() -> None:
        handle = await backend.create_cluster(spec, owner="alice", token="t0ken")
        workers = [await backend.create_worker(handle, spec.groups[0]) for _ in range(2)]
        # No nodes: kube-scheduler says so on each Pod, and the backend passes its words on.
        stuck = await eventually(lambda: find_node(backend, handle, workers[0].name, "pending", message=True),
                                 what="the scheduler's verdict")
        assert stuck.message.startswith("waiting for a node: Unschedulable: no nodes available to schedule pods")
        objects = kubectl_objects(kube_control_plane, ns, "k-owned")
        assert sorted(o["kind"] for o in objects) == ["Pod", "Pod", "Pod", "Secret", "Service"]
        policies = networking.list_namespaced_network_policy(ns, label_selector="raykube.io/cluster=k-owned").items
        assert len(policies) == 1
        for obj in [*objects, v1.api_client.sanitize_for_serialization(policies[0])]:
            assert obj["metadata"]["ownerReferences"] == [
                {"apiVersion": "v1", "kind": "Pod", "name": "jupyter-alice", "uid": server.metadata.uid}]
        # The cluster's Pods accept connections only from each other and from alice's server Pod
        # (picked by KubeSpawner's labels for her, not the labels every user's server shares)
        own = {"raykube.io/cluster": "k-owned", "raykube.io/cluster-id": handle.details["cluster_id"]}
        policy = v1.api_client.sanitize_for_serialization(policies[0])["spec"]
        assert policy == {"podSelector": {"matchLabels": own}, "policyTypes": ["Ingress"],
                          "ingress": [{"from": [{"podSelector": {"matchLabels": own}}, {"podSelector": {
                              "matchLabels": {"component": "singleuser-server", "hub.jupyter.org/username": "alice"}}}]}]}
        assert all(own.items() <= o["metadata"]["labels"].items() for o in objects if o["kind"] == "Pod")

        v1.delete_namespaced_pod("jupyter-alice", ns)  # JupyterHub stops the user's server
        wait_until(lambda: not kubectl_objects(kube_control_plane, ns, "k-owned")
                   and not networking.list_namespaced_network_policy(ns).items, timeout_s=60,
                   what="the garbage collector to delete the cluster and its NetworkPolicy")
        await eventually(lambda: _gone(backend, handle), timeout=30, what="the watch to see the head go")

        misconfigured = make_backend(kube_config_file, address_type="service", owner_pod_name="jupyter-bob")
        try:
            with pytest.raises(BackendError, match=f"owner Pod 'jupyter-bob' not found in namespace {ns}"):
                await misconfigured.create_cluster(spec, owner="bob", token="t0ken")
        finally:
            await misconfigured.close()

    try:
        anyio.run(scenario)
    finally:
        close_backend(backend)
    assert_api_use_is_clean(kube_fault_proxy)


async def _gone(backend: KubernetesBackend, handle: Any) -> bool:
    try:
        await backend.list_nodes(handle)
    except ClusterNotFound:
        return True
    return False


def test_magic_starts_a_kubernetes_cluster_that_autoscales_pods_and_stops_clean(
        ray_kubelet: ProcessKubelet, kube_config_file: Path, kube_fault_proxy: FaultProxy,
        kube_control_plane: ControlPlane, v1: CoreV1Api, ns: str) -> None:
    """`%raycluster start --backend kubernetes` from a kernel whose default backend is local:
    the manager builds the Kubernetes backend from its config on first use. kube-scheduler
    places every Pod; the GPU worker lands on the tainted GPU pool."""
    config = Config({"KubernetesBackend": backend_settings(kube_config_file, request_timeout=2.0)})
    bm = BlockingManager(lambda: ClusterManager(default_backend="local", owner="alice", autoscale_interval_s=0.5,
                                                config=config))
    shell = InteractiveShell.instance()
    shell.register_magics(RayClusterMagics(shell, client=LocalClient(bm)))
    try:
        # "running" means a notebook can connect: the head's Ray Client server already listens,
        # so ray.init does not wait out Ray Client's own timeouts
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            shell.run_line_magic("raycluster", "start k-life --backend kubernetes --worker-cpus 1 "
                                               "--cpu-workers 0:2 --gpu-workers 0:1 --idle-timeout 5 "
                                               "--image registry.example/team/ray:2.60.0-py311")
        assert not [w for w in caught if "Ray Client connection timed out" in str(w.message)]
        cluster = bm.call(bm.manager.get, "k-life")
        assert cluster.backend.name == "kubernetes" and bm.manager.backend.name == "local"
        head = v1.read_namespaced_pod("k-life-head", ns)
        assert head.status.phase == "Running" and head.spec.node_name.startswith("cpu-pool-")
        assert head.spec.containers[0].image == "registry.example/team/ray:2.60.0-py311"  # --image
        assert ray.is_initialized()  # through Ray Client, as a notebook outside the cluster connects
        # admitted under Pod Security "restricted" (the namespace enforces it), no API token, and
        # `ray start` itself (exec'd) runs with the open-files limit raised from the runtime's 1024
        assert head.spec.automount_service_account_token is False
        ray_start = psutil.Process(ray_kubelet.pid(ns, "k-life-head"))
        soft, hard = ray_start.rlimit(psutil.RLIMIT_NOFILE)
        assert soft == hard > 1024 and "start" in ray_start.cmdline(), (soft, hard, ray_start.cmdline())
        wait_until(lambda: any(c.type == "Ready" and c.status == "True"
                               for c in v1.read_namespaced_pod("k-life-head", ns).status.conditions),
                   timeout_s=60, what="the head's readiness probe (/api/healthz)")

        # The API server fails, and loses an answer, while the autoscaler creates worker Pods.
        kube_fault_proxy.inject("POST", pods_path(ns), status=503, times=2)
        kube_fault_proxy.inject("POST", pods_path(ns), lose_answer=True, times=1)
        hosts = ray.get([where.remote(2) for _ in range(4)], timeout=240)
        assert all(h.startswith("k-life-cpu-") for h in hosts), hosts

        gpu_node, gpu_ids = ray.get(on_gpu.remote(), timeout=240)
        assert gpu_node.startswith("k-life-gpu-") and len(gpu_ids) == 1
        gpu_pod = v1.read_namespaced_pod(gpu_node, ns)
        assert gpu_pod.spec.node_name == "gpu-pool-0"
        container = gpu_pod.spec.containers[0]
        # the gpu group of KubernetesBackend.default_worker_groups: 8 CPUs, 24 GiB + 8 GiB object store
        assert container.resources.limits == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
        assert {"--num-cpus=8", "--num-gpus=1", f"--memory={24 * 1024 * MiB}"} <= set(container.args)

        # Each launch made exactly one Pod, retried creates included. (On a loaded machine a node
        # can fail to start, be removed and be launched again: launches count, not the group max.)
        launched = sum(int(m.split()[1]) for m in events_of(bm, cluster, "scale_up"))
        assert created_pods(kube_fault_proxy, ns) == 1 + launched, "a worker Pod was created twice"
        assert not events_of(bm, cluster, "error"), events_of(bm, cluster, "error")

        wait_until(lambda: not worker_pods(v1, ns, "k-life"), timeout_s=90, what="idle workers to be removed")
        scale_down = events_of(bm, cluster, "scale_down")
        assert any(m.startswith("draining cpu node") for m in scale_down), scale_down
        assert any(m.startswith("removed idle gpu node") for m in scale_down), scale_down

        with warnings.catch_warnings(record=True) as caught:  # the driver lets go before its server goes
            warnings.simplefilter("always")
            shell.run_line_magic("raycluster", "stop k-life")
        assert not [w for w in caught if "Ray Client connection timed out" in str(w.message)]
        assert not ray.is_initialized()
        assert kubectl_objects(kube_control_plane, ns, "k-life") == []
        wait_until(lambda: not ray_kubelet.leftover_processes(), timeout_s=60, what="every Ray process to exit")
    finally:
        ray.shutdown()
        bm.close()
    assert_api_use_is_clean(kube_fault_proxy)


def test_auto_backend_is_kubernetes_where_a_kubeconfig_is(kube_config_file: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    assert resolve_backend("auto") == "local"
    monkeypatch.setenv("KUBECONFIG", str(kube_config_file))
    assert resolve_backend("auto") == "kubernetes" and resolve_backend("local") == "local"
    monkeypatch.setenv(BACKEND_ENV, "local")  # what a server or hub forces
    assert ClusterManager(token_path=str(tmp_path / "token")).backend.name == "local"
    monkeypatch.delenv(BACKEND_ENV)
    manager = ClusterManager(token_path=str(tmp_path / "token"), config=Config(
        {"KubernetesBackend": {"kubeconfig": str(kube_config_file), "owner": "alice"}}))
    assert manager.backend.name == "kubernetes"
    anyio.run(manager.backend.close)
    with pytest.raises(SpecError, match="backend='cloud'.*auto, local, kubernetes"):
        resolve_backend("cloud")


def test_a_cpu_only_server_gets_groups_sized_for_the_cluster_and_its_gpu_group_launches(
        ray_kubelet: ProcessKubelet, kube_config_file: Path, kube_fault_proxy: FaultProxy,
        kube_control_plane: ControlPlane, v1: CoreV1Api, ns: str) -> None:
    """This server has no GPU (a local cluster's default gpu group would have max 0), yet on
    Kubernetes a request that names no groups gets KubernetesBackend.default_worker_groups:
    GPU demand launches a GPU worker of 8 CPUs and 24 + 8 GiB; the head's container has 2 CPUs."""
    assert detect_gpus() == 0 and default_groups()[1].max == 0  # what this machine would offer
    with autoscaled(kube_config_file) as bm:
            request = bm.call(bm.manager.default_request)
            assert [(g["name"], g["cpus"], g["gpus"], g["max"]) for g in request["groups"]] == [
                ("cpu", 4, 0, 10), ("gpu", 8, 1, 2)]
            cluster = bm.call(bm.manager.create, {"name": "k-sizes"})
            connect_driver(cluster.handle.address, bm.manager.token)
            host, gpu_ids = ray.get(on_gpu.remote(), timeout=240)
            assert host.startswith("k-sizes-gpu-") and len(gpu_ids) == 1
            pod = v1.read_namespaced_pod(host, ns)
            assert pod.spec.node_name == "gpu-pool-0"
            assert pod.spec.containers[0].resources.limits == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
            assert v1.read_namespaced_pod("k-sizes-head", ns).spec.containers[0].resources.limits["cpu"] == "2"
            stop_and_check_clean(bm, "k-sizes", kube_control_plane, ns, ray_kubelet)
    assert_api_use_is_clean(kube_fault_proxy)


@pytest.fixture
def amd_kubelet(kube_control_plane: ControlPlane) -> Iterator[ProcessKubelet]:
    """A CPU node and a node of AMD GPUs (amd.com/gpu capacity, tainted amd.com/gpu)."""
    yield from running_kubelet(kube_control_plane, rewrite_argv=own_ports, pools=[
        NodePool("cpu-pool", count=1), NodePool("amd-pool", count=1, gpus=1, gpu_resource="amd.com/gpu", labels={
            "karpenter.sh/capacity-type": "spot", "karpenter.k8s.aws/instance-gpu-name": "mi300x"})])


def test_a_group_of_amd_gpus_gets_pods_requesting_amd_gpus(
        amd_kubelet: ProcessKubelet, kube_config_file: Path, kube_fault_proxy: FaultProxy,
        kube_control_plane: ControlPlane, v1: CoreV1Api, ns: str) -> None:
    """A task with num_gpus=1 (and accelerator_type="MI300X") in a group the admin set to
    amd.com/gpu: its Pod requests amd.com/gpu: 1, tolerates that taint, selects the spot MI300X
    nodes by their (Karpenter) labels, lands on the AMD node, and its Ray node carries
    ray.io/accelerator-type and ray.io/market-type."""
    backend = make_backend(kube_config_file, gpu_resource={"amd": "amd.com/gpu"},
                           accelerator_type={"amd": "MI300X"}, market_type={"amd": "spot"})
    bm = blocking_manager_for(backend)
    spec = ClusterSpec(name="k-amd", backend="kubernetes", groups=(WorkerGroup("amd", cpus=1, gpus=1, max=1, **SMALL),))
    try:
        cluster = bm.call(bm.manager.create, spec)
        connect_driver(cluster.handle.address, bm.manager.token)
        host, gpu_ids = ray.get(on_gpu.options(accelerator_type="MI300X").remote(), timeout=240)
        assert host.startswith("k-amd-amd-") and len(gpu_ids) == 1
        pod = v1.read_namespaced_pod(host, ns)
        assert pod.spec.node_name == "amd-pool-0"
        assert pod.spec.node_selector == {"karpenter.sh/capacity-type": "spot",
                                          "karpenter.k8s.aws/instance-gpu-name": "mi300x"}
        container = pod.spec.containers[0]
        assert container.resources.limits == {"cpu": "1", "memory": "640Mi", "amd.com/gpu": "1"}
        assert [t.to_dict() for t in pod.spec.tolerations if t.key == "amd.com/gpu"] == [
            {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule", "value": None,
             "toleration_seconds": None}]
        assert ("--labels=ray.io/accelerator-type=MI300X,ray.io/market-type=spot,raykube.io/cluster=k-amd,"
                "raykube.io/group=amd") in container.args
        labels = next(n["Labels"] for n in ray.nodes() if n["Alive"] and n["Labels"].get("raykube.io/group") == "amd")
        assert labels["ray.io/accelerator-type"] == "MI300X" and labels["ray.io/market-type"] == "spot"
        stop_and_check_clean(bm, "k-amd", kube_control_plane, ns, amd_kubelet)
    finally:
        ray.shutdown()
        bm.close()
        close_backend(backend)
    assert_api_use_is_clean(kube_fault_proxy)


def test_a_new_manager_adopts_a_running_cluster_and_keeps_autoscaling(
        ray_kubelet: ProcessKubelet, kube_config_file: Path, kube_fault_proxy: FaultProxy,
        kube_control_plane: ControlPlane, v1: CoreV1Api, ns: str) -> None:
    spec = ClusterSpec(name="k-adopt", backend="kubernetes", idle_timeout_s=60, groups=(
        WorkerGroup("cpu", cpus=1, max=1, **SMALL),))
    first_backend = make_backend(kube_config_file)
    first = blocking_manager_for(first_backend, stop_clusters_on_close=False)
    try:
        created = first.call(first.manager.create, spec)
    finally:
        first.close()  # the first server goes away; its cluster keeps running
        close_backend(first_backend)
    assert created.handle is not None
    assert v1.read_namespaced_pod("k-adopt-head", ns).status.phase == "Running"

    backend = make_backend(kube_config_file)  # a new server: its own (different) port settings
    bm = blocking_manager_for(backend, adopt_on_start=True)  # as RayKube runs when clusters outlive the server
    try:
        cluster = bm.call(bm.manager.get, "k-adopt")
        assert cluster.handle is not None and cluster.owned
        assert (cluster.handle.address, cluster.spec) == (created.handle.address, spec)
        assert "this server now autoscales the cluster" in [e["message"] for e in snapshot_of(bm, cluster)["events"]]
        connect_driver(cluster.handle.address, bm.manager.token)
        host = ray.get(where.remote(0), timeout=240)
        assert host.startswith("k-adopt-cpu-") and host in [p.metadata.name for p in worker_pods(v1, ns, "k-adopt")]

        # Ray Client (ray://), what a notebook outside the cluster uses (through kubectl port-forward),
        # connected the way `%raycluster attach` connects such a kernel
        program = ("import os, sys, ray\n"
                   "from jupyter_raykube.connect import connect_driver\n"
                   "connect_driver(sys.argv[1], os.environ['RAY_AUTH_TOKEN'], client_address=sys.argv[2])\n"
                   "print('ran on', ray.get(ray.remote(lambda: os.environ['RAY_CLOUD_INSTANCE_ID']).remote()))")
        client = subprocess.run([sys.executable, "-c", program, cluster.handle.address, cluster.handle.client_address],
                                check=False, capture_output=True, text=True, timeout=240,
                                env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": bm.manager.token})
        assert "ran on k-adopt-" in client.stdout, client.stderr[-3000:]
        stop_and_check_clean(bm, "k-adopt", kube_control_plane, ns, ray_kubelet)
    finally:
        ray.shutdown()
        bm.close()
        close_backend(backend)
    assert_api_use_is_clean(kube_fault_proxy)
