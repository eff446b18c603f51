"""The Kubernetes backend against a real control plane (tests/kube: kube-apiserver,
kube-controller-manager, kube-scheduler, etcd) and the process kubelet, with the unpatched
official client: faults and retries through the fault proxy, owner garbage collection by the
real collector, Pod states, the scheduler's own messages, quotas, RBAC, and real Ray clusters
that autoscale, back off and are adopted by a new manager.

Who is who and how addresses work here: see tests/kube/backend_helpers.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import kubernetes
import psutil
import pytest
import ray
from IPython.core.interactiveshell import InteractiveShell
from kubernetes.client import ApiClient, CoreV1Api, CoreV1Event, V1EventSource, V1ObjectMeta, V1ObjectReference, V1Pod
from traitlets.config import Config

from jupyter_raykube.backends.base import BackendError, ClusterNotFound
from jupyter_raykube.backends.k8s_api import PermissionDenied
from jupyter_raykube.backends.k8s_watch import PodReflector
from jupyter_raykube.backends.kubernetes import KubernetesBackend
from jupyter_raykube.backends.registry import BACKEND_ENV, resolve_backend
from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.client import LocalClient
from jupyter_raykube.connect import connect_driver
from jupyter_raykube.display import status_lines
from jupyter_raykube.errors import ClusterExistsError
from jupyter_raykube.formatting import quota_text
from jupyter_raykube.hub_namespace import quota_hard, quota_manifest
from jupyter_raykube.magics import RayClusterMagics
from jupyter_raykube.manager import ClusterManager
from jupyter_raykube.policy import Policy, QUOTA_NAME
from jupyter_raykube.spec import ClusterSpec, SpecError, WorkerGroup, default_groups, detect_gpus
from tests.kube.backend_helpers import (
    API_PATH,
    MiB,
    RESTRICTED,
    ROLE,
    SMALL,
    assert_api_use_is_clean,
    autoscaled,
    backend_settings,
    blocking_manager_for,
    calls_made,
    close_backend,
    created_pods,
    events_of,
    eventually,
    find_node,
    hold_gpu,
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
from tests.kube.helpers import restricted, wait_until
from tests.kube.helpers import pod as pod_manifest
from tests.kube.identity import backend_kubeconfig
from tests.kube.kubelet import ProcessKubelet
from tests.kube.nodes import NodePool

pytestmark = pytest.mark.k8s


def _pod(name: str, version: int, deleting: bool = False) -> V1Pod:
    meta = V1ObjectMeta(name=name, resource_version=str(version),
                        deletion_timestamp=datetime.now(timezone.utc) if deleting else None)
    return V1Pod(metadata=meta)


def test_pod_cache_keeps_the_newest_version_and_remembers_deletions() -> None:
    cache = PodReflector(CoreV1Api(ApiClient()), "default", "app=x")  # not started: only the cache
    cache.upsert(_pod("a", 5))
    cache.upsert(_pod("a", 4))  # a write that lost the race with a newer event
    assert cache.get("a").metadata.resource_version == "5"
    cache._apply("DELETED", _pod("a", 7))
    cache.upsert(_pod("a", 6, deleting=True))  # our delete's response, arriving after the watch's DELETED
    assert cache.get("a") is None
    cache.upsert(_pod("a", 9))  # a new Pod of the same name
    cache.upsert(_pod("b", 12))  # created after the list below was taken
    cache._replace([_pod("c", 3)], list_version=10)
    assert sorted(p.metadata.name for p in cache.pods()) == ["b", "c"]


def test_pod_cache_lists_again_when_its_watch_expires(kube_config_file: Path, kube_fault_proxy: FaultProxy,
                                                      v1: CoreV1Api, ns: str) -> None:
    """The watch is cut off while Pods change, and the next one is told its resourceVersion
    is too old (410 Gone, as after etcd compaction): the cache lists again and catches up."""
    api_client = kubernetes.config.new_client_from_config(config_file=str(kube_config_file))
    cache = PodReflector(CoreV1Api(api_client), ns, "app=ray", request_timeout_s=5, watch_timeout_s=1).start()
    try:
        wait_until(cache.first_load.is_set, what="the first list")
        v1.create_namespaced_pod(ns, restricted(pod_manifest("a", {"app": "ray"}, ["sleep", "inf"])))
        wait_until(lambda: cache.get("a"), what="the watch to see Pod a")
        outage = kube_fault_proxy.inject("GET", r"/pods$", query_regex="watch=true", status=503, times=None)
        wait_until(lambda: outage.hits, what="the watch to be cut off")
        for name in "bcdefg":
            v1.create_namespaced_pod(ns, restricted(pod_manifest(name, {"app": "ray"}, ["sleep", "inf"])))
        v1.delete_namespaced_pod("a", ns)
        expired = kube_fault_proxy.inject("GET", r"/pods$", query_regex="watch=true", status=410, reason="Expired",
                                          message="too old resource version: 1 (2)", times=1)
        outage.remove()
        wait_until(lambda: sorted(p.metadata.name for p in cache.pods()) == list("bcdefg"), timeout_s=30,
                   what="the cache to catch up")
        assert expired.hits == 1 and cache.lists == 2 and cache.last_error == ""
    finally:
        cache.stop()
        api_client.close()


def test_api_faults_are_retried_without_duplicate_pods(kube_config_file: Path, kube_fault_proxy: FaultProxy,
                                                       kube_control_plane: ControlPlane, v1: CoreV1Api,
                                                       ns: str) -> None:
    proxy, pods = kube_fault_proxy, pods_path(ns)
    backend = make_backend(kube_config_file, address_type="service", request_timeout=0.5, retry_timeout=20.0)
    spec = ClusterSpec(name="k-faults", backend="kubernetes", groups=(WorkerGroup("cpu", max=9),))
    group = spec.groups[0]

    async def scenario() -> None:
        handle = await backend.create_cluster(spec, owner="alice", token="t0ken")
        assert handle.address == f"k-faults-head-svc.{ns}.svc.cluster.local:{backend.gcs_port}"
        created = []

        proxy.inject("POST", pods, status=500, times=2)
        created.append(await backend.create_worker(handle, group))

        proxy.inject("POST", pods, status=429, retry_after_s=1, times=1)
        started = time.monotonic()
        created.append(await backend.create_worker(handle, group))
        assert time.monotonic() - started >= 1.0, "Retry-After was not honoured"

        # A conflict for a Pod that does not exist, then a create that the apiserver carries out
        # but whose answer is lost, then two 503s: the retry that finally gets through is told
        # the Pod exists (the apiserver's own 409), finds it carries our labels, and takes it.
        proxy.inject("POST", pods, status=409, times=1)
        lost = proxy.inject("POST", pods, lose_answer=True, times=1)
        proxy.inject("POST", pods, status=503, times=2)
        created.append(await backend.create_worker(handle, group))
        assert lost.hits == 1

        workers = v1.list_namespaced_pod(ns, label_selector="raykube.io/cluster=k-faults,raykube.io/node-type=worker")
        assert sorted(p.metadata.name for p in workers.items) == sorted(n.name for n in created)
        posts = proxy.requests("POST", pods)
        assert created_pods(proxy, ns) == 1 + 3  # the head + one per worker, no duplicates
        assert [r.status for r in posts if r.status == 409 and not r.fault] == [409]  # the lost create, found
        listed = await backend.list_nodes(handle)
        assert sorted(n.name for n in listed if n.group == "cpu") == sorted(n.name for n in created)

        proxy.inject("POST", pods, status=403, times=1, message='pods is forbidden: User '
                     f'"system:serviceaccount:{ns}:jupyter-raykube" cannot create resource "pods"')
        with pytest.raises(PermissionDenied, match=rf"may not create pods/k-faults-cpu-\w{{5}} in namespace "
                                                   rf"{ns} .*deploy/rbac.yaml \(verb 'create' on 'pods'\)"):
            await backend.create_worker(handle, group)

        # A second server cannot take the name; the first cluster is left alone.
        other, refused = (make_backend(kube_config_file, address_type="service") for _ in range(2))
        try:
            with pytest.raises(ClusterExistsError, match=f"'k-faults' already exists in namespace {ns}"):
                await other.create_cluster(spec, owner="alice", token="t0ken")
            assert len(await backend.list_nodes(handle)) == 1 + 3
            # One that may not list Pods is told so at once, not after retry_timeout.
            proxy.inject("GET", pods, status=403, times=None)
            with pytest.raises(PermissionDenied, match=rf"could not list Pods in namespace {ns}: permission "
                                                       r"denied: the service account may not list pods"):
                with anyio.fail_after(10):
                    await refused.list_nodes(handle)
            proxy.clear_faults()
        finally:
            await other.close()
            await refused.close()

        backend.retry_timeout = 1.0
        proxy.inject("GET", r"/log$", status=503, times=None)
        with pytest.raises(BackendError, match=rf"did not answer get pods/log/\S+ in namespace {ns} for 1 s"):
            await backend.logs(handle, created[0].name)
        proxy.clear_faults()
        backend.retry_timeout = 20.0

        await backend.remove_node(handle, created[0].name)
        assert created[0].name not in {n.name for n in await backend.list_nodes(handle)}  # at once, from the cache
        await backend.remove_node(handle, created[0].name)  # already gone: fine
        await backend.delete_cluster(handle)
        await backend.delete_cluster(handle)  # safe twice
        with pytest.raises(ClusterNotFound):
            await backend.list_nodes(handle)
        assert kubectl_objects(kube_control_plane, ns, "k-faults") == []

    try:
        anyio.run(scenario)
    finally:
        close_backend(backend)
    assert_api_use_is_clean(proxy)


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


FAKE_RAY = """#!/bin/sh
# Stands in for `ray` in the Pod-state test: runs like a node, or fails as configured.
echo "fake ray on $RAY_CLOUD_INSTANCE_ID ($RAY_NODE_TYPE_NAME)"
if [ "$FAKE_EXIT_GROUP" = "$RAY_NODE_TYPE_NAME" ] || [ "$RAY_NODE_TYPE_NAME" = crash ]; then
    echo "boom: raylet failed to start" >&2
    exit 3
