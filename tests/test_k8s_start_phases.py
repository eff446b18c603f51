"""How a worker Pod's start goes, and when it is given up on, against the real control plane
(tests/kube) and the process kubelet: each Pod state explained (running, exited, OOM-killed, an
image that cannot be pulled, kube-scheduler's Unschedulable), a node whose kubelet never starts
its Pods (its newest Warning Event), an unschedulable GPU Pod whose group backs off, a pool that
scales up late (cluster-autoscaler's TriggeredScaleUp holds off the timeouts), and an image pull
failure that backs its group off at once. The same rules on Pod objects alone are in
test_k8s_phases.py. See tests/kube/backend_helpers.py for who is who and how addresses work here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import ray
from kubernetes.client import CoreV1Api, CoreV1Event, V1EventSource, V1ObjectMeta, V1ObjectReference

from jupyter_raykube.connect import connect_driver
from jupyter_raykube.spec import ClusterSpec, WorkerGroup
from tests.kube.backend_helpers import (
    SMALL,
    assert_api_use_is_clean,
    autoscaled,
    close_backend,
    created_pods,
    events_of,
    eventually,
    find_node,
    kubectl_objects,
    make_backend,
    on_gpu,
    own_ports,
    snapshot_of,
    stop_and_check_clean,
    worker_pods,
)
from tests.kube.controlplane import ControlPlane
from tests.kube.faultproxy import FaultProxy
from tests.kube.fixtures import running_kubelet
from tests.kube.helpers import wait_until
from tests.kube.kubelet import ProcessKubelet
from tests.kube.nodes import NodePool

pytestmark = pytest.mark.k8s


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
