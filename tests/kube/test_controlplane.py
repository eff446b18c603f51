"""The real control plane the Kubernetes tests run on: it enforces what a user's cluster enforces
(admission, RBAC), its controllers work (garbage collection, quota status), kubectl reaches it,
and the fault proxy in front of it fires the faults the backend must survive."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import urllib3
from kubernetes import client, config, watch

from jupyter_raykube.backends import processes

from ..conftest import SESSION_TAG, wait_for
from .controlplane import BUILD_SCRIPT, K8S_VERSION, ControlPlane, cache_bin_dir
from .faultproxy import FaultProxy

pytestmark = pytest.mark.k8s


@pytest.fixture
def admin(kube_control_plane: ControlPlane) -> Iterator[client.CoreV1Api]:
    with kube_control_plane.admin_api_client() as api_client:
        yield client.CoreV1Api(api_client)


def api_for_token(plane: ControlPlane, tmp_path: Path, token: str, *, server: str | None = None,
                  retries: bool = True) -> client.ApiClient:
    """A client as that token's user, loaded through a kubeconfig like the server under test's."""
    path = plane.write_kubeconfig(tmp_path / f"kubeconfig-{uuid.uuid4().hex[:8]}", token=token, server=server)
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    if not retries:
        configuration.retries = False  # urllib3 would silently retry some 429/503s
    return client.ApiClient(configuration)


def grant(admin: client.CoreV1Api, namespace: str, service_account: str, resources: list[str],
          verbs: list[str]) -> None:
    rbac = client.RbacAuthorizationV1Api(admin.api_client)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": service_account},
        "rules": [{"apiGroups": [""], "resources": resources, "verbs": verbs}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": service_account},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": service_account},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]})


def status(exc: client.ApiException) -> dict:
    """The apiserver's (or the proxy's) ``kind: Status`` answer."""
    return json.loads(exc.body)


# Pods these tests create must never run: no node carries this label.
NOWHERE = {"raykube.test/never-scheduled": "true"}


def privileged_pod(name: str) -> dict:
    return {"metadata": {"name": name},
            "spec": {"nodeSelector": NOWHERE,
                     "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "1"],
                                     "securityContext": {"privileged": True}}]}}


def test_control_plane_serves_its_version_and_every_process_is_marked_for_the_leak_check(
        kube_control_plane: ControlPlane) -> None:
    with kube_control_plane.admin_api_client() as api_client:
        assert client.VersionApi(api_client).get_code().git_version == K8S_VERSION
    procs = kube_control_plane.leftover_processes()
    names = sorted(p.name() for p in procs)
    assert names == ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    session = set(p.pid for p in processes.find_marked(SESSION_TAG, os.environ[SESSION_TAG]))
    assert {p.pid for p in procs} <= session


def test_pod_security_admission_refuses_a_privileged_pod_only_where_restricted(
        admin: client.CoreV1Api, make_kube_namespace: Callable[..., str]) -> None:
    restricted = make_kube_namespace("restricted", {"pod-security.kubernetes.io/enforce": "restricted"})
    open_ns = make_kube_namespace("privileged")
    with pytest.raises(client.ApiException) as refused:
        admin.create_namespaced_pod(restricted, privileged_pod("root"))
    assert refused.value.status == 403
    message = status(refused.value)["message"]
    assert 'violates PodSecurity "restricted:latest": privileged (container "main" must not set' in message
    admin.create_namespaced_pod(open_ns, privileged_pod("root"))  # same Pod, namespace without the label


def test_resource_quota_refuses_a_pod_over_it(admin: client.CoreV1Api, kube_namespace: str) -> None:
    admin.create_namespaced_resource_quota(kube_namespace, {
        "metadata": {"name": "cpu"}, "spec": {"hard": {"requests.cpu": "500m"}}})
    # Admission refuses every Pod until the resourcequota controller has computed the usage.
    wait_for(lambda: admin.read_namespaced_resource_quota("cpu", kube_namespace).status.hard,
             30, "the resourcequota controller to fill the quota's status")
    big = {"metadata": {"name": "big"},
           "spec": {"nodeSelector": NOWHERE,
                    "containers": [{"name": "main", "image": "busybox", "resources": {"requests": {"cpu": "1"}}}]}}
    with pytest.raises(client.ApiException) as refused:
        admin.create_namespaced_pod(kube_namespace, big)
    assert refused.value.status == 403
    assert "exceeded quota: cpu, requested: requests.cpu=1, used: requests.cpu=0, limited: requests.cpu=500m" \
        in status(refused.value)["message"]


def test_rbac_a_service_account_without_a_role_is_forbidden_and_with_one_allowed(
        kube_control_plane: ControlPlane, admin: client.CoreV1Api, kube_namespace: str, tmp_path: Path) -> None:
    token = kube_control_plane.service_account_token(kube_namespace, "reader")
    with api_for_token(kube_control_plane, tmp_path, token) as api_client:
        reader = client.CoreV1Api(api_client)
        with pytest.raises(client.ApiException) as forbidden:
            reader.list_namespaced_pod(kube_namespace)
        assert forbidden.value.status == 403
        assert (f'"system:serviceaccount:{kube_namespace}:reader" cannot list resource "pods"'
                in status(forbidden.value)["message"])
        grant(admin, kube_namespace, "reader", ["pods"], ["list"])
        wait_for(lambda: _allowed(lambda: reader.list_namespaced_pod(kube_namespace)), 30,
                 "the RoleBinding to take effect")


def _allowed(call: Callable[[], object]) -> bool:
    try:
        call()
        return True
    except client.ApiException as exc:
        if exc.status == 403:
            return False
        raise


def test_garbage_collector_deletes_the_dependent_of_a_deleted_owner(
        admin: client.CoreV1Api, kube_namespace: str) -> None:
    owner = admin.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "owner"}})
    admin.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "dependent", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}]}})
    admin.delete_namespaced_config_map("owner", kube_namespace)
    names = lambda: {c.metadata.name for c in admin.list_namespaced_config_map(kube_namespace).items}  # noqa: E731
    wait_for(lambda: "dependent" not in names(), 30, "the garbage collector to delete the dependent")
    assert "kube-root-ca.crt" in names()  # published by the controller-manager into every namespace


def test_kubectl_lists_namespaces(kube_control_plane: ControlPlane, kube_namespace: str) -> None:
    out = kube_control_plane.kubectl("get", "ns", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system", f"namespace/{kube_namespace}"} <= set(out)


@pytest.fixture
def proxied(kube_control_plane: ControlPlane, admin: client.CoreV1Api, kube_namespace: str,
            kube_fault_proxy: FaultProxy, tmp_path: Path) -> Iterator[client.CoreV1Api]:
    """A ConfigMap editor's client that talks through the fault proxy, urllib3 retries off."""
    grant(admin, kube_namespace, "editor", ["configmaps"], ["get", "list", "watch", "create"])
    token = kube_control_plane.service_account_token(kube_namespace, "editor")
    with api_for_token(kube_control_plane, tmp_path, token, server=kube_fault_proxy.url, retries=False) as api:
        editor = client.CoreV1Api(api)
        wait_for(lambda: _allowed(lambda: editor.list_namespaced_config_map(kube_namespace)), 30,
                 "the RoleBinding to take effect")
        kube_fault_proxy.clear_requests()
        yield editor