fi
exec sleep 600
"""


def fake_ray(tmp_path: Path) -> str:
    fake = tmp_path / "fake-ray"
    fake.write_text(FAKE_RAY)
    fake.chmod(0o755)
    return str(fake)


def test_pod_states_explain_why_nodes_do_not_run(process_kubelet: ProcessKubelet, kube_config_file: Path,
                                                  kube_fault_proxy: FaultProxy, kube_control_plane: ControlPlane,
                                                  v1: CoreV1Api, ns: str, tmp_path: Path) -> None:
    fake = fake_ray(tmp_path)
    process_kubelet.fail_image_pull("registry.example/missing:*")
    backend = make_backend(kube_config_file, ray_command=fake, health_probes="none",
                           gpu_image="registry.example/missing:1")
    spec = ClusterSpec(name="k-states", backend="kubernetes", groups=(
        WorkerGroup("cpu", max=1), WorkerGroup("crash", max=1), WorkerGroup("gpu", gpus=1, max=1),
        WorkerGroup("big", cpus=64, max=1)))
    dead_spec = ClusterSpec(name="k-dead", backend="kubernetes", env={"FAKE_EXIT_GROUP": "head"})

    async def scenario() -> None:
        handle = await backend.create_cluster(spec, owner="alice", token="t0ken")
        assert re.fullmatch(rf"127\.0\.\d+\.\d+:{backend.gcs_port}", handle.address)  # the head Pod's IP
        names = {g.name: (await backend.create_worker(handle, g)).name for g in spec.groups}

        async def states() -> dict[str, tuple[str, str]] | None:
            nodes = {n.group: (n.phase, n.message) for n in await backend.list_nodes(handle)}
            done = (nodes.get("cpu", ("",))[0] == "running" and nodes.get("crash", ("",))[0] == "exited"
                    and "ImagePullBackOff" in nodes.get("gpu", ("", ""))[1] and "Unschedulable" in nodes["big"][1])
            return nodes if done else None

        nodes = await eventually(states, what="every Pod to show its state")
        assert nodes["head"] == ("running", "")
        assert nodes["cpu"] == ("running", "")
        assert nodes["crash"] == ("exited", "container exited with code 3 (Error)")
        # the GPU Pod tolerates the GPU pool's taint, so it got there (and found no image)
        assert nodes["gpu"] == ("pending", "cannot pull image registry.example/missing:1: ImagePullBackOff: "
                                           'Back-off pulling image "registry.example/missing:1"')
        assert v1.read_namespaced_pod(names["gpu"], ns).spec.node_name == "gpu-pool-0"
        scheduled = next(c for c in v1.read_namespaced_pod(names["big"], ns).status.conditions
                         if c.type == "PodScheduled")
        # kube-scheduler's own words
        assert nodes["big"] == ("pending", f"waiting for a node: Unschedulable: {scheduled.message}")
        verdicts = {n.group: (n.step, n.failed) for n in await backend.list_nodes(handle)}
        assert verdicts == {"head": ("starting Ray", False), "cpu": ("starting Ray", False), "crash": ("", True),
                            "gpu": ("pulling image", True), "big": ("waiting for a node", False)}
        assert scheduled.message.startswith("0/3 nodes are available: ") and "Insufficient cpu" in scheduled.message
        assert "boom: raylet failed to start" in await backend.logs(handle, names["crash"], tail=5)
        assert await backend.logs(handle, "k-states-cpu-nope") == ""

        process_kubelet.oom_kill(ns, names["cpu"])
        oom = await eventually(lambda: find_node(backend, handle, names["cpu"], "exited"), what="the OOM kill")
        assert oom.message == "container exited with code 137 (OOMKilled)"

        # discover(), from a server configured otherwise (other ports): finds the live cluster
        # again, and deletes one whose head Pod has exited
        dead_backend = make_backend(kube_config_file, address_type="service", ray_command=fake,
                                    health_probes="none")
        try:
            dead = await dead_backend.create_cluster(dead_spec, owner="alice", token="t0ken")
            await eventually(lambda: find_node(dead_backend, dead, "k-dead-head", "exited"), what="the head to exit")
            found = await make_backend(kube_config_file).discover()
        finally:
            await dead_backend.close()
        assert [h.name for h in found] == ["k-states"]
        again = found[0]
        assert (again.address, again.dashboard_address, again.client_address, again.spec, again.owner,
                again.details["token"], again.details["image"], again.created_at) == (
            handle.address, handle.dashboard_address, handle.client_address, spec, "alice", "t0ken",
            backend.image, handle.created_at)
        assert not kubectl_objects(kube_control_plane, ns, "k-dead")
        assert await make_backend(kube_config_file, owner="bob").discover() == []  # another user's

        await backend.delete_cluster(handle)
        assert not kubectl_objects(kube_control_plane, ns, "k-states")

    try:
        anyio.run(scenario)
    finally:
        close_backend(backend)
    assert_api_use_is_clean(kube_fault_proxy)


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
        shell.run_line_magic("raycluster", "start k-life --backend kubernetes --worker-cpus 1 "
                                           "--cpu-workers 0:2 --gpu-workers 0:1 --idle-timeout 5 "
                                           "--image registry.example/team/ray:2.60.0-py311")
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

        shell.run_line_magic("raycluster", "stop k-life")
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


@pytest.fixture
def cpu_only_kubelet(kube_control_plane: ControlPlane) -> Iterator[ProcessKubelet]:
    """Two CPU nodes and no GPU pool at all."""
    yield from running_kubelet(kube_control_plane, rewrite_argv=own_ports, pools=[NodePool("cpu-pool", count=2)])


def test_unschedulable_pods_are_explained_and_their_group_backs_off(
        cpu_only_kubelet: ProcessKubelet, kube_config_file: Path, kube_fault_proxy: FaultProxy,
        kube_control_plane: ControlPlane, v1: CoreV1Api, ns: str) -> None:
    """No GPU pool and no cluster-autoscaler: the GPU Pod waits for a node `unschedulable_s`
    (6 s here), then its group backs off with the scheduler's reason."""
    spec = ClusterSpec(name="k-unsched", backend="kubernetes", groups=(
        WorkerGroup("gpu", cpus=1, gpus=1, max=1, **SMALL),))
    with autoscaled(kube_config_file, manager={"backoff_s": 300.0},
                    start_timeouts={"*": {"unschedulable_s": 6}}) as bm:
            cluster = bm.call(bm.manager.create, spec)
            connect_driver(cluster.handle.address, bm.manager.token)
            ref = on_gpu.remote()

            def gpu_node() -> dict[str, Any] | None:
                return next((n for n in snapshot_of(bm, cluster)["nodes"] if n["group"] == "gpu" and n["message"]), None)

            node = wait_until(gpu_node, timeout_s=60, what="the gpu node's Pending reason")
            assert node["state"] == "starting"
            assert node["message"].startswith("waiting for a node: Unschedulable: 0/2 nodes are available: ")
            why = node["message"].removeprefix("waiting for a node: Unschedulable: ")
            assert "2 Insufficient nvidia.com/gpu" in why  # kube-scheduler's own words
            backoff = wait_until(lambda: events_of(bm, cluster, "backoff"), timeout_s=60, what="the group to back off")
            assert backoff == [(f"backing off the gpu group for 300 s: gpu node {node['name']} could not start: "
                                f"Unschedulable: {why} (no scale-up within 6 s)")]
            assert f"gpu node {node['name']}: waiting for a node" in events_of(bm, cluster, "info")
            wait_until(lambda: not worker_pods(v1, ns, "k-unsched"), timeout_s=30,
                       what="the Pending Pod to be removed")

            def backed_off() -> dict[str, Any] | None:
                return next((d for d in snapshot_of(bm, cluster)["demand"]
                             if d["shape"].get("GPU") and "backed off" in d["reason"]), None)

            demand = wait_until(backed_off, timeout_s=30, what="the demand to say why it waits")
            assert f"gpu group is backed off: gpu node {node['name']} could not start" in demand["reason"]
            assert created_pods(kube_fault_proxy, ns) == 2, "a backed-off group launched again"  # the head, one gpu Pod
            ray.cancel(ref, force=True)
            stop_and_check_clean(bm, "k-unsched", kube_control_plane, ns, cpu_only_kubelet)
    assert_api_use_is_clean(kube_fault_proxy)


