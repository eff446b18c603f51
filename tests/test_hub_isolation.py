"""Under the default hub hook users cannot reach each other, the hub, or past their limits:
real KubeSpawner objects spawn two users against the test control plane (a real apiserver with
RBAC, Pod Security and ResourceQuota admission), and each user's own ServiceAccount token is
then turned against the other's namespace, the hub's, and its own quota. Every refusal here is
the apiserver's 403, not ours.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient, CoreV1Api, RbacAuthorizationV1Api
from kubernetes.client.exceptions import ApiException
from traitlets import TraitError
from traitlets.config import Config

from jupyter_raykube import hub
from jupyter_raykube.hub_namespace import (
    SHARED_NAMESPACE_SETTING,
    SharedNamespaceError,
    limit_range_manifest,
    quota_hard,
    quota_manifest,
)
from jupyter_raykube.policy import Policy
from tests.kube.controlplane import ControlPlane
from tests.kube.faultproxy import FaultProxy
from tests.kube.helpers import pod as pod_manifest
from tests.kube.helpers import restricted, wait_until
from tests import test_hub
from tests.test_hub import grant_hub, make_spawner, run

USERS = ("alice", "bob")
# tests/test_hub.py's fixtures (pytest finds fixtures by their names in the using module)
kubespawner_kubeconfig, hub_ns, hub_config = test_hub.kubespawner_kubeconfig, test_hub.hub_ns, test_hub.hub_config


def forbidden(call: Any, *args: Any, **kwargs: Any) -> str:
    """The apiserver's message for a call that must be refused with 403."""
    with pytest.raises(ApiException) as info:
        call(*args, **kwargs)
    assert info.value.status == 403, (info.value.status, info.value.body)
    return str(json.loads(info.value.body)["message"])


@pytest.fixture
def default_hub(hub_config: Config, hub_ns: str, kube_admin: ApiClient,
                kube_control_plane: ControlPlane) -> Iterator[Config]:
    """The documented default: no enable_user_namespaces, no opt-in; the hub holds the
    documented ClusterRole. Users' namespaces are deleted afterwards."""
    grant_hub(kube_admin, "ClusterRole", "", hub_ns)
    del hub_config.KubeSpawner["enable_user_namespaces"], hub_config.RayKubeHubPolicy["allow_shared_namespace"]
    hub_config.KubeSpawner.user_namespace_template = hub_ns + "-{username}"
    yield hub_config
    for user in USERS:
        kube_control_plane.delete_namespace(f"{hub_ns}-{user}")
    RbacAuthorizationV1Api(kube_admin).delete_cluster_role_binding(f"raykube-hub-{hub_ns}")


def user_api(control_plane: ControlPlane, namespace: str, account: str, tmp_path: Path) -> CoreV1Api:
    """The API as the user's server sees it: its own ServiceAccount's token."""
    token = control_plane.service_account_token(namespace, account)
    path = control_plane.write_kubeconfig(tmp_path / f"{account}.kubeconfig", token=token, namespace=namespace)
    return CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(path)))


