"""Where a group's Pods run: the user's `scheduling` request (shape, policy), and how the
admin's settings, the market and accelerator tables, device resources and the request merge
into the Pod's fields (golden). The real API server's side is tests/test_k8s_scheduling_cluster.py."""

from __future__ import annotations

import sys
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import pytest

from jupyter_raykube.backends import k8s_objects as o
from jupyter_raykube.backends.k8s_settings import choose_images
from jupyter_raykube.backends.kubernetes import KubernetesBackend
from jupyter_raykube.backends.local import LocalBackend
from jupyter_raykube.errors import PolicyError, SpecError
from jupyter_raykube.hub import RayKubeHubPolicy
from jupyter_raykube.magics import _build_parser, _request_from_args
from jupyter_raykube.policy import Policy
from jupyter_raykube.spec import ClusterSpec, parse_group_setting

GPU = {"name": "gpu", "cpus": 4, "gpus": 1, "max": 2}


def spec_with(scheduling: Any, backend: str = "kubernetes") -> ClusterSpec:
    return ClusterSpec.from_dict({"name": "s", "backend": backend, "groups": [{**GPU, "scheduling": scheduling}]})


@pytest.mark.parametrize(("scheduling", "field", "allowed"), [
    ("spot", "groups.gpu.scheduling", "an object with any of"),
    ({"zone": "a"}, "groups.gpu.scheduling.zone", "known fields are node_selector"),
    ({"market_type": "cheap"}, "groups.gpu.scheduling.market_type", "one of spot, on-demand"),
    ({"accelerator_type": "A 100"}, "groups.gpu.scheduling.accelerator_type", "as Ray names it"),
    ({"node_selector": {"Pool/x": "a"}}, "groups.gpu.scheduling.node_selector", "a label key"),
    ({"node_selector": {"pool": 3}}, "groups.gpu.scheduling.node_selector.pool", "a label value"),
    ({"tolerations": {"key": "x"}}, "groups.gpu.scheduling.tolerations", "a list of at most 16"),
    ({"tolerations": [{"key": "x", "operator": "In"}]}, "groups.gpu.scheduling.tolerations[0].operator", "Equal or Exists"),
    ({"tolerations": [{"key": "x", "effect": "NoRun"}]}, "groups.gpu.scheduling.tolerations[0].effect", "one of NoSchedule"),
    ({"tolerations": [{"key": "x", "color": "red"}]}, "groups.gpu.scheduling.tolerations[0]", "a toleration object"),
    ({"affinity": {"nodeAfinity": {}}}, "groups.gpu.scheduling.affinity", "nodeAffinity, podAffinity"),
    ({"affinity": {"nodeAffinity": [1]}}, "groups.gpu.scheduling.affinity.nodeAffinity", "an object"),
    ({"priority_class_name": "High"}, "groups.gpu.scheduling.priority_class_name", "lowercase letters"),
])
def test_a_bad_scheduling_request_names_the_field_and_what_is_allowed(scheduling: Any, field: str, allowed: str) -> None:
    with pytest.raises(SpecError) as caught:
        spec_with(scheduling)
    assert caught.value.field == field and allowed in caught.value.allowed


def test_only_the_fields_the_admin_opened_pass_the_policy() -> None:
    spec = spec_with({"accelerator_type": "A100", "market_type": "spot"})
    Policy(user_scheduling=("accelerator_type", "market_type")).check(spec, [])
    with pytest.raises(PolicyError, match=r"groups\.gpu\.scheduling\.market_type='spot': your administrator lets "
                                          r"users set only accelerator_type \(c\.RayKubeHubPolicy\.user_scheduling\)"):
        Policy(user_scheduling=("accelerator_type",)).check(spec, [])
    with pytest.raises(PolicyError, match="lets users set none of them"):
        Policy().check(spec, [])
    Policy().check(spec_with({}), [])  # no request, nothing to allow
    with pytest.raises(SpecError, match="policy.user_scheduling"):
        Policy(user_scheduling=("hostNetwork",))


