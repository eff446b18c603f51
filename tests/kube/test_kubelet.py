"""The process kubelet, observed the way a backend observes Pods: over HTTP with the official client."""

from __future__ import annotations

import time
from typing import Any

import psutil
import pytest
from kubernetes import client, watch

from .emulator import KubeEmulator
from .fixtures import venv_path
from .helpers import pod, service, wait_until
from .kubelet import ProcessKubelet, default_base_env

NS = "default"
pytestmark = pytest.mark.k8s


@pytest.fixture
def v1(kube_api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api_client)


def phase(v1: client.CoreV1Api, name: str) -> str:
    return v1.read_namespaced_pod(name, NS).status.phase


def condition(p: Any, ctype: str) -> Any:
    return next((c for c in p.status.conditions or [] if c.type == ctype), None)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_pod_runs_with_downward_api_and_secret_then_succeeds(process_kubelet: ProcessKubelet,
                                                             v1: client.CoreV1Api) -> None:
    v1.create_namespaced_secret(NS, {"metadata": {"name": "ray-token"}, "stringData": {"token": "s3cret"}})
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
    rv = v1.list_namespaced_pod(NS).metadata.resource_version
    v1.create_namespaced_pod(NS, manifest)
    phases: list[str] = []
    for event in watch.Watch().stream(v1.list_namespaced_pod, NS, field_selector="metadata.name=hello",
                                      resource_version=rv, timeout_seconds=20):
        if not phases or phases[-1] != event["object"].status.phase:
            phases.append(event["object"].status.phase)
        if phases[-1] in ("Succeeded", "Failed"):
            break
    assert phases == ["Pending", "Running", "Succeeded"]

    done = v1.read_namespaced_pod("hello", NS)
    ip = done.status.pod_ip
    assert ip.startswith("127.0.") and ip != "127.0.0.1" and done.status.host_ip == "127.0.0.1"
    assert done.spec.node_name == "kubelet-1" and done.status.start_time is not None
    state = done.status.container_statuses[0].state.terminated
    assert state.exit_code == 0 and state.reason == "Completed"
    assert condition(done, "PodScheduled").status == "True" and condition(done, "Ready").status == "False"
    log = v1.read_namespaced_pod_log("hello", NS)
    assert log.strip() == f"ip {ip} name hello node kubelet-1 token s3cret app demo arg {ip}:6379"
    reasons = [e.reason for e in v1.list_namespaced_event(NS, field_selector="involvedObject.name=hello").items]
    assert reasons[:3] == ["Scheduled", "Created", "Started"]


def test_failing_command_fails_with_exit_code(process_kubelet: ProcessKubelet, v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("boom", command=["python", "-c", "import sys; print('bad'); sys.exit(3)"]))
    wait_until(lambda: phase(v1, "boom") == "Failed", what="pod failed")
    status = v1.read_namespaced_pod("boom", NS).status.container_statuses[0]
    assert status.state.terminated.exit_code == 3 and status.state.terminated.reason == "Error"
    assert status.restart_count == 0 and status.ready is False
    assert v1.read_namespaced_pod_log("boom", NS) == "bad\n"

    v1.create_namespaced_pod(NS, pod("nocmd", command=["definitely-not-a-command"]))
    wait_until(lambda: phase(v1, "nocmd") == "Failed", what="start error")
    term = v1.read_namespaced_pod("nocmd", NS).status.container_statuses[0].state.terminated
    assert term.exit_code == 128 and term.reason == "StartError" and "not found in $PATH" in term.message


def test_restart_policy_restarts_and_keeps_previous_log(process_kubelet: ProcessKubelet,
                                                        v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("flaky", command=["python", "-c", "print('run'); raise SystemExit(1)"],
                                     restart_policy="OnFailure"))
    status = wait_until(lambda: (lambda s: s if s and s[0].restart_count >= 2 else None)(
        v1.read_namespaced_pod("flaky", NS).status.container_statuses), timeout_s=15, what="two restarts")[0]
    assert status.last_state.terminated.exit_code == 1
    assert v1.read_namespaced_pod("flaky", NS).status.phase == "Running"
    assert v1.read_namespaced_pod_log("flaky", NS, previous=True) == "run\n"