@pytest.fixture
def late_gpu_kubelet(kube_control_plane: ControlPlane) -> Iterator[ProcessKubelet]:
    """Two CPU nodes; the GPU pool scales up from zero 20 s after a Pod needs it."""
    yield from running_kubelet(kube_control_plane, rewrite_argv=own_ports, pools=[
        NodePool("cpu-pool", count=2), NodePool("gpu-pool", count=1, gpus=1, appear_after_s=20.0, max_count=2)])


def test_a_pod_waiting_for_a_pool_to_scale_up_is_not_given_up_on(
        late_gpu_kubelet: ProcessKubelet, kube_config_file: Path, kube_fault_proxy: FaultProxy,
        kube_control_plane: ControlPlane, v1: CoreV1Api, ns: str) -> None:
    """cluster-autoscaler's TriggeredScaleUp Event on the unschedulable GPU Pod shows in the
    snapshot and events ("waiting for a node (scale-up triggered)") and holds off both the
    unschedulable and the join timeout (10 s here, the pool takes 20 s): the same Pod runs on
    the new node and joins Ray; nothing is backed off or created twice."""
    spec = ClusterSpec(name="k-late", backend="kubernetes", groups=(WorkerGroup("gpu", cpus=1, gpus=1, max=1, **SMALL),))
    with autoscaled(kube_config_file, manager={"join_timeout_s": 10.0, "backoff_s": 300.0},
                    events_after_s=0.5, start_timeouts={"gpu": {"unschedulable_s": 10}}) as bm:
            cluster = bm.call(bm.manager.create, spec)
            connect_driver(cluster.handle.address, bm.manager.token)
            ref = on_gpu.remote()

            def waiting() -> dict[str, Any] | None:
                return next((n for n in snapshot_of(bm, cluster)["nodes"]
                             if n["group"] == "gpu" and "scale-up triggered" in n["message"]), None)

            node = wait_until(waiting, timeout_s=60, what="the scale-up to show")
            assert node["state"] == "starting"
            assert re.fullmatch(r"waiting for a node \(scale-up triggered\) \d+ s ago: pod triggered scale-up: "
                                r"\[\{gpu-pool 0->1 \(max: 2\)\}\]; Unschedulable: 0/2 nodes are available: .*",
                                node["message"]), node["message"]
            host, gpu_ids = ray.get(ref, timeout=240)
            assert host == node["name"] and len(gpu_ids) == 1
            assert v1.read_namespaced_pod(host, ns).spec.node_name == "gpu-pool-0"
            assert not events_of(bm, cluster, "backoff") and not events_of(bm, cluster, "node_failed")
            steps = [m for m in events_of(bm, cluster, "info") if m.startswith(f"gpu node {host}")]
            assert f"gpu node {host}: waiting for a node (scale-up triggered)" in steps
            joined = re.fullmatch(rf"gpu node {host} joined Ray (\d+) s after it was created", steps[-1])
            assert joined and int(joined[1]) > 10, steps  # it outlived both 10 s timeouts while its node came
            assert created_pods(kube_fault_proxy, ns) == 2  # the head and the one GPU Pod, never replaced
            stop_and_check_clean(bm, "k-late", kube_control_plane, ns, late_gpu_kubelet)
    assert_api_use_is_clean(kube_fault_proxy)


