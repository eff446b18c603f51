"""The API emulator, exercised only through the official client over HTTP (and kubectl)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes import client, dynamic, watch
from kubernetes.client import ApiException

from .emulator import KubeEmulator
from .helpers import namespace, pod, service, wait_until

NS = "default"
pytestmark = pytest.mark.k8s


def status_body(exc: ApiException) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["code"] == exc.status
    return body


@pytest.fixture
def v1(kube_api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api_client)


def test_discovery_version_and_custom_resources(kube_emulator: KubeEmulator, kube_api_client: client.ApiClient) -> None:
    assert client.VersionApi(kube_api_client).get_code().git_version == "v1.37.0"
    core = client.CoreV1Api(kube_api_client).get_api_resources()
    names = {r.name for r in core.resources}
    assert {"pods", "pods/status", "pods/log", "services", "secrets", "events", "namespaces",
            "serviceaccounts"} <= names
    groups = {g.name for g in client.ApisApi(kube_api_client).get_api_versions().groups}
    assert "rbac.authorization.k8s.io" in groups

    kube_emulator.register_custom_resource("raykube.io", "v1alpha1", "rayclusters", "RayCluster")
    custom = client.CustomObjectsApi(kube_api_client)
    body = {"apiVersion": "raykube.io/v1alpha1", "kind": "RayCluster", "metadata": {"name": "rc"},
            "spec": {"workers": 2}}
    created = custom.create_namespaced_custom_object("raykube.io", "v1alpha1", NS, "rayclusters", body)
    assert created["metadata"]["uid"] and created["spec"] == {"workers": 2}
    listed = custom.list_namespaced_custom_object("raykube.io", "v1alpha1", NS, "rayclusters")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["rc"]
    assert "raykube.io" in {g.name for g in client.ApisApi(kube_api_client).get_api_versions().groups}


def test_crud_pods_services_secrets_rbac(v1: client.CoreV1Api, kube_api_client: client.ApiClient) -> None:
    created, code, _ = v1.create_namespaced_pod_with_http_info(NS, pod("p1", {"app": "x"}, ["sleep", "1"]))
    assert code == 201
    meta = created.metadata
    assert meta.uid and meta.creation_timestamp and meta.namespace == NS and int(meta.resource_version) > 0
    assert created.spec.restart_policy == "Never" and created.status.phase == "Pending"
    svc = v1.create_namespaced_service(NS, service("web", {"app": "x"}, 80, 8080))
    assert svc.spec.cluster_ip.startswith("10.9") and svc.spec.ports[0].target_port == 8080
    assert int(svc.metadata.resource_version) > int(meta.resource_version)
    secret = v1.create_namespaced_secret(NS, {"metadata": {"name": "tok"}, "stringData": {"token": "abc"}})
    assert secret.data == {"token": "YWJj"} and secret.type == "Opaque"

    assert v1.read_namespaced_pod("p1", NS).metadata.uid == meta.uid
    assert [p.metadata.name for p in v1.list_pod_for_all_namespaces().items] == ["p1"]
    assert v1.read_namespaced_service_account("default", NS).metadata.name == "default"

    rbac = client.RbacAuthorizationV1Api(kube_api_client)
    rbac.create_namespaced_role(NS, {"metadata": {"name": "raykube"}, "rules": [
        {"apiGroups": [""], "resources": ["pods", "services", "secrets", "events"],
         "verbs": ["create", "get", "list", "watch", "delete", "patch"]}]})
    rbac.create_namespaced_role_binding(NS, {"metadata": {"name": "raykube"},
                                             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                         "name": "raykube"},
                                             "subjects": [{"kind": "ServiceAccount", "name": "default"}]})
    assert [r.metadata.name for r in rbac.list_namespaced_role(NS).items] == ["raykube"]

    deleted = v1.delete_namespaced_pod("p1", NS)
    assert deleted.metadata.deletion_timestamp is not None
    assert v1.delete_namespaced_secret("tok", NS)["status"] == "Success"  # this client types it "object"
    v1.delete_namespaced_service("web", NS)
    assert v1.list_namespaced_pod(NS).items == [] and v1.list_namespaced_service(NS).items == []


def test_generate_name(v1: client.CoreV1Api) -> None:
    names = {v1.create_namespaced_pod(NS, pod(generate_name="ray-worker-", command=["true"])).metadata.name
             for _ in range(5)}
    assert len(names) == 5 and all(n.startswith("ray-worker-") and len(n) == len("ray-worker-") + 5 for n in names)


def test_error_status_bodies(v1: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as missing:
        v1.read_namespaced_pod("nope", NS)
    body = status_body(missing.value)
    assert missing.value.status == 404 and body["reason"] == "NotFound"
    assert body["message"] == 'pods "nope" not found' and body["details"] == {"name": "nope", "kind": "pods"}

    v1.create_namespaced_pod(NS, pod("p", command=["true"]))
    with pytest.raises(ApiException) as dup:
        v1.create_namespaced_pod(NS, pod("p", command=["true"]))
    body = status_body(dup.value)
    assert dup.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["details"] == {"name": "p", "kind": "pods"}

    current = v1.read_namespaced_pod("p", NS)
    current.metadata.labels = {"v": "1"}
    v1.replace_namespaced_pod("p", NS, current)
    current.metadata.labels = {"v": "2"}  # still the old resourceVersion
    with pytest.raises(ApiException) as stale:
        v1.replace_namespaced_pod("p", NS, current)
    body = status_body(stale.value)
    assert stale.value.status == 409 and body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]

    with pytest.raises(ApiException) as no_ns:
        v1.create_namespaced_pod("absent", pod("p", command=["true"]))
    assert no_ns.value.status == 404 and status_body(no_ns.value)["details"]["kind"] == "namespaces"


def test_validation_rejects_what_the_apiserver_rejects(v1: client.CoreV1Api,
                                                      kube_api_client: client.ApiClient) -> None:
    def rejected(manifest: dict[str, Any], create: Any = v1.create_namespaced_pod) -> dict[str, Any]:
        with pytest.raises(ApiException) as err:
            create(NS, manifest)
        assert err.value.status == 422
        body = status_body(err.value)
        assert body["reason"] == "Invalid"
        return body

    # The typed client refuses unknown fields itself; the dynamic client sends raw JSON.
    pods = dynamic.DynamicClient(kube_api_client).resources.get(api_version="v1", kind="Pod")
    unknown = pod("p", command=["true"])
    unknown["spec"]["contianers"] = []
    body = rejected(unknown, lambda ns, body: pods.create(body=body, namespace=ns))
    assert "'contianers' was unexpected" in body["message"]
    assert [c["field"] for c in body["details"]["causes"]] == ["spec"]

    cores = pod("p", command=["true"], resources={"limits": {"cpu": "5 cores"}})
    body = rejected(cores)
    assert body["details"]["causes"][0]["field"] == "spec.containers[0].resources.limits[cpu]"
    assert "quantities must match the regular expression" in body["message"]
    shm = pod("p", command=["true"])
    shm["spec"]["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "lots"}}]
    assert rejected(shm)["details"]["causes"][0]["field"] == "spec.volumes[0].emptyDir.sizeLimit"
    gpu = pod("p", command=["true"], resources={"requests": {"nvidia.com/gpu": "1"}})
    assert "Limit must be set" in rejected(gpu)["message"]

    body = rejected(pod("Bad_Name", command=["true"]))
    assert body["details"]["name"] == "Bad_Name" and "RFC 1123 subdomain" in body["message"]
    body = rejected(service("ray.head", {"app": "x"}, 80), v1.create_namespaced_service)
    assert "RFC 1123 label" in body["message"]
    assert "labels" in rejected(pod("p", {"bad key!": "v"}, ["true"]))["message"]
    long_port = pod("p", command=["true"], ports=[{"name": "dashboard-agent-grpc", "containerPort": 8265}])
    assert "no more than 15 characters" in rejected(long_port)["message"]
    with pytest.raises(ApiException):
        v1.read_namespaced_pod("p", NS)


def test_pods_are_immutable_and_status_is_a_subresource(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("p", command=["true"]))
    with pytest.raises(ApiException) as err:
        v1.patch_namespaced_pod("p", NS, {"spec": {"restartPolicy": "Always"}})
    assert err.value.status == 422 and "pod updates may not change fields" in status_body(err.value)["message"]
    v1.patch_namespaced_pod("p", NS, {"status": {"phase": "Running"}})  # silently ignored on the main resource
    assert v1.read_namespaced_pod("p", NS).status.phase == "Pending"
    v1.patch_namespaced_pod_status("p", NS, {"status": {"phase": "Running"}})
    assert v1.read_namespaced_pod("p", NS).status.phase == "Running"

    svc = v1.create_namespaced_service(NS, service("s", {"app": "x"}, 80))
    with pytest.raises(ApiException) as ip:
        v1.patch_namespaced_service("s", NS, {"spec": {"clusterIP": "10.96.99.99"}})
    assert ip.value.status == 422
    assert v1.read_namespaced_service("s", NS).spec.cluster_ip == svc.spec.cluster_ip


def test_label_and_field_selectors(v1: client.CoreV1Api) -> None:
    for name, labels in [("a", {"app": "ray", "tier": "head"}), ("b", {"app": "ray", "tier": "worker"}),
                         ("c", {"app": "web"}), ("d", {})]:
        v1.create_namespaced_pod(NS, pod(name, labels, ["true"]))
    v1.patch_namespaced_pod_status("b", NS, {"status": {"phase": "Running"}})

    def names(**kw: Any) -> list[str]:
        return sorted(p.metadata.name for p in v1.list_namespaced_pod(NS, **kw).items)

    assert names(label_selector="app=ray") == ["a", "b"]
    assert names(label_selector="app==ray,tier!=head") == ["b"]
    assert names(label_selector="app in (ray, web)") == ["a", "b", "c"]
    assert names(label_selector="app notin (ray)") == ["c", "d"]
    assert names(label_selector="tier") == ["a", "b"]
    assert names(label_selector="!app") == ["d"]
    assert names(field_selector="metadata.name=c") == ["c"]
    assert names(field_selector="status.phase=Running") == ["b"]
    assert names(field_selector="status.phase!=Running,metadata.name!=a") == ["c", "d"]
    assert names(field_selector="spec.nodeName=") == ["a", "b", "c", "d"]
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod(NS, field_selector="spec.hostname=x")
    assert err.value.status == 400 and "field label not supported" in status_body(err.value)["message"]

    page = v1.list_namespaced_pod(NS, limit=3)
    assert len(page.items) == 3 and page.metadata.remaining_item_count == 1
    rest = v1.list_namespaced_pod(NS, limit=3, _continue=page.metadata._continue)
    assert [p.metadata.name for p in rest.items] == ["d"] and not rest.metadata._continue

    v1.delete_collection_namespaced_pod(NS, label_selector="app=ray")
    assert names() == ["c", "d"]


def test_merge_json_and_strategic_patches(v1: client.CoreV1Api) -> None:
    manifest = pod("p", {"a": "1", "b": "2"}, ["true"],
                   env=[{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}])
    v1.create_namespaced_pod(NS, manifest)
    merged = v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"a": None, "c": "3"}}},
                                     _content_type="application/merge-patch+json")
    assert merged.metadata.labels == {"b": "2", "c": "3"}
    patched = v1.patch_namespaced_pod("p", NS, [{"op": "add", "path": "/metadata/annotations", "value": {"k": "v"}},
                                                {"op": "replace", "path": "/metadata/labels/b", "value": "20"}])
    assert patched.metadata.annotations == {"k": "v"} and patched.metadata.labels["b"] == "20"
    with pytest.raises(ApiException) as failed_test:
        v1.patch_namespaced_pod("p", NS, [{"op": "test", "path": "/metadata/labels/b", "value": "2"}])
    assert failed_test.value.status == 422

    # Strategic merge: conditions merge by type, container lists by name (image is mutable).
    v1.patch_namespaced_pod_status("p", NS, {"status": {"conditions": [
        {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}]}})
    v1.patch_namespaced_pod_status("p", NS, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    conditions = {c.type: c.status for c in v1.read_namespaced_pod("p", NS).status.conditions}
    assert conditions == {"PodScheduled": "True", "Ready": "True"}
    out = v1.patch_namespaced_pod("p", NS, {"spec": {"containers": [{"name": "main", "image": "python:3.12"}]}})
    assert out.spec.containers[0].image == "python:3.12" and [e.name for e in out.spec.containers[0].env] == ["X", "Y"]


def test_watch_resource_version_selectors_and_timeout(v1: client.CoreV1Api) -> None:
    start_rv = v1.list_namespaced_pod(NS).metadata.resource_version
    v1.create_namespaced_pod(NS, pod("ray-1", {"app": "ray"}, ["true"]))
    v1.create_namespaced_pod(NS, pod("web-1", {"app": "web"}, ["true"]))
    v1.patch_namespaced_pod("ray-1", NS, {"metadata": {"labels": {"step": "2"}}})
    v1.patch_namespaced_pod("ray-1", NS, {"metadata": {"labels": {"app": "gone"}}})  # leaves the selector
    v1.create_namespaced_pod(NS, pod("ray-2", {"app": "ray"}, ["true"]))
    v1.delete_namespaced_pod("ray-2", NS)

    began = time.monotonic()
    events = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        v1.list_namespaced_pod, NS, label_selector="app=ray", resource_version=start_rv, timeout_seconds=1)]
    assert time.monotonic() - began < 5
    assert events == [("ADDED", "ray-1"), ("MODIFIED", "ray-1"), ("DELETED", "ray-1"), ("ADDED", "ray-2"),
                      ("DELETED", "ray-2")]
    # No resourceVersion: the current state first, as synthetic ADDED events.
    now = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        v1.list_namespaced_pod, NS, field_selector="metadata.name=web-1", timeout_seconds=1)]
    assert now == [("ADDED", "web-1")]


def test_watch_sees_live_changes_and_bookmarks(kube_emulator: KubeEmulator, v1: client.CoreV1Api) -> None:
    kube_emulator.bookmark_interval_s = 0.2
    rv = v1.list_namespaced_pod(NS).metadata.resource_version
    w = watch.Watch()
    seen: list[str] = []
    creator = kubernetes.client.CoreV1Api(kube_emulator.api_client())
    for event in w.stream(v1.list_namespaced_pod, NS, resource_version=rv, allow_watch_bookmarks=True,
                          timeout_seconds=5):
        seen.append(event["type"])
        if event["type"] == "BOOKMARK" and "ADDED" not in seen:
            creator.create_namespaced_pod(NS, pod("late", command=["true"]))
        if "ADDED" in seen:
            w.stop()
    assert seen[0] == "BOOKMARK" and seen[-1] == "ADDED"


def test_too_old_resource_version_is_410_expired(v1: client.CoreV1Api) -> None:
    emu = KubeEmulator(history_size=5).start()
    try:
        api = client.CoreV1Api(emu.api_client())
        first_rv = api.list_namespaced_pod(NS).metadata.resource_version
        for i in range(10):
            api.create_namespaced_pod(NS, pod(f"p{i}", command=["true"]))
        with pytest.raises(ApiException) as err:
            list(watch.Watch().stream(api.list_namespaced_pod, NS, resource_version=first_rv, timeout_seconds=1))
        assert err.value.status == 410 and "too old resource version" in str(err.value.reason)
        # Recovery as clients do it: re-list, then watch from the list's resourceVersion.
        fresh = api.list_namespaced_pod(NS)
        assert len(fresh.items) == 10
        assert list(watch.Watch().stream(api.list_namespaced_pod, NS, resource_version=fresh.metadata.resource_version,
                                         timeout_seconds=1)) == []
    finally:
        emu.stop()


def test_owner_reference_garbage_collection(kube_emulator: KubeEmulator, v1: client.CoreV1Api) -> None:
    owner = v1.create_namespaced_pod(NS, pod("jupyter", command=["true"]))

    def ref(obj: Any, kind: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": kind, "name": obj.metadata.name, "uid": obj.metadata.uid}

    svc = v1.create_namespaced_service(NS, {**service("head", {"app": "x"}, 6379),
                                            "metadata": {"name": "head", "ownerReferences": [ref(owner, "Pod")]}})
    v1.create_namespaced_secret(NS, {"metadata": {"name": "tok", "ownerReferences": [ref(svc, "Service")]},
                                     "stringData": {"t": "x"}})
    v1.create_namespaced_secret(NS, {"metadata": {"name": "kept"}, "stringData": {"t": "x"}})
    v1.delete_namespaced_pod("jupyter", NS)
    wait_until(lambda: not v1.list_namespaced_service(NS).items, what="service collected")
    wait_until(lambda: [s.metadata.name for s in v1.list_namespaced_secret(NS).items] == ["kept"],
               what="secret collected transitively")

    orphan_owner = v1.create_namespaced_pod(NS, pod("owner2", command=["true"]))
    v1.create_namespaced_secret(NS, {"metadata": {"name": "orphan", "ownerReferences": [ref(orphan_owner, "Pod")]},
                                     "stringData": {"t": "x"}})
    v1.delete_namespaced_pod("owner2", NS, propagation_policy="Orphan")
    assert kube_emulator.wait_idle()
    assert v1.read_namespaced_secret("orphan", NS).metadata.owner_references is None

    v1.create_namespaced_secret(NS, {"metadata": {"name": "dangling", "ownerReferences": [
        {"apiVersion": "v1", "kind": "Pod", "name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"}]}})
    wait_until(lambda: "dangling" not in {s.metadata.name for s in v1.list_namespaced_secret(NS).items},
               what="object with an absent owner collected")


def test_namespace_deletion_cascades(v1: client.CoreV1Api) -> None:
    v1.create_namespace(namespace("alice"))
    v1.create_namespaced_pod("alice", pod("p", command=["true"]))
    v1.create_namespaced_secret("alice", {"metadata": {"name": "s"}})
    assert v1.delete_namespace("alice")["status"]["phase"] == "Terminating"  # typed "object" by this client
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod("alice", pod("q", command=["true"]))
    assert err.value.status in (403, 404)
    wait_until(lambda: "alice" not in {n.metadata.name for n in v1.list_namespace().items}, what="namespace gone")
    assert v1.list_pod_for_all_namespaces().items == []
    v1.create_namespace(namespace("alice"))
    assert v1.list_namespaced_secret("alice").items == []


def test_fault_injection_and_request_log(kube_emulator: KubeEmulator, v1: client.CoreV1Api) -> None:
    fault = kube_emulator.inject(method="POST", path_regex=r"/pods$", status=500, times=2)
    attempts = 0
    while True:
        attempts += 1
        try:
            v1.create_namespaced_pod(NS, pod("once", command=["true"]))
            break
        except ApiException as exc:
            assert exc.status == 500 and status_body(exc)["reason"] == "InternalError"
    assert attempts == 3 and fault.hits == 2 and fault.exhausted
    posts = kube_emulator.requests("POST", r"/pods$")
    assert [r.status for r in posts] == [500, 500, 201]
    assert len(v1.list_namespaced_pod(NS).items) == 1

    kube_emulator.inject(method="GET", path_regex=r"/pods/once$", status=None, delay_s=0.5)
    began = time.monotonic()
    assert v1.read_namespaced_pod("once", NS).metadata.name == "once"
    assert time.monotonic() - began >= 0.5

    # 429 + Retry-After: urllib3 under the official client waits and retries by itself ...
    kube_emulator.clear_requests()
    kube_emulator.inject(method="GET", path_regex=r"/pods$", status=429, retry_after_s=1)
    assert len(v1.list_namespaced_pod(NS).items) == 1
    assert [r.status for r in kube_emulator.requests("GET", r"/pods$")] == [429, 200]
    # ... and with retries off the caller sees the Status and the header.
    cfg = kube_emulator.configuration()
    cfg.retries = False
    kube_emulator.inject(method="GET", path_regex=r"/pods$", status=429, retry_after_s=3)
    with pytest.raises(ApiException) as busy:
        client.CoreV1Api(client.ApiClient(cfg)).list_namespaced_pod(NS)
    assert busy.value.status == 429 and busy.value.headers["Retry-After"] == "3"
    assert status_body(busy.value)["details"]["retryAfterSeconds"] == 3
    kube_emulator.inject(method="PATCH", status=409, times=1)
    with pytest.raises(ApiException) as conflict:
        v1.patch_namespaced_pod("once", NS, {"metadata": {"labels": {"x": "y"}}})
    assert conflict.value.status == 409 and status_body(conflict.value)["reason"] == "Conflict"


def test_bearer_token(kube_emulator: KubeEmulator) -> None:
    wrong = kube_emulator.kubeconfig()
    wrong["users"][0]["user"]["token"] = "wrong"
    cfg = client.Configuration()
    kubernetes.config.load_kube_config_from_dict(wrong, client_configuration=cfg)
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(client.ApiClient(cfg)).list_namespaced_pod(NS)
    assert err.value.status == 401
    kube_emulator.require_token = True
    assert client.CoreV1Api(kube_emulator.api_client()).list_namespaced_pod(NS).items == []


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_lists_and_deletes(kube_config_file: Path, v1: client.CoreV1Api, tmp_path: Path) -> None:
    v1.create_namespace(namespace("team"))
    v1.create_namespaced_pod("team", pod("ray-head", {"app": "x"}, ["true"]))
    v1.create_namespaced_pod("team", pod("other", {"app": "y"}, ["true"]))
    v1.create_namespaced_service("team", service("ray-head", {"app": "x"}, 6379))
    v1.create_namespaced_secret("team", {"metadata": {"name": "ray-token"}, "stringData": {"t": "x"}})

    def kubectl(*args: str) -> str:
        done = subprocess.run(["kubectl", "--kubeconfig", str(kube_config_file), "--cache-dir", str(tmp_path / "c"),
                               *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = json.loads(kubectl("get", "pods", "-n", "team", "-l", "app=x", "-o", "json"))
    assert [i["metadata"]["name"] for i in listed["items"]] == ["ray-head"]
    table = kubectl("get", "pods,services,secrets", "-n", "team")
    assert "pod/ray-head" in table and "service/ray-head" in table and "secret/ray-token" in table
    kubectl("delete", "pod", "other", "-n", "team")
    assert [p.metadata.name for p in v1.list_namespaced_pod("team").items] == ["ray-head"]