def test_deleting_a_pod_kills_its_process_tree(process_kubelet: ProcessKubelet, v1: client.CoreV1Api) -> None:
    # The child detaches into its own session, as Ray's daemons do; it must die with the Pod.
    script = ("import subprocess, sys, time; "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
              "print('up', flush=True); time.sleep(60)")
    v1.create_namespaced_pod(NS, pod("sleeper", command=["python", "-c", script]))
    wait_until(lambda: "up" in (v1.read_namespaced_pod_log("sleeper", NS) if phase(v1, "sleeper") == "Running"
                                else ""), what="process up")
    pid = process_kubelet.pid(NS, "sleeper")
    assert pid is not None and alive(pid)
    tree = psutil.Process(pid).children(recursive=True)
    assert process_kubelet.leftover_processes()
    v1.delete_namespaced_pod("sleeper", NS, grace_period_seconds=1)
    wait_until(lambda: not alive(pid) and not any(alive(p.pid) for p in tree), timeout_s=10, what="tree killed")
    wait_until(lambda: not process_kubelet.leftover_processes(), what="no marked processes left")


def test_oom_kill_is_reported(process_kubelet: ProcessKubelet, v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("hog", command=["sleep", "60"]))
    wait_until(lambda: process_kubelet.pid(NS, "hog"), what="started")
    process_kubelet.oom_kill(NS, "hog")
    wait_until(lambda: phase(v1, "hog") == "Failed", what="failed")
    term = v1.read_namespaced_pod("hog", NS).status.container_statuses[0].state.terminated
    assert (term.reason, term.exit_code) == ("OOMKilled", 137)


def test_unschedulable_pods_get_condition_and_event(kube_emulator: KubeEmulator, v1: client.CoreV1Api) -> None:
    kubelet = ProcessKubelet(kube_emulator, allocatable={"cpu": "4", "memory": "8Gi"},
                             base_env=default_base_env(venv_path())).start()
    try:
        gpu = pod("gpu-worker", command=["sleep", "30"], resources={"limits": {"nvidia.com/gpu": "1"}})
        v1.create_namespaced_pod(NS, gpu)
        big = pod("big", command=["sleep", "30"], resources={"requests": {"cpu": "8"}})
        v1.create_namespaced_pod(NS, big)
        rule = kubelet.make_unschedulable(lambda p: p["metadata"]["labels"].get("zone") == "b",
                                          "0/1 nodes are available: 1 node(s) had untolerated taint.")
        v1.create_namespaced_pod(NS, pod("zoned", {"zone": "b"}, ["sleep", "30"]))

        def scheduled(name: str) -> Any:
            return condition(v1.read_namespaced_pod(name, NS), "PodScheduled")

        for name, message in [("gpu-worker", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),
                              ("big", "0/1 nodes are available: 1 Insufficient cpu."),
                              ("zoned", "0/1 nodes are available: 1 node(s) had untolerated taint.")]:
            cond = wait_until(lambda: scheduled(name), what=f"{name} condition")
            assert (cond.status, cond.reason, cond.message) == ("False", "Unschedulable", message)
            assert phase(v1, name) == "Pending"
            events = v1.list_namespaced_event(NS, field_selector=f"involvedObject.name={name},reason=FailedScheduling")
            assert [(e.type, e.message, e.source.component) for e in events.items] == [
                ("Warning", message, "default-scheduler")]
        kubelet.remove_rule(rule)
        wait_until(lambda: phase(v1, "zoned") == "Running", what="zoned pod scheduled once the rule is gone")
        assert scheduled("zoned").status == "True"
    finally:
        kubelet.stop()
    assert not kubelet.leftover_processes()


def test_image_pull_backoff(process_kubelet: ProcessKubelet, v1: client.CoreV1Api) -> None:
    process_kubelet.fail_image_pull("rayproject/ray:nope*")
    v1.create_namespaced_pod(NS, pod("bad-image", command=["sleep", "30"], image="rayproject/ray:nope-py311"))
    waiting = wait_until(lambda: (lambda s: s[0].state.waiting if s and s[0].state.waiting and
                                  s[0].state.waiting.reason == "ImagePullBackOff" else None)(
        v1.read_namespaced_pod("bad-image", NS).status.container_statuses), what="ImagePullBackOff")
    assert 'Back-off pulling image "rayproject/ray:nope-py311"' == waiting.message
    assert phase(v1, "bad-image") == "Pending"
    process_kubelet.allow_image_pull("rayproject/ray:nope*")
    wait_until(lambda: phase(v1, "bad-image") == "Running", what="pulled after all")