def test_an_image_that_cannot_be_pulled_backs_its_group_off_with_the_reason(
        ray_kubelet: ProcessKubelet, kube_config_file: Path, kube_fault_proxy: FaultProxy,
        kube_control_plane: ControlPlane, v1: CoreV1Api, ns: str) -> None:
    """ErrImagePull is a failure, not a slow start: the Pod is removed and its group backs off,
    naming the image and the registry's answer, long before any pull timeout."""
    ray_kubelet.fail_image_pull("registry.example/missing:*")
    spec = ClusterSpec(name="k-nopull", backend="kubernetes",
                       groups=(WorkerGroup("gpu", cpus=1, gpus=1, max=1, **SMALL),))
    with autoscaled(kube_config_file, manager={"backoff_s": 300.0}, gpu_image="registry.example/missing:1") as bm:
            cluster = bm.call(bm.manager.create, spec)
            connect_driver(cluster.handle.address, bm.manager.token)
            ref = on_gpu.remote()
            backoff = wait_until(lambda: events_of(bm, cluster, "backoff"), timeout_s=90, what="the group to back off")
            assert len(backoff) == 1 and re.fullmatch(
                r"backing off the gpu group for 300 s: gpu node k-nopull-gpu-\w{5} could not start: cannot pull image "
                r"registry\.example/missing:1: (ErrImagePull: rpc error: code = NotFound desc = failed to pull and "
                r'unpack image: not found|ImagePullBackOff: Back-off pulling image "registry\.example/missing:1")',
                backoff[0]), backoff
            wait_until(lambda: not worker_pods(v1, ns, "k-nopull"), timeout_s=30, what="the Pod to be removed")
            assert created_pods(kube_fault_proxy, ns) == 2, "a backed-off group launched again"  # the head, one gpu Pod
            ray.cancel(ref, force=True)
            stop_and_check_clean(bm, "k-nopull", kube_control_plane, ns, ray_kubelet)
    assert_api_use_is_clean(kube_fault_proxy)


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