def test_fault_proxy_injects_a_503_once_then_forwards(proxied: client.CoreV1Api, kube_fault_proxy: FaultProxy,
                                                       kube_namespace: str) -> None:
    path = rf"^/api/v1/namespaces/{kube_namespace}/configmaps$"
    fault = kube_fault_proxy.inject("GET", path, status=503)
    with pytest.raises(client.ApiException) as failed:
        proxied.list_namespaced_config_map(kube_namespace)
    assert failed.value.status == 503 and status(failed.value)["reason"] == "ServiceUnavailable"
    assert [c.metadata.name for c in proxied.list_namespaced_config_map(kube_namespace).items] == ["kube-root-ca.crt"]
    assert fault.hits == 1
    assert [(r.status, r.fault) for r in kube_fault_proxy.requests("GET", path)] == [(503, True), (200, False)]


def test_fault_proxy_429_carries_retry_after_and_delay_only_still_forwards(
        kube_fault_proxy: FaultProxy, kube_namespace: str) -> None:
    kube_fault_proxy.inject("GET", "/version", status=429, retry_after_s=7)
    with pytest.raises(urllib.error.HTTPError) as throttled:
        urllib.request.urlopen(f"{kube_fault_proxy.url}/version", timeout=10)
    assert throttled.value.code == 429 and throttled.value.headers["Retry-After"] == "7"
    slow = kube_fault_proxy.inject("GET", "/version", status=None, delay_s=0.3)
    with urllib.request.urlopen(f"{kube_fault_proxy.url}/version", timeout=10) as answer:
        assert answer.status == 200  # /version is readable anonymously
    assert slow.hits == 1


