"""The Kubernetes backend's API use when the apiserver misbehaves, against the real control
plane (tests/kube) through the fault proxy: the Pod cache's watch cut off and expired (410),
creates retried after 500/429/503 without duplicate Pods, a create whose answer was lost found
again by its 409, a refusal (403) named with the Role's missing rule, a name taken by another
server, logs that do not answer, and removal and deletion that are safe twice.
See tests/kube/backend_helpers.py for who is who and how addresses work here."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import anyio
import kubernetes
import pytest
from kubernetes.client import ApiClient, CoreV1Api, V1ObjectMeta, V1Pod

from jupyter_raykube.backends.base import BackendError, ClusterNotFound
from jupyter_raykube.backends.k8s_api import PermissionDenied
from jupyter_raykube.backends.k8s_watch import PodReflector
from jupyter_raykube.errors import ClusterExistsError
from jupyter_raykube.spec import ClusterSpec, WorkerGroup
from tests.kube.backend_helpers import (
    assert_api_use_is_clean,
    close_backend,
    created_pods,
    kubectl_objects,
    make_backend,
    pods_path,
)
from tests.kube.controlplane import ControlPlane
from tests.kube.faultproxy import FaultProxy
from tests.kube.helpers import pod as pod_manifest
from tests.kube.helpers import restricted, wait_until

pytestmark = pytest.mark.k8s


def _pod(name: str, version: int, deleting: bool = False) -> V1Pod:
    meta = V1ObjectMeta(name=name, resource_version=str(version),
                        deletion_timestamp=datetime.now(timezone.utc) if deleting else None)
    return V1Pod(metadata=meta)


def test_pod_cache_keeps_the_newest_version_and_remembers_deletions() -> None:
    cache = PodReflector(CoreV1Api(ApiClient()), "default", "app=x")  # not started: only the cache
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


def test_pod_cache_lists_again_when_its_watch_expires(kube_config_file: Path, kube_fault_proxy: FaultProxy,
                                                      v1: CoreV1Api, ns: str) -> None:
    """The watch is cut off while Pods change, and the next one is told its resourceVersion
    is too old (410 Gone, as after etcd compaction): the cache lists again and catches up."""
    api_client = kubernetes.config.new_client_from_config(config_file=str(kube_config_file))
    cache = PodReflector(CoreV1Api(api_client), ns, "app=ray", request_timeout_s=5, watch_timeout_s=1).start()
    try:
        wait_until(cache.first_load.is_set, what="the first list")
        v1.create_namespaced_pod(ns, restricted(pod_manifest("a", {"app": "ray"}, ["sleep", "inf"])))
        wait_until(lambda: cache.get("a"), what="the watch to see Pod a")
        outage = kube_fault_proxy.inject("GET", r"/pods$", query_regex="watch=true", status=503, times=None)
        wait_until(lambda: outage.hits, what="the watch to be cut off")
        for name in "bcdefg":
            v1.create_namespaced_pod(ns, restricted(pod_manifest(name, {"app": "ray"}, ["sleep", "inf"])))
        v1.delete_namespaced_pod("a", ns)
        expired = kube_fault_proxy.inject("GET", r"/pods$", query_regex="watch=true", status=410, reason="Expired",
                                          message="too old resource version: 1 (2)", times=1)
        outage.remove()
        wait_until(lambda: sorted(p.metadata.name for p in cache.pods()) == list("bcdefg"), timeout_s=30,
                   what="the cache to catch up")
        assert expired.hits == 1 and cache.lists == 2 and cache.last_error == ""
    finally:
        cache.stop()
        api_client.close()


def test_api_faults_are_retried_without_duplicate_pods(kube_config_file: Path, kube_fault_proxy: FaultProxy,
                                                       kube_control_plane: ControlPlane, v1: CoreV1Api,
                                                       ns: str) -> None:
    proxy, pods = kube_fault_proxy, pods_path(ns)
    backend = make_backend(kube_config_file, address_type="service", request_timeout=0.5, retry_timeout=20.0)
    spec = ClusterSpec(name="k-faults", backend="kubernetes", groups=(WorkerGroup("cpu", max=9),))
    group = spec.groups[0]

    async def scenario() -> None:
        handle = await backend.create_cluster(spec, owner="alice", token="t0ken")
        assert handle.address == f"k-faults-head-svc.{ns}.svc.cluster.local:{backend.gcs_port}"
        created = []

        proxy.inject("POST", pods, status=500, times=2)
        created.append(await backend.create_worker(handle, group))

        proxy.inject("POST", pods, status=429, retry_after_s=1, times=1)
        started = time.monotonic()
        created.append(await backend.create_worker(handle, group))
        assert time.monotonic() - started >= 1.0, "Retry-After was not honoured"

        # A conflict for a Pod that does not exist, then a create that the apiserver carries out
        # but whose answer is lost, then two 503s: the retry that finally gets through is told
        # the Pod exists (the apiserver's own 409), finds it carries our labels, and takes it.
        proxy.inject("POST", pods, status=409, times=1)
        lost = proxy.inject("POST", pods, lose_answer=True, times=1)
        proxy.inject("POST", pods, status=503, times=2)
        created.append(await backend.create_worker(handle, group))
        assert lost.hits == 1

        workers = v1.list_namespaced_pod(ns, label_selector="raykube.io/cluster=k-faults,raykube.io/node-type=worker")
        assert sorted(p.metadata.name for p in workers.items) == sorted(n.name for n in created)
        posts = proxy.requests("POST", pods)
        assert created_pods(proxy, ns) == 1 + 3  # the head + one per worker, no duplicates
        assert [r.status for r in posts if r.status == 409 and not r.fault] == [409]  # the lost create, found
        listed = await backend.list_nodes(handle)
        assert sorted(n.name for n in listed if n.group == "cpu") == sorted(n.name for n in created)

        proxy.inject("POST", pods, status=403, times=1, message='pods is forbidden: User '
                     f'"system:serviceaccount:{ns}:jupyter-raykube" cannot create resource "pods"')
        with pytest.raises(PermissionDenied, match=rf"may not create pods/k-faults-cpu-\w{{5}} in namespace "
                                                   rf"{ns} .*deploy/rbac.yaml \(verb 'create' on 'pods'\)"):
            await backend.create_worker(handle, group)

        # A second server cannot take the name; the first cluster is left alone.
        other, refused = (make_backend(kube_config_file, address_type="service") for _ in range(2))
        try:
            with pytest.raises(ClusterExistsError, match=f"'k-faults' already exists in namespace {ns}"):
                await other.create_cluster(spec, owner="alice", token="t0ken")
            assert len(await backend.list_nodes(handle)) == 1 + 3
            # One that may not list Pods is told so at once, not after retry_timeout.
            proxy.inject("GET", pods, status=403, times=None)
            with pytest.raises(PermissionDenied, match=rf"could not list Pods in namespace {ns}: permission "
                                                       r"denied: the service account may not list pods"):
                with anyio.fail_after(10):
                    await refused.list_nodes(handle)
            proxy.clear_faults()
        finally:
            await other.close()
            await refused.close()

        backend.retry_timeout = 1.0
        proxy.inject("GET", r"/log$", status=503, times=None)
        with pytest.raises(BackendError, match=rf"did not answer get pods/log/\S+ in namespace {ns} for 1 s"):
            await backend.logs(handle, created[0].name)
        proxy.clear_faults()
        backend.retry_timeout = 20.0

        await backend.remove_node(handle, created[0].name)
        assert created[0].name not in {n.name for n in await backend.list_nodes(handle)}  # at once, from the cache
        await backend.remove_node(handle, created[0].name)  # already gone: fine
        await backend.delete_cluster(handle)
        await backend.delete_cluster(handle)  # safe twice
        with pytest.raises(ClusterNotFound):
            await backend.list_nodes(handle)
        assert kubectl_objects(kube_control_plane, ns, "k-faults") == []

    try:
        anyio.run(scenario)
    finally:
        close_backend(backend)
    assert_api_use_is_clean(proxy)
