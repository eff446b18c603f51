"""The process kubelet on the real control plane, observed the way a backend observes Pods:
with the official client, as admin, in a namespace of the test's own. kube-scheduler places
the Pods; the kubelet runs them as local processes and reports as a kubelet does."""

from __future__ import annotations

import time
from typing import Any, Iterator

import psutil
import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from .controlplane import ControlPlane
from .helpers import pod, service, wait_until
from .nodeapi import node_client
from .fixtures import running_kubelet
from .kubelet import ProcessKubelet
from .nodes import NodePool

pytestmark = pytest.mark.k8s


@pytest.fixture
def v1(kube_admin: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_admin)


def phase(v1: client.CoreV1Api, ns: str, name: str) -> str:
    return v1.read_namespaced_pod(name, ns).status.phase


def condition(p: Any, ctype: str) -> Any:
    return next((c for c in p.status.conditions or [] if c.type == ctype), None)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(v1: client.CoreV1Api, ns: str, name: str) -> bool:
    try:
        v1.read_namespaced_pod(name, ns)
    except ApiException as exc:
        return exc.status == 404
    return False


def test_nodes_are_registered_ready_with_capacity_and_taints(process_kubelet: ProcessKubelet,
                                                             v1: client.CoreV1Api) -> None:
    def ready_nodes() -> dict[str, Any]:
        nodes = {n.metadata.name: n for n in v1.list_node().items}
        return nodes if all(condition(n, "Ready") and condition(n, "Ready").status == "True"
                            for n in nodes.values()) and len(nodes) == 3 else {}

    nodes = wait_until(ready_nodes, timeout_s=30, what="three Ready nodes")
    assert sorted(nodes) == ["cpu-pool-0", "cpu-pool-1", "gpu-pool-0"]
    cpu, gpu = nodes["cpu-pool-0"], nodes["gpu-pool-0"]
    assert cpu.status.allocatable["cpu"] == "8" and cpu.status.allocatable["memory"] == "32Gi"
    assert not cpu.spec.taints and "nvidia.com/gpu" not in cpu.status.capacity
    assert gpu.status.capacity["nvidia.com/gpu"] == "2"
    assert [(t.key, t.value, t.effect) for t in gpu.spec.taints] == [("nvidia.com/gpu", "present", "NoSchedule")]
    lease = client.CoordinationV1Api(v1.api_client).read_namespaced_lease("cpu-pool-0", "kube-node-lease")
    assert lease.spec.holder_identity == "cpu-pool-0"


def test_pod_runs_with_downward_api_and_secret_then_succeeds(process_kubelet: ProcessKubelet, v1: client.CoreV1Api,
                                                             kube_namespace: str) -> None:
    ns = kube_namespace
    v1.create_namespaced_secret(ns, {"metadata": {"name": "ray-token"}, "stringData": {"token": "s3cret"}})
    script = ("import os, time; time.sleep(0.3); "
              "print('ip', os.environ['POD_IP'], 'name', os.environ['POD_NAME'], 'node', os.environ['NODE'], "
              "'token', os.environ['RAY_TOKEN'], 'app', os.environ['APP'], 'arg', os.environ['ADDR'])")
    manifest = pod("hello", {"app": "demo"}, ["python", "-c", script], env=[
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "RAY_TOKEN", "valueFrom": {"secretKeyRef": {"name": "ray-token", "key": "token"}}},
        {"name": "ADDR", "value": "$(POD_IP):6379"},
    ])
    rv = v1.list_namespaced_pod(ns).metadata.resource_version
    v1.create_namespaced_pod(ns, manifest)
    phases: list[str] = []
    for event in watch.Watch().stream(v1.list_namespaced_pod, ns, field_selector="metadata.name=hello",
                                      resource_version=rv, timeout_seconds=30):
        if not phases or phases[-1] != event["object"].status.phase:
            phases.append(event["object"].status.phase)
        if phases[-1] in ("Succeeded", "Failed"):
            break
    assert phases == ["Pending", "Running", "Succeeded"]

    done = v1.read_namespaced_pod("hello", ns)
    ip, node = done.status.pod_ip, done.spec.node_name
    assert ip.startswith("127.0.") and ip != "127.0.0.1" and done.status.host_ip == "127.0.0.1"
    assert node.startswith("cpu-pool-") and done.status.start_time is not None  # not the tainted GPU node
    state = done.status.container_statuses[0].state.terminated
    assert state.exit_code == 0 and state.reason == "Completed"
    assert condition(done, "PodScheduled").status == "True" and condition(done, "Ready").status == "False"
    log = v1.read_namespaced_pod_log("hello", ns)  # proxied by the apiserver to the kubelet's endpoint
    assert log.strip() == f"ip {ip} name hello node {node} token s3cret app demo arg {ip}:6379"
    events = sorted(v1.list_namespaced_event(ns, field_selector="involvedObject.name=hello").items,
                    key=lambda e: e.metadata.creation_timestamp)
    # kube-scheduler writes events.k8s.io Events: in core/v1 its name is the reporting component
    assert [(e.reason, e.source.component or e.reporting_component) for e in events][:3] \
        == [("Scheduled", "default-scheduler"), ("Created", "kubelet"), ("Started", "kubelet")]