def test_a_worker_over_the_namespace_quota_is_explained_and_not_retried(
        ray_kubelet: ProcessKubelet, kube_config_file: Path, kube_fault_proxy: FaultProxy,
        kube_control_plane: ControlPlane, v1: CoreV1Api, ns: str) -> None:
    """A ResourceQuota (as the JupyterHub policy gives each user) that holds the head but not a
    worker: the apiserver's "exceeded quota" reaches the snapshot, the group backs off instead of
    asking again every round, and stopping leaves nothing behind."""
    v1.create_namespaced_resource_quota(ns, {"metadata": {"name": "ray-quota"}, "spec": {"hard": {"pods": "1"}}})
    wait_until(lambda: v1.read_namespaced_resource_quota("ray-quota", ns).status.hard, timeout_s=30,
               what="the quota controller to count the namespace")
    spec = ClusterSpec(name="k-quota", backend="kubernetes", groups=(WorkerGroup("cpu", cpus=1, max=2, **SMALL),))
    with autoscaled(kube_config_file, manager={"backoff_s": 300.0}) as bm:
            cluster = bm.call(bm.manager.create, spec)
            connect_driver(cluster.handle.address, bm.manager.token)
            ref = where.remote(0)  # demand for a cpu node
            backoff = wait_until(lambda: events_of(bm, cluster, "backoff"), timeout_s=60, what="the group to back off")
            assert len(backoff) == 1 and backoff[0].startswith(
                "backing off the cpu group for 300 s: could not create a cpu node: the namespace's ResourceQuota "
                "refused"), backoff
            assert 'is forbidden: exceeded quota: ray-quota, requested: pods=1, used: pods=1, limited: pods=1' \
                in backoff[0]
            time.sleep(3)  # six more autoscaler rounds: none of them asks again
            refused = [r for r in kube_fault_proxy.requests("POST", pods_path(ns)) if r.status == 403]
            assert len(refused) == 1 and created_pods(kube_fault_proxy, ns) == 1  # the head only
            assert not events_of(bm, cluster, "error")
            ray.cancel(ref, force=True)
            stop_and_check_clean(bm, "k-quota", kube_control_plane, ns, ray_kubelet)
            wait_until(lambda: v1.read_namespaced_resource_quota("ray-quota", ns).status.used == {"pods": "0"},
                       timeout_s=30, what="the quota to be free again")
    assert calls_made(kube_fault_proxy) <= ROLE


