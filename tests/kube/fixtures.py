"""pytest fixtures for the Kubernetes tests, registered for the whole suite by ``pytest_plugins``
in ``tests/conftest.py`` (so every module shares the session's one control plane).

* ``kube_control_plane`` (session): etcd, kube-apiserver, kube-controller-manager, kube-scheduler.
* ``make_kube_namespace`` / ``kube_namespace``: fresh namespaces, so tests never see each other's objects.
* ``kube_fault_proxy``: the fault-injecting proxy in front of the apiserver.
* ``process_kubelet``: the default node pools served by a process kubelet; ``running_kubelet``
  for other pools or hooks. Function-scoped: each test gets fresh Nodes, and teardown fails on a
  leaked process or an error in the kubelet's threads.
* ``kube_admin``: an admin client for a test's own setup and checks (never the code under test's).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterator

import kubernetes
import pytest

from .controlplane import ControlPlane
from .faultproxy import FaultProxy
from .kubelet import ProcessKubelet, default_base_env


# --- the real control plane (tests/kube/controlplane.py) -----------------------------------------

def _progress(config: pytest.Config) -> Callable[[str], None]:
    """Print outside pytest's capture: a first build takes minutes and should not look hung."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")

    def progress(message: str) -> None:
        with capture.global_and_fixture_disabled():
            if reporter is not None:
                reporter.write_line(message)
            else:
                print(message, file=sys.stderr, flush=True)

    return progress


@pytest.fixture(scope="session")
def kube_control_plane(pytestconfig: pytest.Config) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler, once per session (builds
    the binaries first if the cache lacks them); stopped by PID at the end, failing on leftovers."""
    plane = ControlPlane(progress=_progress(pytestconfig)).start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def make_kube_namespace(kube_control_plane: ControlPlane) -> Iterator[Callable[..., str]]:
    """``make(prefix="test", labels=None) -> name``: fresh namespaces, deleted after the test."""
    made: list[str] = []

    def make(prefix: str = "test", labels: dict[str, str] | None = None) -> str:
        made.append(kube_control_plane.new_namespace(prefix, labels))
        return made[-1]

    yield make
    for name in made:
        kube_control_plane.delete_namespace(name)


@pytest.fixture
def kube_namespace(make_kube_namespace: Callable[..., str], request: pytest.FixtureRequest) -> str:
    """A fresh namespace named after the test, deleted after it."""
    return make_kube_namespace(request.node.name)


@pytest.fixture
def kube_fault_proxy(kube_control_plane: ControlPlane) -> Iterator[FaultProxy]:
    """A fault-injecting plain-HTTP proxy to the control plane's apiserver (``.url``, ``.inject``)."""
    with FaultProxy(kube_control_plane.url, kube_control_plane.ca_file) as proxy:
        yield proxy


# --- the process kubelet (tests/kube/kubelet.py) ----------------------------------------------

def venv_path() -> str:
    """``PATH`` with this interpreter's bin directory first, so Pods' ``python``/``ray`` are the venv's."""
    return os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")])


def running_kubelet(control_plane: ControlPlane, **options: Any) -> Iterator[ProcessKubelet]:
    """A started kubelet; afterwards kills its processes and fails on leaks or kubelet errors.
    For fixtures that need options (`yield from running_kubelet(cp, pools=..., rewrite_argv=...)`)."""
    kubelet = ProcessKubelet(control_plane, base_env=default_base_env(venv_path()), **options).start()
    try:
        yield kubelet
    finally:
        kubelet.stop()
    leftovers = kubelet.leftover_processes()
    assert not leftovers, f"processes outlived the kubelet: {[(p.pid, p.cmdline()) for p in leftovers]}"
    assert not kubelet.errors, f"kubelet errors: {kubelet.errors}"


@pytest.fixture
def process_kubelet(kube_control_plane: ControlPlane) -> Iterator[ProcessKubelet]:
    """The default pools (2 CPU nodes, 1 tainted GPU node) served by a process kubelet."""
    yield from running_kubelet(kube_control_plane)


@pytest.fixture
def kube_admin(kube_control_plane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    """An admin ``ApiClient`` for the test's own setup and checks (never for the code under test)."""
    api = kube_control_plane.admin_api_client()
    try:
        yield api
    finally:
        api.close()