def test_service_name_reaches_a_pods_server(process_kubelet: ProcessKubelet, v1: client.CoreV1Api) -> None:
    server = pod("web-0", {"app": "web"}, ["python", "-m", "http.server", "--bind", "$(POD_IP)", "8000"],
                 env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                 ports=[{"name": "http", "containerPort": 8000}],
                 readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                 livenessProbe={"tcpSocket": {"port": 8000}, "initialDelaySeconds": 1, "periodSeconds": 1})
    server["spec"]["restartPolicy"] = "Always"
    v1.create_namespaced_pod(NS, server)
    v1.create_namespaced_service(NS, service("web", {"app": "web"}, 8000))
    script = ("import sys, time, urllib.request\n"
              "for url in sys.argv[1:]:\n"
              "    for _ in range(100):\n"
              "        try:\n"
              "            body = urllib.request.urlopen(url, timeout=2).read()\n"
              "            break\n"
              "        except OSError:\n"
              "            time.sleep(0.1)\n"
              "    print(url, 'ok' if b'Directory listing' in body else 'bad')\n")
    v1.create_namespaced_pod(NS, pod("client", command=["python", "-c", script],
                                     args=[f"http://web.{NS}.svc:8000/", "http://web:8000/",
                                           f"http://web.{NS}.svc.cluster.local:8000/"]))
    wait_until(lambda: phase(v1, "client") in ("Succeeded", "Failed"), timeout_s=20, what="client done")
    web_ip = v1.read_namespaced_pod("web-0", NS).status.pod_ip
    assert phase(v1, "client") == "Succeeded"
    assert v1.read_namespaced_pod_log("client", NS).splitlines() == [
        f"http://{web_ip}:8000/ ok", f"http://{web_ip}:8000/ ok", f"http://{web_ip}:8000/ ok"]
    ready = wait_until(lambda: condition(v1.read_namespaced_pod("web-0", NS), "Ready").status == "True",
                       what="readiness probe passes")
    web = v1.read_namespaced_pod("web-0", NS).status.container_statuses[0]
    assert ready and web.ready and web.restart_count == 0  # the liveness probe kept passing


def test_readiness_probe_gates_ready(process_kubelet: ProcessKubelet, v1: client.CoreV1Api, tmp_path: Any) -> None:
    flag = tmp_path / "ready"
    v1.create_namespaced_pod(NS, pod("gated", command=["sleep", "60"], restart_policy="Always",
                                     readinessProbe={"exec": {"command": ["test", "-e", str(flag)]},
                                                     "periodSeconds": 1, "failureThreshold": 1}))
    wait_until(lambda: phase(v1, "gated") == "Running", what="running")
    time.sleep(1.2)
    assert condition(v1.read_namespaced_pod("gated", NS), "Ready").status == "False"
    flag.touch()
    wait_until(lambda: condition(v1.read_namespaced_pod("gated", NS), "Ready").status == "True", what="ready")
    flag.unlink()
    wait_until(lambda: condition(v1.read_namespaced_pod("gated", NS), "Ready").status == "False", what="unready")


def test_many_pods_and_stop_leaves_nothing_behind(kube_emulator: KubeEmulator, v1: client.CoreV1Api) -> None:
    kubelet = ProcessKubelet(kube_emulator, base_env=default_base_env(venv_path())).start()
    count = 120
    try:
        for i in range(count):
            v1.create_namespaced_pod(NS, pod(f"w-{i}", {"app": "load", "i": str(i % 2)}, ["sleep", "60"]))
        wait_until(lambda: len(v1.list_namespaced_pod(NS, field_selector="status.phase=Running").items) == count,
                   timeout_s=30, what="all pods running")
        assert len(v1.list_namespaced_pod(NS, label_selector="app=load,i=1").items) == count // 2
        ips = {p.status.pod_ip for p in v1.list_namespaced_pod(NS).items}
        assert len(ips) == count
        pids = [kubelet.pid(NS, f"w-{i}") for i in range(count)]
        assert all(pid and alive(pid) for pid in pids)
    finally:
        kubelet.stop()
    assert not kubelet.leftover_processes()
    assert not any(alive(pid) for pid in pids if pid)
    assert not kubelet.errors