@pytest.mark.k8s
def test_users_cannot_reach_each_other_the_hub_or_past_their_quota(
        default_hub: Config, hub_ns: str, kube_admin: ApiClient, kube_control_plane: ControlPlane,
        kube_fault_proxy: FaultProxy, tmp_path: Path) -> None:
    default_hub.RayKubeHubPolicy.max_cpus = 4
    default_hub.RayKubeHubPolicy.max_gpus = 1
    default_hub.RayKubeHubPolicy.max_memory = "8Gi"
    admin = CoreV1Api(kube_admin)
    admin.create_namespaced_secret(hub_ns, {"metadata": {"name": "hub-secret"}, "stringData": {"cookie": "x"}})

    async def spawn(user: str) -> tuple[str, Any]:
        spawner = make_spawner(default_hub, user=user)
        await hub.pre_spawn_hook(spawner)
        pod = hub.modify_pod_hook(spawner, await spawner.get_pod_manifest())
        return spawner.namespace, await spawner.api.create_namespaced_pod(spawner.namespace, pod)

    spawned = {user: run(lambda user=user: spawn(user)) for user in USERS}
    assert {user: ns for user, (ns, _) in spawned.items()} == {u: f"{hub_ns}-{u}" for u in USERS}
    api = {user: user_api(kube_control_plane, f"{hub_ns}-{user}", f"raykube-{user}", tmp_path) for user in USERS}
    alice, bob = api["alice"], api["bob"]
    ns_alice, ns_bob = f"{hub_ns}-alice", f"{hub_ns}-bob"

    # Each user's server does its job in its own namespace: a token Secret, by name.
    for user, ns in (("alice", ns_alice), ("bob", ns_bob)):
        api[user].create_namespaced_secret(ns, {"metadata": {"name": "c-ray-token"}, "stringData": {"token": user}})
        assert api[user].read_namespaced_secret("c-ray-token", ns).data

    # ... and nothing of the other's, nor the hub's; not even a list of its own Secrets.
    for call, args in ((alice.read_namespaced_secret, ("c-ray-token", ns_bob)),
                       (alice.list_namespaced_secret, (ns_bob,)),
                       (alice.read_namespaced_pod, (spawned["bob"][1].metadata.name, ns_bob)),
                       (alice.list_namespaced_pod, (ns_bob,)),
                       (alice.read_namespaced_secret, ("hub-secret", hub_ns)),
                       (alice.list_namespaced_secret, (hub_ns,)),
                       (alice.list_namespaced_secret, (ns_alice,)),
                       (bob.read_namespaced_secret, ("c-ray-token", ns_alice))):
        assert "forbidden" in forbidden(call, *args)

    # Its limits are the namespace's, which its token cannot change.
    quota = admin.read_namespaced_resource_quota("raykube", ns_alice)
    assert quota.spec.hard == {"requests.cpu": "4100m", "requests.memory": str(8 * 2**30 + 256 * 2**20),
                               "requests.nvidia.com/gpu": "1"}
    assert "forbidden" in forbidden(alice.patch_namespaced_resource_quota, "raykube", ns_alice,
                                    {"spec": {"hard": {"requests.nvidia.com/gpu": "8"}}})
    assert "forbidden" in forbidden(alice.delete_namespaced_resource_quota, "raykube", ns_alice)
    assert "forbidden" in forbidden(alice.patch_namespace, ns_alice,
                                    {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}})
    wait_until(lambda: admin.read_namespaced_resource_quota("raykube", ns_alice).status.used, timeout_s=30,
               what="the quota controller to count alice's namespace")
    gpu_pod = restricted(pod_manifest("two-gpus", resources={"requests": {"nvidia.com/gpu": "2", "cpu": "1"},
                                                             "limits": {"nvidia.com/gpu": "2", "cpu": "1"}}))
    message = forbidden(alice.create_namespaced_pod, ns_alice, gpu_pod)
    assert "exceeded quota: raykube" in message and "limited: requests.nvidia.com/gpu=1" in message
    privileged = pod_manifest("root", securityContext={"privileged": True})
    assert "violates PodSecurity \"restricted:latest\"" in forbidden(alice.create_namespaced_pod, ns_alice, privileged)


@pytest.mark.k8s
def test_a_chosen_profile_narrows_the_quota_and_the_servers_policy(
        default_hub: Config, hub_ns: str, kube_admin: ApiClient) -> None:
    """The admin allows 64 CPUs and 4 GPUs; alice picks the "Small Ray cluster" profile (8 CPUs,
    no GPUs, 4 workers): the quota the hook writes and the policy her server gets are the
    profile's, so neither a user-side config nor a direct Pod gets past them."""
    default_hub.RayKubeHubPolicy.max_cpus = 64
    default_hub.RayKubeHubPolicy.max_gpus = 4
    default_hub.RayKubeHubPolicy.max_clusters = 1
    default_hub.KubeSpawner.profile_list = hub.ray_profile_list()

    async def spawn() -> dict[str, Any]:
        spawner = make_spawner(default_hub, user="alice", profile="ray-small")
        await hub.pre_spawn_hook(spawner)
        return hub.modify_pod_hook(spawner, await spawner.get_pod_manifest()).to_dict()

    pod = run(spawn)
    hard = CoreV1Api(kube_admin).read_namespaced_resource_quota("raykube", f"{hub_ns}-alice").spec.hard
    assert hard["requests.cpu"] == "8100m" and hard["requests.nvidia.com/gpu"] == "0"
    assert hard["pods"] == "6"  # 1 cluster x (head + 4 workers) + the server
    caps = json.loads(next(e["value"] for e in pod["spec"]["containers"][0]["env"] if e["name"] == hub.ENV_POLICY))
    assert (caps["max_cpus"], caps["max_gpus"], caps["max_workers"], caps["max_clusters"]) == (8, 0, 4, 1)