def test_a_gpu_quota_of_one_holds_the_second_gpu_worker_whatever_the_users_own_policy(
        ray_kubelet: ProcessKubelet, kube_config_file: Path, kube_fault_proxy: FaultProxy,
        kube_control_plane: ControlPlane, v1: CoreV1Api, ns: str) -> None:
    """The hub hook's ResourceQuota (its own builders, from a policy of 1 GPU) in the user's
    namespace, and a server whose own config raises its policy to 8 GPUs: two GPU tasks ask a
    gpu group that may grow to 2 for two workers. The apiserver admits the first Pod and refuses
    the second; the pending task's reason quotes the quota, and the quota line, which every
    front-end shows, reads 1 of 1 GPUs used."""
    hard = quota_hard(Policy(max_gpus=1, max_clusters=1, max_workers=2), server_requests={},
                      max_memory_bytes=None, accelerators=("nvidia.com/gpu",))
    v1.create_namespaced_resource_quota(ns, quota_manifest(ns, hard, {"raykube.io/owner": "alice"}))
    wait_until(lambda: v1.read_namespaced_resource_quota(QUOTA_NAME, ns).status.hard, timeout_s=30,
               what="the quota controller to count the namespace")
    raised = Config({"ClusterManager": {"policy": {"max_gpus": 8}}})  # the user's jupyter_server_config.py
    spec = ClusterSpec(name="k-gpuq", backend="kubernetes",
                       groups=(WorkerGroup("gpu", cpus=1, gpus=1, max=2, **SMALL),))
    with autoscaled(kube_config_file, manager={"backoff_s": 300.0, "config": raised}) as bm:
        cluster = bm.call(bm.manager.create, spec)
        assert snapshot_of(bm, cluster)["policy"]["max_gpus"] == 8  # the user's server lets it through
        connect_driver(cluster.handle.address, bm.manager.token)
        refs = [hold_gpu.remote(600) for _ in range(2)]

        def quoted() -> dict[str, Any] | None:
            snap = snapshot_of(bm, cluster)
            pending = [d for d in snap["demand"] if "exceeded quota" in d["reason"]]
            used = quota_text(snap["quota"]).startswith("1 of 1 GPUs used")
            return snap if pending and used and snap["groups"][0]["nodes"] == 1 else None

        snap = wait_until(quoted, timeout_s=240, interval_s=0.5, what="one GPU worker running and the second one refused")
        [pending] = [d for d in snap["demand"] if "exceeded quota" in d["reason"]]
        assert pending["count"] == 1 and pending["shape"] == {"CPU": 1.0, "GPU": 1.0}, pending
        assert pending["reason"].startswith("gpu group is backed off: could not create a gpu node: the namespace's "
                                            "ResourceQuota refused to create pods/k-gpuq-gpu-"), pending["reason"]
        assert ("is forbidden: exceeded quota: raykube, requested: requests.nvidia.com/gpu=1, used: "
                "requests.nvidia.com/gpu=1, limited: requests.nvidia.com/gpu=1") in pending["reason"]
        assert snap["quota"]["namespace"] == ns
        assert quota_text(snap["quota"]) == "1 of 1 GPUs used, 2 of 4 pods"  # the head and one gpu worker
        assert "  quota: 1 of 1 GPUs used, 2 of 4 pods" in status_lines(snap)  # %raycluster status
        assert len(worker_pods(v1, ns, "k-gpuq", "gpu")) == 1
        refused = [r for r in kube_fault_proxy.requests("POST", pods_path(ns)) if r.status == 403]
        assert len(refused) == 1 and created_pods(kube_fault_proxy, ns) == 2  # the head and one gpu worker
        for ref in refs:
            ray.cancel(ref, force=True)
        stop_and_check_clean(bm, "k-gpuq", kube_control_plane, ns, ray_kubelet)
    assert calls_made(kube_fault_proxy) <= ROLE