def test_hub_groups_widen_and_profiles_narrow_what_users_may_set() -> None:
    hub = RayKubeHubPolicy(user_scheduling=["market_type"],
                           group_policies={"gpu-users": {"user_scheduling": ["market_type", "accelerator_type"]},
                                           "ops": {"user_scheduling": ["priority_class_name"]}})
    assert hub.caps_for("alice").user_scheduling == ("market_type",)
    assert hub.caps_for("bob", ["gpu-users", "ops"]).user_scheduling == (
        "market_type", "accelerator_type", "priority_class_name")
    assert Policy.from_mapping(hub.caps_for("bob", ["ops"]).to_json()).user_scheduling == ("priority_class_name",)
    with pytest.raises(Exception, match="user_scheduling must be a list of any of"):
        RayKubeHubPolicy(user_policies={"eve": {"user_scheduling": ["privileged"]}})


def test_admin_group_settings_cannot_carry_a_user_request() -> None:
    with pytest.raises(SpecError) as caught:
        parse_group_setting("default_worker_groups", [{**GPU, "scheduling": {"market_type": "spot"}}])
    assert caught.value.field == "default_worker_groups[0].scheduling"
    assert "c.KubernetesBackend.node_selector" in caught.value.allowed


async def test_the_local_backend_refuses_scheduling_it_cannot_honour() -> None:
    with pytest.raises(SpecError) as caught:
        await LocalBackend().check_spec(spec_with({"market_type": "spot"}, backend="local"))
    assert caught.value.field == "groups.gpu.scheduling" and "kubernetes backend" in caught.value.allowed


def test_the_magic_flags_become_the_groups_scheduling() -> None:
    args = _build_parser().parse_args(["start", "--gpu-type", "A100", "--market", "spot"])
    assert _request_from_args("x", args)["groups"] == {
        "cpu": {"scheduling": {"market_type": "spot"}},
        "gpu": {"scheduling": {"accelerator_type": "A100", "market_type": "spot"}}}


