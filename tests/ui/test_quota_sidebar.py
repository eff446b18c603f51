"""The namespace quota in the sidebar, in real Chromium against a real Lab whose server runs the
Kubernetes backend on the test control plane (tests/kube) as deploy/rbac.yaml's ServiceAccount,
in a namespace holding the JupyterHub hook's ResourceQuota: the card shows the same line as the
widget and `%raycluster status` (formatting.quota_text / format.ts formatQuota)."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoreV1Api

from jupyter_raykube.hub_namespace import quota_hard, quota_manifest
from jupyter_raykube.policy import QUOTA_NAME, Policy
from tests.kube.backend_helpers import RESTRICTED, backend_settings, kubectl_objects
from tests.kube.controlplane import ControlPlane
from tests.kube.faultproxy import FaultProxy
from tests.kube.helpers import wait_until
from tests.kube.identity import backend_kubeconfig
from tests.kube.kubelet import ProcessKubelet

from .conftest import lab_page, running_lab
from .helpers import shot

pytestmark = pytest.mark.k8s
START_TIMEOUT_MS = 180_000  # the head Pod scheduled, started by the process kubelet, Ray up


@pytest.fixture
def ns(make_kube_namespace: Callable[..., str]) -> str:
    return make_kube_namespace("uiquota", RESTRICTED)


def test_the_sidebar_card_shows_the_namespace_quota(
        browser: Any, ray_kubelet: ProcessKubelet, kube_control_plane: ControlPlane, kube_fault_proxy: FaultProxy,
        kube_admin: ApiClient, ns: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    v1 = CoreV1Api(kube_admin)
    hard = quota_hard(Policy(max_cpus=8, max_gpus=1, max_clusters=1, max_workers=2), server_requests={},
                      max_memory_bytes=None, accelerators=("nvidia.com/gpu",))
    v1.create_namespaced_resource_quota(ns, quota_manifest(ns, hard, {"raykube.io/owner": "alice"}))
    wait_until(lambda: v1.read_namespaced_resource_quota(QUOTA_NAME, ns).status.hard, timeout_s=30,
               what="the quota controller to count the namespace")
    kubeconfig = backend_kubeconfig(kube_control_plane, ns, tmp_path / "kubeconfig", server=kube_fault_proxy.url)
    config = {"KubernetesBackend": backend_settings(kubeconfig), "ClusterManager": {"owner": "alice"}}
    with running_lab(config, name="jupyter-lab-k8s-quota") as lab:
        status, body = lab.api("POST", "raykube/api/clusters",
                               {"name": "k-uiquota", "backend": "kubernetes", "groups": [{"name": "cpu", "max": 0}]})
        assert status == 202, body
        try:
            with contextmanager(lab_page)(browser, lab, request) as page:
                page.locator('.jp-SideBar .lm-TabBar-tab[data-id="raykube-sidebar"]').click()
                card = page.locator('#raykube-sidebar section[data-cluster="k-uiquota"][data-state="running"]')
                card.wait_for(timeout=START_TIMEOUT_MS)
                line = card.locator(".jp-RayKube-quota")
                line.wait_for()
                # the head Pod alone: its CPUs (the head's container) of 8, no GPU, 1 of the 4 Pods
                assert re.fullmatch(r"Quota: 0 of 1 GPUs used, \d+ of 8 CPUs, 1 of 4 pods", line.inner_text()), \
                    line.inner_text()
                assert line.get_attribute("title") == (f"ResourceQuota raykube of namespace {ns}: what all your "
                                                       f"Pods may request")
                shot(page, "quota-sidebar")
        finally:
            status, body = lab.api("DELETE", "raykube/api/clusters/k-uiquota", timeout=120)
            assert status in (204, 404), body
    assert kubectl_objects(kube_control_plane, ns, "k-uiquota") == []
    wait_until(lambda: not ray_kubelet.leftover_processes(), timeout_s=60, what="every Ray process to exit")