def test_failing_command_fails_with_exit_code(process_kubelet: ProcessKubelet, v1: client.CoreV1Api,
                                              kube_namespace: str) -> None:
    ns = kube_namespace
    v1.create_namespaced_pod(ns, pod("boom", command=["python", "-c", "import sys; print('bad'); sys.exit(3)"]))
    wait_until(lambda: phase(v1, ns, "boom") == "Failed", timeout_s=20, what="pod failed")
    status = v1.read_namespaced_pod("boom", ns).status.container_statuses[0]
    assert status.state.terminated.exit_code == 3 and status.state.terminated.reason == "Error"
    assert status.restart_count == 0 and status.ready is False
    assert v1.read_namespaced_pod_log("boom", ns) == "bad\n"

    v1.create_namespaced_pod(ns, pod("nocmd", command=["definitely-not-a-command"]))
    wait_until(lambda: phase(v1, ns, "nocmd") == "Failed", timeout_s=20, what="start error")
    term = v1.read_namespaced_pod("nocmd", ns).status.container_statuses[0].state.terminated
    assert term.exit_code == 128 and term.reason == "StartError" and "not found in $PATH" in term.message


def test_restart_policy_restarts_and_keeps_previous_log(process_kubelet: ProcessKubelet, v1: client.CoreV1Api,
                                                        kube_namespace: str) -> None:
    ns = kube_namespace
    v1.create_namespaced_pod(ns, pod("flaky", command=["python", "-c", "print('run'); raise SystemExit(1)"],
                                     restart_policy="OnFailure"))
    status = wait_until(lambda: (lambda s: s if s and s[0].restart_count >= 2 else None)(
        v1.read_namespaced_pod("flaky", ns).status.container_statuses), timeout_s=30, what="two restarts")[0]
    assert status.last_state.terminated.exit_code == 1
    assert v1.read_namespaced_pod("flaky", ns).status.phase == "Running"
    assert v1.read_namespaced_pod_log("flaky", ns, previous=True) == "run\n"


def test_graceful_deletion_kills_the_process_tree_then_removes_the_pod(
        process_kubelet: ProcessKubelet, v1: client.CoreV1Api, kube_namespace: str) -> None:
    ns = kube_namespace
    # The child detaches into its own session, as Ray's daemons do; it must die with the Pod.
    script = ("import subprocess, sys, time; "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
              "print('up', flush=True); time.sleep(60)")
    v1.create_namespaced_pod(ns, pod("sleeper", command=["python", "-c", script]))
    wait_until(lambda: "up" in (v1.read_namespaced_pod_log("sleeper", ns) if phase(v1, ns, "sleeper") == "Running"
                                else ""), timeout_s=20, what="process up")
    pid = process_kubelet.pid(ns, "sleeper")
    assert pid is not None and alive(pid)
    tree = psutil.Process(pid).children(recursive=True)
    v1.delete_namespaced_pod("sleeper", ns, grace_period_seconds=30)  # the kubelet caps it at 2 s
    assert v1.read_namespaced_pod("sleeper", ns).metadata.deletion_timestamp is not None  # graceful: still there
    wait_until(lambda: not alive(pid) and not any(alive(p.pid) for p in tree), timeout_s=15, what="tree killed")
    wait_until(lambda: gone(v1, ns, "sleeper"), timeout_s=15, what="the kubelet to delete the Pod for good")
    wait_until(lambda: not process_kubelet.leftover_processes(), what="no marked processes left")


def test_oom_kill_is_reported(process_kubelet: ProcessKubelet, v1: client.CoreV1Api, kube_namespace: str) -> None:
    ns = kube_namespace
    v1.create_namespaced_pod(ns, pod("hog", command=["sleep", "60"]))
    wait_until(lambda: process_kubelet.pid(ns, "hog"), timeout_s=20, what="started")
    process_kubelet.oom_kill(ns, "hog")
    wait_until(lambda: phase(v1, ns, "hog") == "Failed", what="failed")
    term = v1.read_namespaced_pod("hog", ns).status.container_statuses[0].state.terminated
    assert (term.reason, term.exit_code) == ("OOMKilled", 137)


