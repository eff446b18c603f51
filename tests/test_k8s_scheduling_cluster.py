"""Where a group's Pods run, against the real control plane (tests/kube): the user's market
request and a TPU group's device request are honoured by kube-scheduler on labelled and
device-bearing nodes, and what the API server would refuse (a missing PriorityClass or
RuntimeClass, an invalid affinity) is a SpecError naming the field before anything is created."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import ray
from kubernetes.client import CoreV1Api

from jupyter_raykube.connect import connect_driver
from jupyter_raykube.errors import PolicyError, SpecError
from jupyter_raykube.policy import Policy
from jupyter_raykube.spec import ClusterSpec
from tests.kube.backend_helpers import (
    RESTRICTED,
    SMALL,
    assert_api_use_is_clean,
    blocking_manager_for,
    close_backend,
    kubectl_objects,
    make_backend,
    own_ports,
    stop_and_check_clean,
)
from tests.kube.controlplane import ControlPlane
from tests.kube.faultproxy import FaultProxy
from tests.kube.fixtures import running_kubelet
from tests.kube.kubelet import ProcessKubelet
from tests.kube.nodes import NodePool

pytestmark = pytest.mark.k8s
CAPACITY = "karpenter.sh/capacity-type"


@pytest.fixture
def ns(make_kube_namespace: Callable[..., str], request: pytest.FixtureRequest) -> str:
    return make_kube_namespace(request.node.name.removeprefix("test_")[:40], RESTRICTED)


@pytest.fixture
def market_kubelet(kube_control_plane: ControlPlane) -> Iterator[ProcessKubelet]:
    """An on-demand and a spot pool (Karpenter's capacity-type label) and a TPU node
    (google.com/tpu capacity, tainted google.com/tpu as GKE's TPU pools are)."""
    yield from running_kubelet(kube_control_plane, rewrite_argv=own_ports, pools=[
        NodePool("ondemand-pool", count=1, labels={CAPACITY: "on-demand"}),
        NodePool("spot-pool", count=1, labels={CAPACITY: "spot"}),
        NodePool("tpu-pool", count=1, gpus=4, gpu_resource="google.com/tpu")])


@ray.remote(num_cpus=1)
def pod_name() -> str:
    return os.environ["RAY_CLOUD_INSTANCE_ID"]


@ray.remote(num_cpus=1, resources={"TPU": 1})
def on_tpu() -> tuple[str, list[str]]:
    return os.environ["RAY_CLOUD_INSTANCE_ID"], ray.get_runtime_context().get_accelerator_ids()["TPU"]


def test_a_users_spot_request_and_a_tpu_group_land_on_their_nodes(
        market_kubelet: ProcessKubelet, kube_config_file: Path, kube_fault_proxy: FaultProxy,
        kube_control_plane: ControlPlane, v1: CoreV1Api, ns: str) -> None:
    """The admin lets users pick the market; the user's cpu group asks for spot: its worker Pod
    selects karpenter.sh/capacity-type=spot and kube-scheduler puts it on the spot pool, and the
    Ray node says ray.io/market-type=spot. A task needing TPU: 1 scales up the tpu group, whose
    Pod requests google.com/tpu: 1 and tolerates its taint, and Ray there offers the TPU."""
    backend = make_backend(kube_config_file)
    bm = blocking_manager_for(backend, policy=Policy(user_scheduling=("market_type",)))
    spec = ClusterSpec.from_dict({"name": "k-spot", "backend": "kubernetes", "groups": [
        {"name": "cpu", "cpus": 1, "max": 1, **SMALL, "scheduling": {"market_type": "spot"}},
        {"name": "tpu", "cpus": 1, "custom": {"TPU": 1}, "max": 1, **SMALL}]})
    try:
        cluster = bm.call(bm.manager.create, spec)
        connect_driver(cluster.handle.address, bm.manager.token)
        spot = ray.get(pod_name.remote(), timeout=240)
        pod = v1.read_namespaced_pod(spot, ns)
        assert spot.startswith("k-spot-cpu-") and pod.spec.node_name == "spot-pool-0"
        assert pod.spec.node_selector == {CAPACITY: "spot"}
        labels = next(n["Labels"] for n in ray.nodes() if n["Alive"] and n["Labels"].get("raykube.io/group") == "cpu")
        assert labels["ray.io/market-type"] == "spot"
        tpu, ids = ray.get(on_tpu.remote(), timeout=240)
        pod = v1.read_namespaced_pod(tpu, ns)
        assert tpu.startswith("k-spot-tpu-") and pod.spec.node_name == "tpu-pool-0" and len(ids) == 1
        assert pod.spec.containers[0].resources.limits["google.com/tpu"] == "1"
        assert "google.com/tpu" in {t.key for t in pod.spec.tolerations}
        stop_and_check_clean(bm, "k-spot", kube_control_plane, ns, market_kubelet)
    finally:
        ray.shutdown()
        bm.close()
        close_backend(backend)
    assert_api_use_is_clean(kube_fault_proxy)


@pytest.mark.parametrize(("scheduling", "said"), [
    ({"priority_class_name": "no-such-priority"}, "no-such-priority"),
    ({"runtime_class_name": "nvidia"}, "nvidia"),
    ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "Near", "values": ["a"]}]}]}}}}, "Near"),
])
def test_what_the_api_server_would_refuse_is_a_spec_error_before_anything_exists(
        kube_config_file: Path, kube_control_plane: ControlPlane, ns: str,
        scheduling: dict[str, object], said: str) -> None:
    backend = make_backend(kube_config_file)
    bm = blocking_manager_for(backend, policy=Policy(
        user_scheduling=("priority_class_name", "runtime_class_name", "affinity")))
    spec = ClusterSpec.from_dict({"name": "k-bad", "backend": "kubernetes", "groups": [
        {"name": "cpu", "cpus": 1, "max": 1, **SMALL, "scheduling": scheduling}]})
    try:
        with pytest.raises(SpecError) as caught:
            bm.call(bm.manager.create, spec)
        assert caught.value.field == "groups.cpu.scheduling" and said in caught.value.allowed
        with pytest.raises(PolicyError, match="groups.cpu.scheduling.market_type"):
            bm.call(bm.manager.create, ClusterSpec.from_dict({"name": "k-bad", "backend": "kubernetes", "groups": [
                {"name": "cpu", "cpus": 1, "max": 1, "scheduling": {"market_type": "spot"}}]}))
        assert kubectl_objects(kube_control_plane, ns, "k-bad") == []
        assert bm.call(bm.manager.list) == []
    finally:
        bm.close()
        close_backend(backend)