def test_a_pod_its_node_never_starts_shows_its_newest_warning_event(
        silent_kubelet: ProcessKubelet, kube_config_file: Path, kube_fault_proxy: FaultProxy, v1: CoreV1Api,
        ns: str) -> None:
    """Bound to a node whose kubelet hangs, a Pod's status says nothing; what the node reported
    as a Warning Event (here FailedMount) is what the snapshot shows."""
    backend = make_backend(kube_config_file, address_type="service", events_after_s=0.0, delete_wait_s=1.0)
    spec = ClusterSpec(name="k-silent", backend="kubernetes", groups=(WorkerGroup("cpu", max=1),))

    async def scenario() -> None:
        handle = await backend.create_cluster(spec, owner="alice", token="t0ken")
        worker = await backend.create_worker(handle, spec.groups[0])
        pod = wait_until(lambda: (lambda p: p if p.spec.node_name else None)(v1.read_namespaced_pod(worker.name, ns)),
                         what="the scheduler to bind the Pod")
        pending = await find_node(backend, handle, worker.name, "pending")
        assert pod.spec.node_name == "hung-0" and re.fullmatch(r"pulling image \S+ \(\d+ s so far\)", pending.message)
        v1.create_namespaced_event(ns, CoreV1Event(
            metadata=V1ObjectMeta(name=f"{worker.name}.1"), type="Warning", reason="FailedMount",
            message='MountVolume.SetUp failed for volume "data": not found',
            involved_object=V1ObjectReference(kind="Pod", namespace=ns, name=worker.name, uid=pod.metadata.uid),
            source=V1EventSource(component="kubelet", host="hung-0"), count=1))
        async def warned() -> Any:
            node = await find_node(backend, handle, worker.name, "pending")
            return node if node is not None and "FailedMount" in node.message else None

        stuck = await eventually(warned, what="the Event to be read")
        assert stuck.message.endswith('; FailedMount: MountVolume.SetUp failed for volume "data": not found')
        await backend.delete_cluster(handle)

    try:
        anyio.run(scenario)
    finally:
        close_backend(backend)
        v1.delete_collection_namespaced_pod(ns, grace_period_seconds=0)  # the hung node never finishes them
    assert_api_use_is_clean(kube_fault_proxy)