@pytest.fixture
def backend_factory(offline_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("CUDA_VERSION", raising=False)
    return lambda **traits: KubernetesBackend(kubeconfig=str(offline_kubeconfig), **traits)


def pod_spec(backend: KubernetesBackend, spec: ClusterSpec, group: str) -> dict[str, Any]:
    g = spec.group(group)
    meta = backend.dry_run_meta(spec)
    pod = o.make_worker_pod(meta, spec, group, f"s-{group}-abcde", backend.worker_size(spec, g),
                            backend.pod_settings(spec, g))
    return backend.api_client.sanitize_for_serialization(pod)["spec"]


def test_a_market_alone_places_pods_on_that_capacity(backend_factory: Any) -> None:
    """A group's market (the admin's, or the user's request) selects Karpenter's capacity-type
    label by default, or the admin's own table (GKE's spot label and taint)."""
    spec = spec_with({"market_type": "spot"})
    assert pod_spec(backend_factory(), spec, "gpu")["nodeSelector"] == {"karpenter.sh/capacity-type": "spot"}
    gke = {"spot": {"node_selector": {"cloud.google.com/gke-spot": "true"},
                    "tolerations": [{"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
                                     "effect": "NoSchedule"}]}}
    placed = pod_spec(backend_factory(market_scheduling=gke), spec, "gpu")
    assert placed["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
    assert placed["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]
    admin_only = ClusterSpec.from_dict({"name": "s", "backend": "kubernetes", "groups": [GPU]})
    assert pod_spec(backend_factory(market_type={"gpu": "on-demand"}), admin_only, "gpu")["nodeSelector"] == {
        "karpenter.sh/capacity-type": "on-demand"}
    assert "nodeSelector" not in pod_spec(backend_factory(), admin_only, "gpu")


def test_an_accelerator_type_selects_its_gpu_model(backend_factory: Any) -> None:
    spec = spec_with({"accelerator_type": "A100"})
    backend = backend_factory(node_selector={"*": {"team": "ml"}})
    placed = pod_spec(backend, spec, "gpu")
    assert placed["nodeSelector"] == {"team": "ml", "karpenter.k8s.aws/instance-gpu-name": "a100"}
    assert "--labels=ray.io/accelerator-type=A100,raykube.io/cluster=s,raykube.io/group=gpu" in \
        placed["containers"][0]["args"]
    assert backend.node_resources(spec, spec.group("gpu"))["accelerator_type:A100"] == 1.0
    assert backend.node_labels(spec, spec.group("gpu"))["ray.io/accelerator-type"] == "A100"
    gke = backend_factory(accelerator_scheduling={"L4": {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}})
    assert pod_spec(gke, spec_with({"accelerator_type": "L4"}), "gpu")["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert "nodeSelector" not in pod_spec(backend_factory(accelerator_node_label=""), spec, "gpu")


def test_the_users_request_adds_to_the_admins_placement(backend_factory: Any) -> None:
    """node_selector merges (the user's keys win), tolerations add up, a named class or an
    affinity replaces the admin's."""
    request = {"node_selector": {"zone": "b"}, "tolerations": [{"key": "team-ml", "operator": "Exists"}],
               "priority_class_name": "batch-low", "runtime_class_name": "nvidia",
               "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                   {"weight": 1, "preference": {"matchExpressions": [{"key": "z", "operator": "In", "values": ["1"]}]}}]}}}
    backend = backend_factory(node_selector={"gpu": {"zone": "a", "pool": "gpu"}}, priority_class_name={"*": "default-ray"},
                              tolerations={"*": [{"key": "ray", "operator": "Exists", "effect": "NoSchedule"}]})
    placed = pod_spec(backend, spec_with(request), "gpu")
    assert placed["nodeSelector"] == {"zone": "b", "pool": "gpu"}
    assert [t["key"] for t in placed["tolerations"]] == ["nvidia.com/gpu", "ray", "team-ml"]
    assert placed["priorityClassName"] == "batch-low" and placed["runtimeClassName"] == "nvidia"
    assert placed["affinity"] == request["affinity"]
    # the head keeps the admin's placement only
    head = backend.api_client.sanitize_for_serialization(o.make_head_pod(
        backend.dry_run_meta(spec_with(request)), spec_with(request), backend._head_size(spec_with(request)),
        backend.pod_settings(spec_with(request), None)))["spec"]
    assert head["priorityClassName"] == "default-ray" and "nodeSelector" not in head


def test_tpu_and_neuron_groups_request_their_devices(backend_factory: Any) -> None:
    """Ray's TPU and neuron_cores resources become device requests (and tolerations) of the Pod;
    Ray on the node offers them (--resources)."""
    spec = ClusterSpec.from_dict({"name": "s", "backend": "kubernetes", "groups": [
        {"name": "tpu", "cpus": 8, "custom": {"TPU": 4}, "max": 1},
        {"name": "inf", "cpus": 4, "custom": {"neuron_cores": 2, "team_quota": 0.5}, "max": 1}]})
    backend = backend_factory()
    tpu = pod_spec(backend, spec, "tpu")
    container = tpu["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "3Gi", "google.com/tpu": "4"}
    assert '--resources={"TPU":4.0}' in container["args"] and "--num-gpus=0" in container["args"]
    assert tpu["tolerations"] == [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}]
    inf = pod_spec(backend, spec, "inf")["containers"][0]
    assert inf["resources"]["requests"] == {"cpu": "4", "memory": "3Gi", "aws.amazon.com/neuroncore": "2"}
    bad = ClusterSpec.from_dict({"name": "s", "backend": "kubernetes", "groups": [
        {"name": "tpu", "cpus": 1, "custom": {"TPU": 0.5}, "max": 1}]})
    with pytest.raises(SpecError) as caught:
        backend.worker_size(bad, bad.group("tpu"))
    assert caught.value.field == "groups.tpu.custom.TPU" and "whole devices" in caught.value.allowed


def test_the_gpu_image_follows_the_servers_cuda() -> None:
    admin = {"2.60.0/3.11": "reg/ray:cpu", "2.60.0/3.11/cu124": "reg/ray:cu124", "2.60.0/3.11/gpu": "reg/ray:cu128"}
    v = ("2.60.0", (3, 11))
    assert choose_images(admin, "", *v, cuda="12.4") == ("reg/ray:cpu", "reg/ray:cu124")
    assert choose_images(admin, "", *v, cuda="12.8") == ("reg/ray:cpu", "reg/ray:cu128")  # no cu128 entry: gpu
    assert choose_images(admin, "", *v) == ("reg/ray:cpu", "reg/ray:cu128")
    assert choose_images({"2.60.0/3.11/cu121": "reg/ray:cu121"}, "my/notebook:1", *v, cuda="12.1") == (
        "my/notebook:1", "reg/ray:cu121")


def test_the_cuda_version_comes_from_the_servers_environment(backend_factory: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VERSION", "12.4.1")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    backend = backend_factory(image_map={f"{package_version('ray')}/{python}/cu124": "reg/ray:cu124"})
    assert backend.cuda_version == "12.4" and backend.gpu_image == "reg/ray:cu124"
