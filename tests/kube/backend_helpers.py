"""What the KubernetesBackend tests share (test_k8s_lifecycle, test_k8s_faults,
test_k8s_start_phases, test_k8s_quota_rbac, and the Kubernetes tests of jobs, scheduling and the
UI): the backend's settings for the test control plane (tests/kube), the Role's calls as the
fault proxy logged them, managers over a backend as a server runs them, and the Ray tasks that
make demand. Their fixtures (``ns``, ``kube_config_file``, ``v1``, ``ray_kubelet``,
``silent_kubelet``) are in ``backend_fixtures.py``, registered for the suite by tests/conftest.py.

Who is who: the backend authenticates as the ServiceAccount of deploy/rbac.yaml (a TokenRequest
token, through the fault proxy, whose request log the tests read); the test's own setup and
checks use the admin client. Each test has its own namespace, enforcing Pod Security
"restricted" as user namespaces often do.

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
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import ray
from kubernetes.client import CoreV1Api

from jupyter_raykube.backends.kubernetes import KubernetesBackend
from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.manager import Cluster, ClusterManager

from .controlplane import ControlPlane
from .faultproxy import FaultProxy
from .helpers import wait_until
from .kubelet import ProcessKubelet

T = TypeVar("T")
MiB = 1024**2
SMALL = {"memory": 512 * MiB, "object_store_memory": 128 * MiB}  # Ray's minimum object store is 75 MiB
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
ROLE = {("pods", v) for v in ("create", "get", "list", "watch", "patch", "delete")} | {("pods/log", "get")} \
    | {("services", v) for v in ("create", "get", "list", "delete")} \
    | {("secrets", v) for v in ("create", "get", "delete")} | {("events", "list")} \
    | {("networkpolicies", v) for v in ("create", "get", "delete")} | {("resourcequotas", "get")}
_NODE_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-grpc-port",
                    "--runtime-env-agent-port", "--metrics-export-port")


def pods_path(ns: str) -> str:
    return rf"^/api/v1/namespaces/{ns}/pods$"


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


def make_backend(config_file: Path, **traits: Any) -> KubernetesBackend:
    return KubernetesBackend(**backend_settings(config_file, **traits))


def backend_settings(config_file: Path, **traits: Any) -> dict[str, Any]:
    """KubernetesBackend traits for the test cluster and the process kubelet (free ports each time);
    the namespace is the kubeconfig context's."""
    gcs, dashboard, client, agent = free_ports(4)
    settings: dict[str, Any] = {
        "kubeconfig": str(config_file), "owner": "alice", "address_type": "pod-ip",
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


def kubectl_objects(control_plane: ControlPlane, ns: str, cluster: str) -> list[dict[str, Any]]:
    """What `kubectl get pods,services,secrets -l raykube.io/cluster=NAME` lists."""
    out = control_plane.kubectl("get", "pods,services,secrets", "-n", ns, "-l", f"raykube.io/cluster={cluster}",
                                "-o", "json")
    return json.loads(out.stdout)["items"]


API_PATH = re.compile(r"^/(?:api/v1|apis/networking\.k8s\.io/v1)/namespaces/[^/]+/(?P<res>[a-z]+)"
                   r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?$")


def calls_made(proxy: FaultProxy) -> set[tuple[str, str]]:
    """(resource, RBAC verb) of every request the backend made (by its User-Agent)."""
    calls = set()
    for record in proxy.requests():
        if not record.user_agent.startswith("jupyter-raykube/"):
            continue  # the test's own calls
        match = API_PATH.match(record.path)
        assert match, f"unexpected API path {record.path}"
        resource = match["res"] + (f"/{match['sub']}" if match["sub"] else "")
        if record.method == "GET":
            verb = "get" if match["name"] else ("watch" if re.search(r"watch=(true|1)", record.query) else "list")
        else:
            verb = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}[record.method]
        calls.add((resource, verb))
    return calls


def assert_api_use_is_clean(proxy: FaultProxy) -> None:
    """The apiserver accepted every object we wrote (no 422) and refused nothing the Role should
    allow (no 403 it answered itself); every call is one deploy/rbac.yaml grants."""
    assert not [r for r in proxy.requests() if r.status == 422], "an object failed the API server's validation"
    assert not [r for r in proxy.requests() if r.status == 403 and not r.fault], "the apiserver refused a call"
    calls = calls_made(proxy)
    assert ("pods", "create") in calls and calls <= ROLE, calls - ROLE


def created_pods(proxy: FaultProxy, ns: str) -> int:
    """Pods the apiserver created for the backend (a create whose answer was lost included)."""
    return len([r for r in proxy.requests("POST", pods_path(ns)) if r.status == 201])


async def find_node(backend: KubernetesBackend, handle: Any, name: str, phase: str, message: bool = False) -> Any:
    return next((n for n in await backend.list_nodes(handle)
                 if n.name == name and n.phase == phase and (n.message or not message)), None)


# --- managers over a backend, as a server runs them; Ray tasks that make demand ------------


def blocking_manager_for(backend: KubernetesBackend, **traits: Any) -> BlockingManager:
    return BlockingManager(lambda: ClusterManager(backend=backend, owner="alice", autoscale_interval_s=0.5, **traits))


@contextmanager
def autoscaled(config_file: Path, manager: Mapping[str, Any] | None = None, **traits: Any) -> Iterator[BlockingManager]:
    """A backend with these traits and a manager over it, as a server runs them; afterwards the
    test's driver, the manager and the backend are closed."""
    backend = make_backend(config_file, **traits)
    bm = blocking_manager_for(backend, **(manager or {}))
    try:
        yield bm
    finally:
        ray.shutdown()
        bm.close()
        close_backend(backend)


def snapshot_of(bm: BlockingManager, cluster: Cluster) -> dict[str, Any]:
    async def take() -> dict[str, Any]:
        return cluster.snapshot()

    return bm.call(take)


def events_of(bm: BlockingManager, cluster: Cluster, kind: str) -> list[str]:
    return [e["message"] for e in snapshot_of(bm, cluster)["events"] if e["kind"] == kind]


def worker_pods(v1: CoreV1Api, ns: str, cluster: str, group: str | None = None) -> list[Any]:
    selector = f"raykube.io/cluster={cluster},raykube.io/node-type=worker"
    if group:
        selector += f",raykube.io/group={group}"
    return v1.list_namespaced_pod(ns, label_selector=selector).items


@ray.remote(num_cpus=1)
def where(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ["RAY_CLOUD_INSTANCE_ID"]  # the Pod's name, set by the backend


@ray.remote(num_cpus=1, num_gpus=1)
def on_gpu() -> tuple[str, list[Any]]:
    return os.environ["RAY_CLOUD_INSTANCE_ID"], list(ray.get_gpu_ids())


@ray.remote(num_cpus=1, num_gpus=1)
def hold_gpu(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ["RAY_CLOUD_INSTANCE_ID"]


def stop_and_check_clean(bm: BlockingManager, name: str, control_plane: ControlPlane, ns: str,
                         kubelet: ProcessKubelet) -> None:
    ray.shutdown()
    bm.call(bm.manager.stop, name)
    assert kubectl_objects(control_plane, ns, name) == []
    wait_until(lambda: not kubelet.leftover_processes(), timeout_s=60, what="every Ray process to exit")