def test_fault_proxy_loses_a_create_answer_after_the_create_happened(
        proxied: client.CoreV1Api, admin: client.CoreV1Api, kube_fault_proxy: FaultProxy,
        kube_namespace: str) -> None:
    kube_fault_proxy.inject("POST", "/configmaps$", lose_answer=True)
    body = {"metadata": {"name": "once"}, "data": {"k": "v"}}
    with pytest.raises(urllib3.exceptions.ProtocolError):
        proxied.create_namespaced_config_map(kube_namespace, body)
    assert admin.read_namespaced_config_map("once", kube_namespace).data == {"k": "v"}
    with pytest.raises(client.ApiException) as again:
        proxied.create_namespaced_config_map(kube_namespace, body)
    assert again.value.status == 409
    assert [(r.status, r.fault) for r in kube_fault_proxy.requests("POST")] == [(201, True), (409, False)]


def test_fault_proxy_streams_watch_events(proxied: client.CoreV1Api, admin: client.CoreV1Api,
                                          kube_namespace: str) -> None:
    start = proxied.list_namespaced_config_map(kube_namespace).metadata.resource_version
    admin.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "watched"}})
    seen = []
    for event in watch.Watch().stream(proxied.list_namespaced_config_map, kube_namespace, resource_version=start,
                                      timeout_seconds=20):
        seen.append((event["type"], event["object"].metadata.name))
        break  # leaving the loop closes the stream
    assert seen == [("ADDED", "watched")]


def test_admission_defaults_requests_from_a_limit_range_and_mounts_the_service_account_token(
        admin: client.CoreV1Api, kube_namespace: str) -> None:
    admin.create_namespaced_limit_range(kube_namespace, {"metadata": {"name": "defaults"}, "spec": {"limits": [
        {"type": "Container", "defaultRequest": {"cpu": "100m"}, "default": {"cpu": "200m"}}]}})
    created = admin.create_namespaced_pod(kube_namespace, {"metadata": {"name": "bare"}, "spec": {
        "nodeSelector": NOWHERE, "containers": [{"name": "main", "image": "busybox"}]}})
    resources = created.spec.containers[0].resources
    assert (resources.requests, resources.limits) == ({"cpu": "100m"}, {"cpu": "200m"})
    assert created.spec.service_account_name == "default"
    assert [m.mount_path for m in created.spec.containers[0].volume_mounts] == [
        "/var/run/secrets/kubernetes.io/serviceaccount"]


def test_node_credentials_may_register_their_own_node_only(
        kube_control_plane: ControlPlane, admin: client.CoreV1Api, tmp_path: Path) -> None:
    cert, key = kube_control_plane.node_credentials("cp-test-node")
    path = kube_control_plane.write_kubeconfig(tmp_path / "node.kubeconfig", cert=cert, key=key)
    with config.new_client_from_config(config_file=str(path)) as api_client:
        node_api = client.CoreV1Api(api_client)
        try:
            node_api.create_node({"metadata": {"name": "cp-test-node"}})
            with pytest.raises(client.ApiException) as refused:
                node_api.create_node({"metadata": {"name": "cp-other-node"}})
            assert refused.value.status == 403
            assert "node \"cp-test-node\" is not allowed to modify node \"cp-other-node\"" in \
                status(refused.value)["message"]
        finally:
            admin.delete_node("cp-test-node")


def test_build_script_finds_the_binaries_the_session_runs(kube_control_plane: ControlPlane) -> None:
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.startswith(f"k8s control plane {K8S_VERSION}") and "cached in" in result.stdout
    assert {Path(c.argv[0]).parent for c in kube_control_plane.components} == {cache_bin_dir()}