async def _every_call(backend: KubernetesBackend, proxy: FaultProxy, ns: str) -> list[str]:
    """Each backend call a Jupyter server makes, in order; what failed (as text), not raised."""
    failures: list[str] = []
    spec = ClusterSpec(name="k-rbac", backend="kubernetes", groups=(WorkerGroup("cpu", max=1),))

    async def step(call: Awaitable[Any]) -> Any:
        try:
            return await call
        except (BackendError, ClusterNotFound, ExceptionGroup) as exc:  # a group: from deletes done in parallel
            failures.append(str(exc) if not isinstance(exc, ExceptionGroup) else "; ".join(map(str, exc.exceptions)))
            return None

    # A create of each kind whose answer is lost: the retry's 409 makes the backend read it back.
    for resource in ("secrets", "services", "pods"):
        proxy.inject("POST", rf"^/api/v1/namespaces/{ns}/{resource}$", lose_answer=True, times=1)
    proxy.inject("POST", rf"^/apis/networking\.k8s\.io/v1/namespaces/{ns}/networkpolicies$", lose_answer=True, times=1)
    handle = await step(backend.create_cluster(spec, owner="alice", token="t0ken"))
    if handle is None:
        return failures
    worker = await step(backend.create_worker(handle, spec.groups[0]))
    await step(backend.list_nodes(handle))  # Pending with an empty status: its Events are read
    await step(backend.logs(handle, "k-rbac-head"))
    await step(backend.quota())  # shown, never raised: a refusal reads as no quota
    await step(backend.discover())
    await step(backend.save_spec(handle, spec.with_group_range("cpu", 0, 2)))  # a scale's desired state
    if worker is not None:
        await step(backend.remove_node(handle, worker.name))
    await step(backend.delete_cluster(handle))
    return failures


def test_every_rule_of_deploy_rbac_yaml_is_needed(silent_kubelet: ProcessKubelet, kube_control_plane: ControlPlane,
                                                  make_kube_namespace: Callable[..., str],
                                                  kube_fault_proxy: FaultProxy, v1: CoreV1Api,
                                                  tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With the Role exactly as written, every call of a server's life succeeds; with any one
    (resource, verb) taken out, some call gets the apiserver's 403 for exactly that one. The
    quota read only feeds the display: a Role without it (an older one) breaks no call and
    logs one warning."""
    from tests.kube.identity import role_rules

    def run_with(rules: list[dict[str, Any]], label: str) -> tuple[str, list[str]]:
        kube_fault_proxy.clear_faults()
        ns = make_kube_namespace(f"rbac-{label}", RESTRICTED)
        v1.create_namespaced_pod(ns, restricted(pod_manifest("jupyter-alice", {"app": "jupyterhub"},
                                                             ["sleep", "inf"])))
        config = backend_kubeconfig(kube_control_plane, ns, tmp_path / f"{label}.kubeconfig",
                                    server=kube_fault_proxy.url, rules=rules)
        backend = make_backend(config, address_type="service", owner_pod_name="jupyter-alice", events_after_s=0.0,
                               retry_timeout=5.0, delete_wait_s=1.0,
                               node_selector={"*": {"kubernetes.io/hostname": "hung-0"}})
        try:
            return ns, anyio.run(_every_call, backend, kube_fault_proxy, ns)
        finally:
            close_backend(backend)
            # what the hung node never finishes deleting would fill it up for the next run
            v1.delete_collection_namespaced_pod(ns, grace_period_seconds=0)

    def refused_calls(ns: str) -> set[tuple[str, str]]:
        calls = set()
        for record in kube_fault_proxy.requests():
            match = API_PATH.match(record.path)
            if record.status != 403 or record.fault or not match or f"/namespaces/{ns}/" not in record.path:
                continue
            resource = match["res"] + (f"/{match['sub']}" if match["sub"] else "")
            verb = "get" if record.method == "GET" and match["name"] else (
                "watch" if "watch=" in record.query else "list") if record.method == "GET" else {
                "POST": "create", "DELETE": "delete", "PATCH": "patch"}[record.method]
            calls.add((resource, verb))
        return calls

    rules = role_rules()
    ns, failures = run_with(rules, "all")
    assert refused_calls(ns) == set() and not [f for f in failures if "permission denied" in f], failures
    assert calls_made(kube_fault_proxy) == ROLE  # every rule was used
    for rule_index, rule in enumerate(rules):
        for resource in rule["resources"]:
            for verb in rule["verbs"]:
                reduced = [dict(r) for r in rules]
                reduced[rule_index] = {**rule, "resources": [resource], "verbs": [v for v in rule["verbs"] if v != verb]}
                others = [r for r in rule["resources"] if r != resource]
                if others:
                    reduced.append({**rule, "resources": others})
                reduced = [r for r in reduced if r["verbs"]]
                ns, failures = run_with(reduced, f"{resource.replace('/', '-')}-{verb}")
                assert (resource, verb) in refused_calls(ns), f"nothing needed {verb} on {resource}"
                if resource == "resourcequotas":
                    assert failures == [], failures
    quota_warnings = [r for r in caplog.records if "Not showing the ResourceQuota raykube" in r.getMessage()]
    assert len(quota_warnings) == 1 and "may not get resourcequotas" in quota_warnings[0].getMessage()
