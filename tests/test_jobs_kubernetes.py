"""`%rayjob submit` against a Kubernetes cluster of the test control plane (tests/kube), through a
real `jupyter server` whose manager runs the Kubernetes backend as deploy/rbac.yaml's
ServiceAccount: the job goes kernel -> Jupyter REST -> the head Pod's dashboard, with no Ray
Client and no port-forward, and runs in the head Pod with the Pod's own Python."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import ray
from IPython.core.interactiveshell import InteractiveShell

from jupyter_raykube.job_client import JobClient
from jupyter_raykube.job_magics import RayJobMagics
from tests.kube.backend_helpers import RESTRICTED, backend_settings, kubectl_objects
from tests.kube.controlplane import ControlPlane
from tests.kube.faultproxy import FaultProxy
from tests.kube.helpers import wait_until
from tests.kube.identity import backend_kubeconfig
from tests.kube.kubelet import ProcessKubelet

from .test_server_process import _start_cluster, _start_server, _stop_server

pytestmark = pytest.mark.k8s


@pytest.fixture
def ns(make_kube_namespace: Callable[..., str]) -> str:
    return make_kube_namespace("rayjob", RESTRICTED)


def test_rayjob_submit_runs_in_the_head_pod_through_the_jupyter_server(
        ray_kubelet: ProcessKubelet, kube_control_plane: ControlPlane, kube_fault_proxy: FaultProxy,
        ns: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = backend_kubeconfig(kube_control_plane, ns, tmp_path / "kubeconfig", server=kube_fault_proxy.url)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(
        {"KubernetesBackend": backend_settings(kubeconfig), "ClusterManager": {"owner": "alice"}}))
    server = _start_server(tmp_path)
    try:
        _start_cluster(server, {"name": "k-job", "backend": "kubernetes", "groups": [{"name": "cpu", "max": 0}]})
        project = tmp_path / "project"
        project.mkdir()
        (project / "answer.py").write_text("VALUE = 42\n")
        shell = InteractiveShell.instance()
        shell.register_magics(RayJobMagics(shell, client=JobClient(server.url, server.token)))
        capsys.readouterr()
        shell.run_line_magic("rayjob", f"submit --cluster k-job --working-dir {project} -- python -c "
                                       "\"import os, ray, answer; print('in pod', os.environ['RAY_CLOUD_INSTANCE_ID'], "
                                       "'answer', answer.VALUE, 'ray', ray.__version__)\"")
        out = capsys.readouterr().out
        assert "in pod k-job-head answer 42 ray 2." in out and "SUCCEEDED" in out, out
        assert not ray.is_initialized()  # no Ray Client, no driver in this process
        jobs = server.api("GET", "clusters/k-job/jobs").json()["jobs"]
        assert [j["state"] for j in jobs] == ["SUCCEEDED"], jobs
        assert server.api("DELETE", "clusters/k-job").status_code == 204
        assert kubectl_objects(kube_control_plane, ns, "k-job") == []
        wait_until(lambda: not ray_kubelet.leftover_processes(), timeout_s=60, what="every Ray process to exit")
    finally:
        server.api("DELETE", "clusters/k-job")
        _stop_server(server, tmp_path / "server.log")