def test_scheduler_places_by_resources_and_taints(process_kubelet: ProcessKubelet, v1: client.CoreV1Api,
                                                  kube_namespace: str) -> None:
    ns = kube_namespace
    gpu_limits = {"limits": {"nvidia.com/gpu": "1"}}
    v1.create_namespaced_pod(ns, pod("no-toleration", command=["sleep", "30"], resources=gpu_limits))
    v1.create_namespaced_pod(ns, pod("big", command=["sleep", "30"], resources={"requests": {"cpu": "9"}}))
    tolerating = pod("gpu-worker", command=["sleep", "30"], resources=gpu_limits)
    tolerating["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    v1.create_namespaced_pod(ns, tolerating)

    def unschedulable(name: str) -> Any:
        cond = condition(v1.read_namespaced_pod(name, ns), "PodScheduled")
        return cond if cond is not None and cond.reason == "Unschedulable" else None

    for name, why in [("no-toleration", "1 node(s) had untolerated taint(s), 2 Insufficient nvidia.com/gpu"), ("big", "Insufficient cpu")]:
        cond = wait_until(lambda: unschedulable(name), timeout_s=30, what=f"{name} to be refused")
        assert cond.status == "False" and cond.message.startswith("0/3 nodes are available") and why in cond.message
        events = v1.list_namespaced_event(ns, field_selector=f"involvedObject.name={name},reason=FailedScheduling")
        assert {(e.type, e.source.component or e.reporting_component) for e in events.items} == {
            ("Warning", "default-scheduler")}
    wait_until(lambda: phase(v1, ns, "gpu-worker") == "Running", timeout_s=30, what="the GPU Pod to run")
    assert v1.read_namespaced_pod("gpu-worker", ns).spec.node_name == "gpu-pool-0"


@pytest.fixture
def late_gpu_kubelet(kube_control_plane: ControlPlane) -> Iterator[ProcessKubelet]:
    yield from running_kubelet(kube_control_plane, pools=[
        NodePool("cpu-pool", count=1, cpu="2", memory="4Gi"),
        NodePool("gpu-pool", count=1, gpus=1, appear_after_s=3.0, max_count=2)])


def test_a_pool_that_appears_later_gets_the_waiting_pod(late_gpu_kubelet: ProcessKubelet, v1: client.CoreV1Api,
                                                        kube_namespace: str) -> None:
    ns = kube_namespace
    gpu = pod("gpu-worker", command=["sleep", "30"], resources={"limits": {"nvidia.com/gpu": "1"}})
    gpu["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    v1.create_namespaced_pod(ns, gpu)

    def scale_up() -> list[Any]:
        return v1.list_namespaced_event(ns, field_selector="involvedObject.name=gpu-worker,"
                                                           "reason=TriggeredScaleUp").items

    event = wait_until(scale_up, timeout_s=30, what="the TriggeredScaleUp Event")[0]
    assert (event.source.component, event.message) == ("cluster-autoscaler",
                                                       "pod triggered scale-up: [{gpu-pool 0->1 (max: 2)}]")
    assert phase(v1, ns, "gpu-worker") == "Pending"
    wait_until(lambda: phase(v1, ns, "gpu-worker") == "Running", timeout_s=60, what="the Pod to run on the new node")
    assert v1.read_namespaced_pod("gpu-worker", ns).spec.node_name == "gpu-pool-0"


def test_a_node_may_only_write_its_own_pods(process_kubelet: ProcessKubelet, v1: client.CoreV1Api,
                                            kube_control_plane: ControlPlane, kube_namespace: str) -> None:
    """The kubelet really acts as its node: NodeRestriction refuses it another node's Pod."""
    ns = kube_namespace
    v1.create_namespaced_pod(ns, pod("mine", command=["sleep", "30"]))
    wait_until(lambda: phase(v1, ns, "mine") == "Running", timeout_s=20, what="running")
    bound_to = v1.read_namespaced_pod("mine", ns).spec.node_name
    other = next(n for n in ("cpu-pool-0", "cpu-pool-1") if n != bound_to)
    cert, key = kube_control_plane.node_credentials(other)
    with node_client(kube_control_plane.url, str(kube_control_plane.ca_file), str(cert), str(key)) as api:
        with pytest.raises(ApiException) as refused:
            client.CoreV1Api(api).patch_namespaced_pod_status("mine", ns, {"status": {"phase": "Failed"}})
    assert refused.value.status == 403
    assert phase(v1, ns, "mine") == "Running"


def test_image_pull_backoff(process_kubelet: ProcessKubelet, v1: client.CoreV1Api, kube_namespace: str) -> None:
    ns = kube_namespace
    process_kubelet.fail_image_pull("rayproject/ray:nope*")
    v1.create_namespaced_pod(ns, pod("bad-image", command=["sleep", "30"], image="rayproject/ray:nope-py311"))
    waiting = wait_until(lambda: (lambda s: s[0].state.waiting if s and s[0].state.waiting and
                                  s[0].state.waiting.reason == "ImagePullBackOff" else None)(
        v1.read_namespaced_pod("bad-image", ns).status.container_statuses), timeout_s=20, what="ImagePullBackOff")
    assert 'Back-off pulling image "rayproject/ray:nope-py311"' == waiting.message
    assert phase(v1, ns, "bad-image") == "Pending"
    process_kubelet.allow_image_pull("rayproject/ray:nope*")
    wait_until(lambda: phase(v1, ns, "bad-image") == "Running", timeout_s=20, what="pulled after all")


def test_service_name_reaches_a_pods_server(process_kubelet: ProcessKubelet, v1: client.CoreV1Api,
                                            kube_namespace: str) -> None:
    ns = kube_namespace
    server = pod("web-0", {"app": "web"}, ["python", "-m", "http.server", "--bind", "$(POD_IP)", "8000"],
                 env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                 ports=[{"name": "http", "containerPort": 8000}],
                 readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                 livenessProbe={"tcpSocket": {"port": 8000}, "initialDelaySeconds": 1, "periodSeconds": 1})
    server["spec"]["restartPolicy"] = "Always"
    v1.create_namespaced_pod(ns, server)
    v1.create_namespaced_service(ns, service("web", {"app": "web"}, 8000))
    script = ("import sys, time, urllib.request\n"
              "for url in sys.argv[1:]:\n"
              "    for _ in range(100):\n"
              "        try:\n"
              "            body = urllib.request.urlopen(url, timeout=2).read()\n"
              "            break\n"
              "        except OSError:\n"
              "            time.sleep(0.1)\n"
              "    print(url, 'ok' if b'Directory listing' in body else 'bad')\n")
    v1.create_namespaced_pod(ns, pod("client", command=["python", "-c", script],
                                     args=[f"http://web.{ns}.svc:8000/", "http://web:8000/",
                                           f"http://web.{ns}.svc.cluster.local:8000/"]))
    wait_until(lambda: phase(v1, ns, "client") in ("Succeeded", "Failed"), timeout_s=30, what="client done")
    web_ip = v1.read_namespaced_pod("web-0", ns).status.pod_ip
    assert phase(v1, ns, "client") == "Succeeded"
    assert v1.read_namespaced_pod_log("client", ns).splitlines() == [f"http://{web_ip}:8000/ ok"] * 3
    ready = wait_until(lambda: condition(v1.read_namespaced_pod("web-0", ns), "Ready").status == "True",
                       what="readiness probe passes")
    web = v1.read_namespaced_pod("web-0", ns).status.container_statuses[0]
    assert ready and web.ready and web.restart_count == 0  # the liveness probe kept passing


def test_readiness_probe_gates_ready(process_kubelet: ProcessKubelet, v1: client.CoreV1Api, kube_namespace: str,
                                     tmp_path: Any) -> None:
    ns = kube_namespace
    flag = tmp_path / "ready"
    v1.create_namespaced_pod(ns, pod("gated", command=["sleep", "60"], restart_policy="Always",
                                     readinessProbe={"exec": {"command": ["test", "-e", str(flag)]},
                                                     "periodSeconds": 1, "failureThreshold": 1}))
    wait_until(lambda: phase(v1, ns, "gated") == "Running", timeout_s=20, what="running")
    time.sleep(1.2)
    assert condition(v1.read_namespaced_pod("gated", ns), "Ready").status == "False"
    flag.touch()
    wait_until(lambda: condition(v1.read_namespaced_pod("gated", ns), "Ready").status == "True", what="ready")
    flag.unlink()
    wait_until(lambda: condition(v1.read_namespaced_pod("gated", ns), "Ready").status == "False", what="unready")


def test_many_pods_and_stop_leaves_nothing_behind(kube_control_plane: ControlPlane, v1: client.CoreV1Api,
                                                  kube_namespace: str) -> None:
    ns = kube_namespace
    count = 40
    with_kubelet = running_kubelet(kube_control_plane)
    kubelet = next(with_kubelet)
    try:
        for i in range(count):
            v1.create_namespaced_pod(ns, pod(f"w-{i}", {"app": "load", "i": str(i % 2)}, ["sleep", "60"]))
        wait_until(lambda: len(v1.list_namespaced_pod(ns, field_selector="status.phase=Running").items) == count,
                   timeout_s=60, what="all pods running")
        pods = v1.list_namespaced_pod(ns).items
        assert len({p.status.pod_ip for p in pods}) == count
        assert {p.spec.node_name for p in pods} == {"cpu-pool-0", "cpu-pool-1"}  # spread by the scheduler
        pids = [kubelet.pid(ns, f"w-{i}") for i in range(count)]
        assert all(pid and alive(pid) for pid in pids)
    finally:
        next(with_kubelet, None)  # stop(): checks leaks and errors
    assert not any(alive(pid) for pid in pids if pid)
    assert not v1.list_namespaced_pod(ns).items  # the nodes' Pods were deleted with them
