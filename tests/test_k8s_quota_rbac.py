"""What the namespace and the Role allow, against the real control plane (tests/kube): a
ResourceQuota that holds the head but not a worker, and the hub's GPU quota of one whatever the
user's own policy says (the apiserver's "exceeded quota" in the snapshot, the group backed off,
nothing asked again); and deploy/rbac.yaml, whose every rule some call of a server's life needs
(the backend calls nothing else). See tests/kube/backend_helpers.py for who is who and how
addresses work here."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import ray
from kubernetes.client import CoreV1Api
from traitlets.config import Config

from jupyter_raykube.backends.base import BackendError, ClusterNotFound
from jupyter_raykube.backends.kubernetes import KubernetesBackend
from jupyter_raykube.connect import connect_driver
from jupyter_raykube.display import status_lines
from jupyter_raykube.formatting import quota_text
from jupyter_raykube.hub_namespace import quota_hard, quota_manifest
from jupyter_raykube.policy import QUOTA_NAME, Policy
from jupyter_raykube.spec import ClusterSpec, WorkerGroup
from tests.kube.backend_helpers import (
    API_PATH,
    RESTRICTED,
    ROLE,
    SMALL,
    autoscaled,
    calls_made,
    close_backend,
    created_pods,
    events_of,
    hold_gpu,
    make_backend,
    pods_path,
    snapshot_of,
    stop_and_check_clean,
    where,
    worker_pods,
)
from tests.kube.controlplane import ControlPlane
from tests.kube.faultproxy import FaultProxy
from tests.kube.helpers import pod as pod_manifest
from tests.kube.helpers import restricted, wait_until
from tests.kube.identity import backend_kubeconfig
from tests.kube.kubelet import ProcessKubelet

pytestmark = pytest.mark.k8s


def test_a_worker_over_the_namespace_quota_is_explained_and_not_retried(
        ray_kubelet: ProcessKubelet, kube_config_file: Path, kube_fault_proxy: FaultProxy,
        kube_control_plane: ControlPlane, v1: CoreV1Api, ns: str) -> None:
    """A ResourceQuota (as the JupyterHub policy gives each user) that holds the head but not a
    worker: the apiserver's "exceeded quota" reaches the snapshot, the group backs off instead of
    asking again every round, and stopping leaves nothing behind."""
    v1.create_namespaced_resource_quota(ns, {"metadata": {"name": "ray-quota"}, "spec": {"hard": {"pods": "1"}}})
    wait_until(lambda: v1.read_namespaced_resource_quota("ray-quota", ns).status.hard, timeout_s=30,
               what="the quota controller to count the namespace")
    spec = ClusterSpec(name="k-quota", backend="kubernetes", groups=(WorkerGroup("cpu", cpus=1, max=2, **SMALL),))
    with autoscaled(kube_config_file, manager={"backoff_s": 300.0}) as bm:
            cluster = bm.call(bm.manager.create, spec)
            connect_driver(cluster.handle.address, bm.manager.token)
            ref = where.remote(0)  # demand for a cpu node
            backoff = wait_until(lambda: events_of(bm, cluster, "backoff"), timeout_s=60, what="the group to back off")
            assert len(backoff) == 1 and backoff[0].startswith(
                "backing off the cpu group for 300 s: could not create a cpu node: the namespace's ResourceQuota "
                "refused"), backoff
            assert 'is forbidden: exceeded quota: ray-quota, requested: pods=1, used: pods=1, limited: pods=1' \
                in backoff[0]
            time.sleep(3)  # six more autoscaler rounds: none of them asks again
            refused = [r for r in kube_fault_proxy.requests("POST", pods_path(ns)) if r.status == 403]
            assert len(refused) == 1 and created_pods(kube_fault_proxy, ns) == 1  # the head only
            assert not events_of(bm, cluster, "error")
            ray.cancel(ref, force=True)
            stop_and_check_clean(bm, "k-quota", kube_control_plane, ns, ray_kubelet)
            wait_until(lambda: v1.read_namespaced_resource_quota("ray-quota", ns).status.used == {"pods": "0"},
                       timeout_s=30, what="the quota to be free again")
    assert calls_made(kube_fault_proxy) <= ROLE


def test_a_gpu_quota_of_one_holds_the_second_gpu_worker_whatever_the_users_own_policy(
        ray_kubelet: ProcessKubelet, kube_config_file: Path, kube_fault_proxy: FaultProxy,
        kube_control_plane: ControlPlane, v1: CoreV1Api, ns: str) -> None:
    """The hub hook's ResourceQuota (its own builders, from a policy of 1 GPU) in the user's
    namespace, and a server whose own config raises its policy to 8 GPUs: two GPU tasks ask a
    gpu group that may grow to 2 for two workers. The apiserver admits the first Pod and refuses
    the second; the pending task's reason quotes the quota, and the quota line, which every
    front-end shows, reads 1 of 1 GPUs used."""
    hard = quota_hard(Policy(max_gpus=1, max_clusters=1, max_workers=2), server_requests={},
                      max_memory_bytes=None, accelerators=("nvidia.com/gpu",))
    v1.create_namespaced_resource_quota(ns, quota_manifest(ns, hard, {"raykube.io/owner": "alice"}))
    wait_until(lambda: v1.read_namespaced_resource_quota(QUOTA_NAME, ns).status.hard, timeout_s=30,
               what="the quota controller to count the namespace")
    raised = Config({"ClusterManager": {"policy": {"max_gpus": 8}}})  # the user's jupyter_server_config.py
    spec = ClusterSpec(name="k-gpuq", backend="kubernetes",
                       groups=(WorkerGroup("gpu", cpus=1, gpus=1, max=2, **SMALL),))
    with autoscaled(kube_config_file, manager={"backoff_s": 300.0, "config": raised}) as bm:
        cluster = bm.call(bm.manager.create, spec)
        assert snapshot_of(bm, cluster)["policy"]["max_gpus"] == 8  # the user's server lets it through
        connect_driver(cluster.handle.address, bm.manager.token)
        refs = [hold_gpu.remote(600) for _ in range(2)]

        def quoted() -> dict[str, Any] | None:
            snap = snapshot_of(bm, cluster)
            pending = [d for d in snap["demand"] if "exceeded quota" in d["reason"]]
            used = quota_text(snap["quota"]).startswith("1 of 1 GPUs used")
            return snap if pending and used and snap["groups"][0]["nodes"] == 1 else None

        snap = wait_until(quoted, timeout_s=240, interval_s=0.5, what="one GPU worker running and the second one refused")
        [pending] = [d for d in snap["demand"] if "exceeded quota" in d["reason"]]
        assert pending["count"] == 1 and pending["shape"] == {"CPU": 1.0, "GPU": 1.0}, pending
        assert pending["reason"].startswith("gpu group is backed off: could not create a gpu node: the namespace's "
                                            "ResourceQuota refused to create pods/k-gpuq-gpu-"), pending["reason"]
        assert ("is forbidden: exceeded quota: raykube, requested: requests.nvidia.com/gpu=1, used: "
                "requests.nvidia.com/gpu=1, limited: requests.nvidia.com/gpu=1") in pending["reason"]
        assert snap["quota"]["namespace"] == ns
        assert quota_text(snap["quota"]) == "1 of 1 GPUs used, 2 of 4 pods"  # the head and one gpu worker
        assert "  quota: 1 of 1 GPUs used, 2 of 4 pods" in status_lines(snap)  # %raycluster status
        assert len(worker_pods(v1, ns, "k-gpuq", "gpu")) == 1
        refused = [r for r in kube_fault_proxy.requests("POST", pods_path(ns)) if r.status == 403]
        assert len(refused) == 1 and created_pods(kube_fault_proxy, ns) == 2  # the head and one gpu worker
        for ref in refs:
            ray.cancel(ref, force=True)
        stop_and_check_clean(bm, "k-gpuq", kube_control_plane, ns, ray_kubelet)
    assert calls_made(kube_fault_proxy) <= ROLE


# --- deploy/rbac.yaml: every rule is needed --------------------------------------------------


async def _every_call(backend: KubernetesBackend, proxy: FaultProxy, ns: str) -> list[str]:
    """Each backend call a Jupyter server makes, in order; what failed (as text), not raised."""
    failures: list[str] = []
    spec = ClusterSpec(name="k-rbac", backend="kubernetes", groups=(WorkerGroup("cpu", max=1),))

    async def step(call: Awaitable[Any]) -> Any:
        try:
            return await call
        except (BackendError, ClusterNotFound, ExceptionGroup) as exc:  # a group: from deletes done in parallel
            failures.append(str(exc) if not isinstance(exc, ExceptionGroup) else "; ".join(map(str, exc.exceptions)))
            return None

    # A create of each kind whose answer is lost: the retry's 409 makes the backend read it back.
    for resource in ("secrets", "services", "pods"):
        proxy.inject("POST", rf"^/api/v1/namespaces/{ns}/{resource}$", lose_answer=True, times=1)
    proxy.inject("POST", rf"^/apis/networking\.k8s\.io/v1/namespaces/{ns}/networkpolicies$", lose_answer=True, times=1)
    handle = await step(backend.create_cluster(spec, owner="alice", token="t0ken"))
    if handle is None:
        return failures
    worker = await step(backend.create_worker(handle, spec.groups[0]))
    await step(backend.list_nodes(handle))  # Pending with an empty status: its Events are read
    await step(backend.logs(handle, "k-rbac-head"))
    await step(backend.quota())  # shown, never raised: a refusal reads as no quota
    await step(backend.discover())
    await step(backend.save_spec(handle, spec.with_group_range("cpu", 0, 2)))  # a scale's desired state
    if worker is not None:
        await step(backend.remove_node(handle, worker.name))
    await step(backend.delete_cluster(handle))
    return failures


def test_every_rule_of_deploy_rbac_yaml_is_needed(silent_kubelet: ProcessKubelet, kube_control_plane: ControlPlane,
                                                  make_kube_namespace: Callable[..., str],
                                                  kube_fault_proxy: FaultProxy, v1: CoreV1Api,
                                                  tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With the Role exactly as written, every call of a server's life succeeds; with any one
    (resource, verb) taken out, some call gets the apiserver's 403 for exactly that one. The
    quota read only feeds the display: a Role without it (an older one) breaks no call and
    logs one warning."""
    from tests.kube.identity import role_rules

    def run_with(rules: list[dict[str, Any]], label: str) -> tuple[str, list[str]]:
        kube_fault_proxy.clear_faults()
        ns = make_kube_namespace(f"rbac-{label}", RESTRICTED)
        v1.create_namespaced_pod(ns, restricted(pod_manifest("jupyter-alice", {"app": "jupyterhub"},
                                                             ["sleep", "inf"])))
        config = backend_kubeconfig(kube_control_plane, ns, tmp_path / f"{label}.kubeconfig",
                                    server=kube_fault_proxy.url, rules=rules)
        backend = make_backend(config, address_type="service", owner_pod_name="jupyter-alice", events_after_s=0.0,
                               retry_timeout=5.0, delete_wait_s=1.0,
                               node_selector={"*": {"kubernetes.io/hostname": "hung-0"}})
        try:
            return ns, anyio.run(_every_call, backend, kube_fault_proxy, ns)
        finally:
            close_backend(backend)
            # what the hung node never finishes deleting would fill it up for the next run
            v1.delete_collection_namespaced_pod(ns, grace_period_seconds=0)

    def refused_calls(ns: str) -> set[tuple[str, str]]:
        calls = set()
        for record in kube_fault_proxy.requests():
            match = API_PATH.match(record.path)
            if record.status != 403 or record.fault or not match or f"/namespaces/{ns}/" not in record.path:
                continue
            resource = match["res"] + (f"/{match['sub']}" if match["sub"] else "")
            verb = "get" if record.method == "GET" and match["name"] else (
                "watch" if "watch=" in record.query else "list") if record.method == "GET" else {
                "POST": "create", "DELETE": "delete", "PATCH": "patch"}[record.method]
            calls.add((resource, verb))
        return calls

    rules = role_rules()
    ns, failures = run_with(rules, "all")
    assert refused_calls(ns) == set() and not [f for f in failures if "permission denied" in f], failures
    assert calls_made(kube_fault_proxy) == ROLE  # every rule was used
    for rule_index, rule in enumerate(rules):
        for resource in rule["resources"]:
            for verb in rule["verbs"]:
                reduced = [dict(r) for r in rules]
                reduced[rule_index] = {**rule, "resources": [resource], "verbs": [v for v in rule["verbs"] if v != verb]}
                others = [r for r in rule["resources"] if r != resource]
                if others:
                    reduced.append({**rule, "resources": others})
                reduced = [r for r in reduced if r["verbs"]]
                ns, failures = run_with(reduced, f"{resource.replace('/', '-')}-{verb}")
                assert (resource, verb) in refused_calls(ns), f"nothing needed {verb} on {resource}"
                if resource == "resourcequotas":
                    assert failures == [], failures
    quota_warnings = [r for r in caplog.records if "Not showing the ResourceQuota raykube" in r.getMessage()]
    assert len(quota_warnings) == 1 and "may not get resourcequotas" in quota_warnings[0].getMessage()
