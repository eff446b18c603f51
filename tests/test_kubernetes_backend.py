"""The Kubernetes backend over HTTP, with the unpatched official client, against the API
emulator and the process kubelet (tests/kube): faults and retries, owner garbage collection,
Pod states, and real Ray clusters that autoscale, back off and are adopted by a new manager.

How addresses work here: the kubelet runs every Pod as a local process with its own loopback
IP (127.0.0.x) and rewrites Service names in a container's command line to the head Pod's IP.
This test process has no cluster DNS, so backends run with `address_type="pod-ip"`: the
manager (GCS reads, drains) and the driver (`ray.init`) use the head Pod's IP, as a Jupyter
server without cluster DNS would. All Pods share one network namespace, so `own_ports` gives
each Ray node its own ports, which a real Pod does not need.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
import ray
from IPython.core.interactiveshell import InteractiveShell
from kubernetes.client import ApiClient, CoreV1Api, CoreV1Event, V1EventSource, V1ObjectMeta, V1ObjectReference, V1Pod
from traitlets.config import Config

from jupyter_raykube.backends.base import BackendError, ClusterNotFound
from jupyter_raykube.backends.k8s_watch import PodReflector
from jupyter_raykube.backends.kubernetes import ClusterExists, KubernetesBackend, PermissionDenied
from jupyter_raykube.backends.registry import BACKEND_ENV, resolve_backend
from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.client import LocalClient
from jupyter_raykube.connect import connect_driver
from jupyter_raykube.manager import Cluster, ClusterManager
from jupyter_raykube.magics import RayClusterMagics
from jupyter_raykube.spec import ClusterSpec, SpecError, WorkerGroup
from tests.kube.emulator import KubeEmulator
from tests.kube.fixtures import kube_api_client, kube_config_file, kube_emulator, process_kubelet  # noqa: F401
from tests.kube.fixtures import running_kubelet
from tests.kube.helpers import pod as pod_manifest
from tests.kube.helpers import wait_until
from tests.kube.kubelet import ProcessKubelet

pytestmark = pytest.mark.k8s
T = TypeVar("T")
NS = "default"
MiB = 1024**2
PODS = r"^/api/v1/namespaces/default/pods$"
SMALL = {"memory": 512 * MiB, "object_store_memory": 128 * MiB}  # Ray's minimum object store is 75 MiB
ROLE = {("pods", v) for v in ("create", "get", "list", "watch", "delete")} | {("pods/log", "get")} \
    | {(r, v) for r in ("services", "secrets") for v in ("create", "get", "list", "delete")} | {("events", "list")}
_NODE_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-grpc-port",
                    "--runtime-env-agent-port", "--metrics-export-port")


def free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("0.0.0.0", 0))
        return [sock.getsockname()[1] for sock in socks]


def own_ports(pod: dict[str, Any], argv: list[str]) -> list[str]:
    """Every Pod here shares the host's network namespace: give each Ray node its own ports
    (workers also their own dashboard agent port; the head's comes from the backend config)."""
    worker = pod["metadata"]["labels"].get("raykube.io/node-type") == "worker"
    ports = free_ports(len(_NODE_PORT_FLAGS) + 1)
    argv = [a for a in argv if not (worker and a.startswith("--dashboard-agent-listen-port="))]
    argv += [f"{flag}={port}" for flag, port in zip(_NODE_PORT_FLAGS, ports)]
    return argv + ([f"--dashboard-agent-listen-port={ports[-1]}"] if worker else [])


@pytest.fixture
def ray_kubelet(kube_emulator: KubeEmulator) -> Iterator[ProcessKubelet]:
    """`process_kubelet` with per-node ports (see `own_ports`), same teardown checks."""
    yield from running_kubelet(kube_emulator, rewrite_argv=own_ports)


def make_backend(config_file: Path, **traits: Any) -> KubernetesBackend:
    return KubernetesBackend(**backend_settings(config_file, **traits))


def backend_settings(config_file: Path, **traits: Any) -> dict[str, Any]:
    """KubernetesBackend traits for the emulator and the process kubelet (free ports each time)."""
    gcs, dashboard, client, agent = free_ports(4)
    settings: dict[str, Any] = {
        "kubeconfig": str(config_file), "namespace": NS, "owner": "alice", "address_type": "pod-ip",
        "health_probes": "head", "gcs_port": gcs, "dashboard_port": dashboard, "client_port": client,
        "dashboard_agent_port": agent, "request_timeout": 5.0, "retry_timeout": 30.0,
        "worker_memory": SMALL["memory"], "worker_object_store_memory": SMALL["object_store_memory"],
        "head_memory": SMALL["memory"], "head_object_store_memory": SMALL["object_store_memory"],
        # several raylets start at once on 2 busy cores: give their agents time (as the local backend does)
        "extra_env": {"RAY_agent_register_timeout_ms": "120000"}}
    return {**settings, **traits}


def close_backend(backend: KubernetesBackend) -> None:
    anyio.run(backend.close)


async def eventually(probe: Callable[[], Awaitable[T]], timeout: float = 60.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last value {value!r}")
        await anyio.sleep(0.2)


def kubectl_objects(config_file: Path, cluster: str, tmp_path: Path) -> list[dict[str, Any]]:
    """What `kubectl get pods,services,secrets -l raykube.io/cluster=NAME` lists."""
    out = subprocess.run(["kubectl", "--kubeconfig", str(config_file), "--cache-dir", str(tmp_path / "kubectl"),
                          "get", "pods,services,secrets", "-l", f"raykube.io/cluster={cluster}", "-o", "json"],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)["items"]


_PATH = re.compile(r"^/api/v1/namespaces/[^/]+/(?P<res>[a-z]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?$")


def calls_made(emulator: KubeEmulator) -> set[tuple[str, str]]:
    """(resource, RBAC verb) of every request the backend made (by its User-Agent)."""
    calls = set()
    for record in emulator.requests():
        if not record.user_agent.startswith("jupyter-raykube/"):
            continue  # the test's own calls, kubectl's
        match = _PATH.match(record.path)
        assert match, f"unexpected API path {record.path}"
        resource = match["res"] + (f"/{match['sub']}" if match["sub"] else "")
        if record.method == "GET":
            verb = "get" if match["name"] else ("watch" if re.search(r"watch=(true|1)", record.query) else "list")
        else:
            verb = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}[record.method]
        calls.add((resource, verb))
    return calls


def assert_api_use_is_clean(emulator: KubeEmulator) -> None:
    """Every object we wrote passed validation (no 422) and every call is one deploy/rbac.yaml grants."""
    assert not [r for r in emulator.requests() if r.status == 422], "an object failed the API server's validation"
    calls = calls_made(emulator)
    assert ("pods", "create") in calls and calls <= ROLE, calls - ROLE


# --- the API, without Ray ------------------------------------------------------------------


def _pod(name: str, version: int, deleting: bool = False) -> V1Pod:
    meta = V1ObjectMeta(name=name, resource_version=str(version),
                        deletion_timestamp=datetime.now(timezone.utc) if deleting else None)
    return V1Pod(metadata=meta)


def test_pod_cache_keeps_the_newest_version_and_remembers_deletions() -> None:
    cache = PodReflector(CoreV1Api(ApiClient()), NS, "app=x")  # not started: only the cache
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


def test_pod_cache_lists_again_when_its_watch_expires() -> None:
    emulator = KubeEmulator(history_size=5).start()  # a short history: a resumed watch gets 410 Gone
    api_client = emulator.api_client()
    api = CoreV1Api(api_client)
    cache = PodReflector(api, NS, "app=ray", request_timeout_s=5, watch_timeout_s=1).start()
    try:
        wait_until(cache.first_load.is_set, what="the first list")
        api.create_namespaced_pod(NS, pod_manifest("a", {"app": "ray"}, ["sleep", "inf"]))
        wait_until(lambda: cache.get("a"), what="the watch to see Pod a")
        outage = emulator.inject("GET", r"/pods$", query_regex="watch=true", status=503, times=None)
        wait_until(lambda: outage.hits, what="the watch to be cut off")
        for name in "bcdefg":  # more changes than the server keeps
            api.create_namespaced_pod(NS, pod_manifest(name, {"app": "ray"}, ["sleep", "inf"]))
        api.delete_namespaced_pod("a", NS)
        outage.remove()
        wait_until(lambda: sorted(p.metadata.name for p in cache.pods()) == list("bcdefg"), timeout_s=30,
                   what="the cache to catch up")
        assert cache.lists == 2 and cache.last_error == ""
    finally:
        cache.stop()
        api_client.close()
        emulator.stop()


def test_api_faults_are_retried_without_duplicate_pods(kube_emulator: KubeEmulator, kube_config_file: Path) -> None:
    backend = make_backend(kube_config_file, address_type="service", request_timeout=0.5, retry_timeout=20.0)
    spec = ClusterSpec(name="k-faults", backend="kubernetes", groups=(WorkerGroup("cpu", max=9),))
    group = spec.groups[0]

    async def scenario() -> None:
        handle = await backend.create_cluster(spec, owner="alice", token="t0ken")
        assert handle.address == f"k-faults-head-svc.default.svc.cluster.local:{backend.gcs_port}"
        created = []

        kube_emulator.inject("POST", PODS, status=500, times=2)
        created.append(await backend.create_worker(handle, group))

        kube_emulator.inject("POST", PODS, status=429, retry_after_s=1, times=1)
        started = time.monotonic()
        created.append(await backend.create_worker(handle, group))
        assert time.monotonic() - started >= 1.0, "Retry-After was not honoured"

        # A conflict for a Pod that does not exist, then a create whose response is lost (the
        # server creates the Pod after the client gave up), then two 503s: the retry that
        # finally gets through finds its own Pod (409 with our labels) and takes it.
        kube_emulator.inject("POST", PODS, status=409, times=1)
        slow = kube_emulator.inject("POST", PODS, status=None, delay_s=1.0, times=1)
        kube_emulator.inject("POST", PODS, status=503, times=2)
        created.append(await backend.create_worker(handle, group))
        assert slow.hits == 1

        workers = [p for p in CoreV1Api(backend.api_client).list_namespaced_pod(
            NS, label_selector="raykube.io/cluster=k-faults,raykube.io/node-type=worker").items]
        assert sorted(p.metadata.name for p in workers) == sorted(n.name for n in created)
        posts = kube_emulator.requests("POST", PODS)
        assert len([r for r in posts if r.status == 201]) == 1 + 3  # the head + one per worker, no duplicates
        assert [r.status for r in posts if r.status == 409 and not r.fault] == [409]  # the lost create, found
        listed = await backend.list_nodes(handle)
        assert sorted(n.name for n in listed if n.group == "cpu") == sorted(n.name for n in created)

        kube_emulator.inject("POST", PODS, status=403, times=1, message='pods is forbidden: User '
                             '"system:serviceaccount:default:default" cannot create resource "pods"')
        with pytest.raises(PermissionDenied, match=r"may not create pods/k-faults-cpu-\w{5} in namespace "
                                                   r"default .*deploy/rbac.yaml \(verb 'create' on 'pods'\)"):
            await backend.create_worker(handle, group)

        # A second server cannot take the name; the first cluster is left alone.
        other, refused = (make_backend(kube_config_file, address_type="service") for _ in range(2))
        try:
            with pytest.raises(ClusterExists, match="'k-faults' already exists in namespace default"):
                await other.create_cluster(spec, owner="alice", token="t0ken")
            assert len(await backend.list_nodes(handle)) == 1 + 3
            # One that may not list Pods is told so at once, not after retry_timeout.
            kube_emulator.inject("GET", PODS, status=403, times=None)
            with pytest.raises(PermissionDenied, match=r"could not list Pods in namespace default: permission "
                                                       r"denied: the service account may not list pods"):
                with anyio.fail_after(10):
                    await refused.list_nodes(handle)
            kube_emulator.clear_faults()
        finally:
            await other.close()
            await refused.close()

        backend.retry_timeout = 1.0
        kube_emulator.inject("GET", r"/log$", status=503, times=None)
        with pytest.raises(BackendError, match=r"did not answer get pods/log/\S+ in namespace default for 1 s"):
            await backend.logs(handle, created[0].name)
        kube_emulator.clear_faults()
        backend.retry_timeout = 20.0

        await backend.remove_node(handle, created[0].name)
        assert created[0].name not in {n.name for n in await backend.list_nodes(handle)}  # at once, from the cache
        await backend.remove_node(handle, created[0].name)  # already gone: fine
        await backend.delete_cluster(handle)
        await backend.delete_cluster(handle)  # safe twice
        with pytest.raises(ClusterNotFound):
            await backend.list_nodes(handle)

    try:
        anyio.run(scenario)
    finally:
        close_backend(backend)
    assert_api_use_is_clean(kube_emulator)


def test_deleting_the_server_pod_deletes_the_cluster(kube_emulator: KubeEmulator, kube_config_file: Path,
                                                     kube_api_client: ApiClient, tmp_path: Path) -> None:
    v1 = CoreV1Api(kube_api_client)
    server = v1.create_namespaced_pod(NS, pod_manifest("jupyter-alice", {"app": "jupyterhub"}, ["sleep", "inf"]))
    backend = make_backend(kube_config_file, address_type="service", owner_pod_name="jupyter-alice",
                           events_after_s=0.0)
    spec = ClusterSpec(name="k-owned", backend="kubernetes", groups=(WorkerGroup("cpu", max=2),))

    async def scenario() -> None:
        handle = await backend.create_cluster(spec, owner="alice", token="t0ken")
        workers = [await backend.create_worker(handle, spec.groups[0]) for _ in range(2)]
        # No kubelet here: the Pods stay Pending with nothing in their status; a Warning Event says why.
        stuck = v1.read_namespaced_pod(workers[0].name, NS)
        v1.create_namespaced_event(NS, CoreV1Event(
            metadata=V1ObjectMeta(name=f"{stuck.metadata.name}.1"), type="Warning", reason="FailedMount",
            message='MountVolume.SetUp failed for volume "data": not found',
            involved_object=V1ObjectReference(kind="Pod", namespace=NS, name=stuck.metadata.name,
                                              uid=stuck.metadata.uid),
            source=V1EventSource(component="kubelet"), count=1))
        nodes = {n.name: n for n in await backend.list_nodes(handle)}
        assert nodes[workers[0].name].message == 'FailedMount: MountVolume.SetUp failed for volume "data": not found'
        assert nodes[workers[1].name].message == ""
        objects = kubectl_objects(kube_config_file, "k-owned", tmp_path)
        assert sorted(o["kind"] for o in objects) == ["Pod", "Pod", "Pod", "Secret", "Service"]
        for obj in objects:
            assert obj["metadata"]["ownerReferences"] == [
                {"apiVersion": "v1", "kind": "Pod", "name": "jupyter-alice", "uid": server.metadata.uid}]

        v1.delete_namespaced_pod("jupyter-alice", NS)  # JupyterHub stops the user's server
        wait_until(lambda: not kubectl_objects(kube_config_file, "k-owned", tmp_path), timeout_s=30,
                   what="the garbage collector to delete the cluster")
        await eventually(lambda: _gone(backend, handle), timeout=30, what="the watch to see the head go")

        misconfigured = make_backend(kube_config_file, address_type="service", owner_pod_name="jupyter-bob")
        try:
            with pytest.raises(BackendError, match="owner Pod 'jupyter-bob' not found in namespace default"):
                await misconfigured.create_cluster(spec, owner="bob", token="t0ken")
        finally:
            await misconfigured.close()

    try:
        anyio.run(scenario)
    finally:
        close_backend(backend)
    assert_api_use_is_clean(kube_emulator)


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


def test_pod_states_explain_why_nodes_do_not_run(kube_emulator: KubeEmulator, process_kubelet: ProcessKubelet,
                                                  kube_config_file: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake-ray"
    fake.write_text(FAKE_RAY)
    fake.chmod(0o755)
    process_kubelet.make_unschedulable(lambda p: p["metadata"]["labels"].get("raykube.io/group") == "big",
                                       "0/1 nodes are available: 1 Insufficient cpu.")
    process_kubelet.fail_image_pull("registry.example/missing:*")
    backend = make_backend(kube_config_file, ray_command=str(fake), health_probes="none",
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
        assert nodes["gpu"] == ("pending", 'ImagePullBackOff: Back-off pulling image "registry.example/missing:1"')
        assert nodes["big"] == ("pending", "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.")
        assert "boom: raylet failed to start" in await backend.logs(handle, names["crash"], tail=5)
        assert await backend.logs(handle, "k-states-cpu-nope") == ""

        process_kubelet.oom_kill(NS, names["cpu"])
        oom = await eventually(lambda: _node(backend, handle, names["cpu"], "exited"), what="the OOM kill")
        assert oom.message == "container exited with code 137 (OOMKilled)"

        # discover(), from a server configured otherwise (other ports): finds the live cluster
        # again, and deletes one whose head Pod has exited
        dead_backend = make_backend(kube_config_file, address_type="service", ray_command=str(fake),
                                    health_probes="none")
        try:
            dead = await dead_backend.create_cluster(dead_spec, owner="alice", token="t0ken")
            await eventually(lambda: _node(dead_backend, dead, "k-dead-head", "exited"), what="the head to exit")
            found = await make_backend(kube_config_file).discover()
        finally:
            await dead_backend.close()
        assert [h.name for h in found] == ["k-states"]
        again = found[0]
        assert (again.address, again.dashboard_address, again.client_address, again.spec, again.owner,
                again.details["token"], again.details["image"], again.created_at) == (
            handle.address, handle.dashboard_address, handle.client_address, spec, "alice", "t0ken",
            backend.image, handle.created_at)
        assert not kubectl_objects(kube_config_file, "k-dead", tmp_path)
        assert await make_backend(kube_config_file, owner="bob").discover() == []  # another user's

        await backend.delete_cluster(handle)
        assert not kubectl_objects(kube_config_file, "k-states", tmp_path)

    try:
        anyio.run(scenario)
    finally:
        close_backend(backend)
    assert_api_use_is_clean(kube_emulator)


async def _node(backend: KubernetesBackend, handle: Any, name: str, phase: str) -> Any:
    return next((n for n in await backend.list_nodes(handle) if n.name == name and n.phase == phase), None)


# --- real Ray clusters -----------------------------------------------------------------------


def _manager(backend: KubernetesBackend, **traits: Any) -> BlockingManager:
    return BlockingManager(lambda: ClusterManager(backend=backend, owner="alice", autoscale_interval_s=0.5, **traits))


def _snapshot(bm: BlockingManager, cluster: Cluster) -> dict[str, Any]:
    async def take() -> dict[str, Any]:
        return cluster.snapshot()

    return bm.call(take)


def _events(bm: BlockingManager, cluster: Cluster, kind: str) -> list[str]:
    return [e["message"] for e in _snapshot(bm, cluster)["events"] if e["kind"] == kind]


def _worker_pods(v1: CoreV1Api, cluster: str, group: str | None = None) -> list[Any]:
    selector = f"raykube.io/cluster={cluster},raykube.io/node-type=worker"
    if group:
        selector += f",raykube.io/group={group}"
    return v1.list_namespaced_pod(NS, label_selector=selector).items


@ray.remote(num_cpus=1)
def where(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ["RAY_CLOUD_INSTANCE_ID"]  # the Pod's name, set by the backend


@ray.remote(num_cpus=1, num_gpus=1)
def on_gpu() -> tuple[str, list[Any]]:
    return os.environ["RAY_CLOUD_INSTANCE_ID"], list(ray.get_gpu_ids())


def _stop_and_check_clean(bm: BlockingManager, name: str, config_file: Path, kubelet: ProcessKubelet,
                          tmp_path: Path) -> None:
    ray.shutdown()
    bm.call(bm.manager.stop, name)
    assert kubectl_objects(config_file, name, tmp_path) == []
    wait_until(lambda: not kubelet.leftover_processes(), timeout_s=60, what="every Ray process to exit")


def test_magic_starts_a_kubernetes_cluster_that_autoscales_pods_and_stops_clean(
        kube_emulator: KubeEmulator, ray_kubelet: ProcessKubelet, kube_config_file: Path, kube_api_client: ApiClient,
        tmp_path: Path) -> None:
    """`%raycluster start --backend kubernetes` from a kernel whose default backend is local:
    the manager builds the Kubernetes backend from its config on first use."""
    v1 = CoreV1Api(kube_api_client)
    config = Config({"KubernetesBackend": backend_settings(kube_config_file, request_timeout=2.0)})
    bm = BlockingManager(lambda: ClusterManager(default_backend="local", owner="alice", autoscale_interval_s=0.5,
                                                config=config))
    shell = InteractiveShell.instance()
    shell.register_magics(RayClusterMagics(shell, client=LocalClient(bm)))
    try:
        shell.run_line_magic("raycluster", "start k-life --backend kubernetes --worker-cpus 1 "
                                           "--cpu-workers 0:2 --gpu-workers 0:1 --idle-timeout 5")
        cluster = bm.call(bm.manager.get, "k-life")
        assert cluster.backend.name == "kubernetes" and bm.manager.backend.name == "local"
        assert v1.read_namespaced_pod("k-life-head", NS).status.phase == "Running"
        assert ray.is_initialized()  # through Ray Client, as a notebook outside the cluster connects
        wait_until(lambda: any(c.type == "Ready" and c.status == "True"
                               for c in v1.read_namespaced_pod("k-life-head", NS).status.conditions),
                   timeout_s=60, what="the head's readiness probe (/api/healthz)")

        # The API server fails and stalls while the autoscaler creates worker Pods.
        kube_emulator.inject("POST", PODS, status=503, times=2)
        kube_emulator.inject("POST", PODS, status=None, delay_s=3.0, times=1)  # the response is lost
        hosts = ray.get([where.remote(2) for _ in range(4)], timeout=240)
        assert all(h.startswith("k-life-cpu-") for h in hosts), hosts

        gpu_node, gpu_ids = ray.get(on_gpu.remote(), timeout=240)
        assert gpu_node.startswith("k-life-gpu-") and len(gpu_ids) == 1
        container = v1.read_namespaced_pod(gpu_node, NS).spec.containers[0]
        assert container.resources.limits == {"cpu": "1", "memory": "640Mi", "nvidia.com/gpu": "1"}
        assert {"--num-cpus=1", "--num-gpus=1", f"--memory={512 * MiB}"} <= set(container.args)

        # Each launch made exactly one Pod, retried creates included. (On a loaded machine a node
        # can fail to start, be removed and be launched again: launches count, not the group max.)
        launched = sum(int(m.split()[1]) for m in _events(bm, cluster, "scale_up"))
        created = [r for r in kube_emulator.requests("POST", PODS) if r.status == 201]
        assert len(created) == 1 + launched, "a worker Pod was created twice"
        assert not _events(bm, cluster, "error"), _events(bm, cluster, "error")

        wait_until(lambda: not _worker_pods(v1, "k-life"), timeout_s=90, what="idle workers to be removed")
        scale_down = _events(bm, cluster, "scale_down")
        assert any(m.startswith("draining cpu node") for m in scale_down), scale_down
        assert any(m.startswith("removed idle gpu node") for m in scale_down), scale_down

        shell.run_line_magic("raycluster", "stop k-life")
        assert not ray.is_initialized()
        assert kubectl_objects(kube_config_file, "k-life", tmp_path) == []
        wait_until(lambda: not ray_kubelet.leftover_processes(), timeout_s=60, what="every Ray process to exit")
    finally:
        ray.shutdown()
        bm.close()
    assert_api_use_is_clean(kube_emulator)


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


def test_unschedulable_pods_are_explained_and_their_group_backs_off(
        kube_emulator: KubeEmulator, ray_kubelet: ProcessKubelet, kube_config_file: Path,
        kube_api_client: ApiClient, tmp_path: Path) -> None:
    why = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    ray_kubelet.make_unschedulable(lambda p: p["metadata"]["labels"].get("raykube.io/group") == "gpu", why)
    v1 = CoreV1Api(kube_api_client)
    backend = make_backend(kube_config_file)
    bm = _manager(backend, join_timeout_s=6.0, backoff_s=300.0)
    spec = ClusterSpec(name="k-unsched", backend="kubernetes", groups=(
        WorkerGroup("gpu", cpus=1, gpus=1, max=1, **SMALL),))
    try:
        cluster = bm.call(bm.manager.create, spec)
        connect_driver(cluster.handle.address, bm.manager.token)
        ref = on_gpu.remote()

        def gpu_node() -> dict[str, Any] | None:
            return next((n for n in _snapshot(bm, cluster)["nodes"] if n["group"] == "gpu" and n["message"]), None)

        node = wait_until(gpu_node, timeout_s=60, what="the gpu node's Pending reason")
        assert (node["state"], node["message"]) == ("starting", f"Unschedulable: {why}")
        backoff = wait_until(lambda: _events(bm, cluster, "backoff"), timeout_s=60, what="the group to back off")
        assert backoff == [(f"backing off the gpu group for 300 s: gpu node {node['name']} did not join Ray "
                            f"within 6 s: Unschedulable: {why}")]
        wait_until(lambda: not _worker_pods(v1, "k-unsched"), timeout_s=30, what="the Pending Pod to be removed")

        def backed_off() -> dict[str, Any] | None:
            return next((d for d in _snapshot(bm, cluster)["demand"]
                         if d["shape"].get("GPU") and "backed off" in d["reason"]), None)

        demand = wait_until(backed_off, timeout_s=30, what="the demand to say why it waits")
        assert f"gpu group is backed off: gpu node {node['name']} did not join Ray" in demand["reason"]
        created = [r for r in kube_emulator.requests("POST", PODS) if r.status == 201]
        assert len(created) == 2, "a backed-off group launched again"  # the head, one gpu Pod
        ray.cancel(ref, force=True)
        _stop_and_check_clean(bm, "k-unsched", kube_config_file, ray_kubelet, tmp_path)
    finally:
        ray.shutdown()
        bm.close()
        close_backend(backend)
    assert_api_use_is_clean(kube_emulator)


def test_a_new_manager_adopts_a_running_cluster_and_keeps_autoscaling(
        kube_emulator: KubeEmulator, ray_kubelet: ProcessKubelet, kube_config_file: Path,
        kube_api_client: ApiClient, tmp_path: Path) -> None:
    v1 = CoreV1Api(kube_api_client)
    spec = ClusterSpec(name="k-adopt", backend="kubernetes", idle_timeout_s=60, groups=(
        WorkerGroup("cpu", cpus=1, max=1, **SMALL),))
    first_backend = make_backend(kube_config_file)
    first = _manager(first_backend, stop_clusters_on_close=False)
    try:
        created = first.call(first.manager.create, spec)
    finally:
        first.close()  # the first server goes away; its cluster keeps running
        close_backend(first_backend)
    assert created.handle is not None
    assert v1.read_namespaced_pod("k-adopt-head", NS).status.phase == "Running"

    backend = make_backend(kube_config_file)  # a new server: its own (different) port settings
    bm = _manager(backend, adopt_on_start=True)  # as RayKube runs when clusters outlive the server
    try:
        cluster = bm.call(bm.manager.get, "k-adopt")
        assert cluster.handle is not None and cluster.owned
        assert (cluster.handle.address, cluster.spec) == (created.handle.address, spec)
        assert "this server now autoscales the cluster" in [e["message"] for e in _snapshot(bm, cluster)["events"]]
        connect_driver(cluster.handle.address, bm.manager.token)
        host = ray.get(where.remote(0), timeout=240)
        assert host.startswith("k-adopt-cpu-") and host in [p.metadata.name for p in _worker_pods(v1, "k-adopt")]

        # Ray Client (ray://), what a notebook outside the cluster uses (through kubectl port-forward)
        program = ("import os, ray\n"
                   f"ray.init('ray://{cluster.handle.client_address}')\n"
                   "print('ran on', ray.get(ray.remote(lambda: os.environ['RAY_CLOUD_INSTANCE_ID']).remote()))")
        client = subprocess.run([sys.executable, "-c", program], check=False, capture_output=True, text=True,
                                env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": bm.manager.token},
                                timeout=180)
        assert "ran on k-adopt-" in client.stdout, client.stderr[-3000:]
        _stop_and_check_clean(bm, "k-adopt", kube_config_file, ray_kubelet, tmp_path)
    finally:
        ray.shutdown()
        bm.close()
        close_backend(backend)
    assert_api_use_is_clean(kube_emulator)