@pytest.mark.k8s
def test_a_shared_namespace_is_refused_without_the_opt_in(hub_config: Config, hub_ns: str,
                                                          kube_fault_proxy: FaultProxy) -> None:
    """enable_user_namespaces = False, a profile's namespace, or a user namespace template that
    names no user, without allow_shared_namespace: the spawn fails before any object is made,
    naming both settings."""
    del hub_config.RayKubeHubPolicy["allow_shared_namespace"]
    hub_config.KubeSpawner.profile_list = hub.ray_profile_list([
        hub.RayProfile("plain", "Plain", "", {}, default=True),
        hub.RayProfile("team", "Team", "", {}, kubespawner_override={"namespace": hub_ns})])

    async def spawn(**options: Any) -> None:
        await hub.pre_spawn_hook(make_spawner(hub_config, **options))

    kube_fault_proxy.clear_requests()
    for config_change, options in (({"enable_user_namespaces": False}, {}),
                                   ({"enable_user_namespaces": True}, {"profile": "team"}),
                                   ({"user_namespace_template": hub_ns}, {})):
        hub_config.KubeSpawner.update(config_change)
        with pytest.raises(SharedNamespaceError) as info:
            run(lambda: spawn(**options))
        assert SHARED_NAMESPACE_SETTING in str(info.value) and repr(hub_ns) in str(info.value)
        assert "c.KubeSpawner.enable_user_namespaces" in str(info.value)
    assert not [r for r in kube_fault_proxy.requests() if r.method != "GET"]


def test_quota_from_policy() -> None:
    """The ResourceQuota's `hard`: the policy's totals plus the server's own requests; a key with
    no cap is left out; every accelerator gets max_gpus."""
    server = {"cpu": 0.5, "memory": 2**30}
    policy = Policy(max_cpus=16, max_gpus=2, max_workers=4, max_clusters=2)
    hard = quota_hard(policy, server_requests=server, max_memory_bytes=64 * 2**30,
                      accelerators=("nvidia.com/gpu", "amd.com/gpu"))
    assert hard == {"requests.cpu": "16500m", "requests.memory": str(65 * 2**30), "requests.nvidia.com/gpu": "2",
                    "requests.amd.com/gpu": "2", "pods": "11"}
    assert quota_hard(Policy(max_gpus=0), server_requests=server, max_memory_bytes=None,
                      accelerators=("nvidia.com/gpu",)) == {"requests.nvidia.com/gpu": "0"}
    assert quota_hard(Policy(max_cpus=3), server_requests={}, max_memory_bytes=None, accelerators=()) == {
        "requests.cpu": "3"}
    assert quota_manifest("jhub-alice", {"pods": "3"}, {"a": "b"}) == {
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "raykube", "namespace": "jhub-alice", "labels": {"a": "b"}}, "spec": {"hard": {"pods": "3"}}}
    assert limit_range_manifest("jhub-alice", {})["spec"] == {
        "limits": [{"type": "Container", "defaultRequest": {"cpu": "100m", "memory": "256Mi"}}]}
    with pytest.raises(TraitError, match="max_memory must be a Kubernetes quantity such as '64Gi', not '64 GB'"):
        hub.RayKubeHubPolicy(max_memory="64 GB")
