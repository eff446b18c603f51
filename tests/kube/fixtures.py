"""pytest fixtures for the Kubernetes emulator and the process kubelet.

``tests/kube/conftest.py`` re-exports them for the tests in this folder; another test folder
can use them by re-exporting the same way (or through ``pytest_plugins`` in the root
conftest). Every fixture is function-scoped: a fresh API server costs milliseconds and tests
must not see each other's objects.
"""

from __future__ import annotations

from typing import Any

import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import kubernetes
import pytest

from .controlplane import ControlPlane
from .emulator import KubeEmulator
from .faultproxy import FaultProxy
from .kubelet import ProcessKubelet, default_base_env


def venv_path() -> str:
    """``PATH`` with this interpreter's bin directory first, so Pods' ``python``/``ray`` are the venv's."""
    return os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")])


@pytest.fixture
def kube_emulator() -> Iterator[KubeEmulator]:
    """A running emulator; stopped (watches closed, port released) at teardown."""
    emu = KubeEmulator().start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def kube_config_file(kube_emulator: KubeEmulator, tmp_path: Path) -> Path:
    """A kubeconfig for the emulator (server ``http://127.0.0.1:PORT``, token user)."""
    return kube_emulator.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kube_api_client(kube_emulator: KubeEmulator) -> Iterator[kubernetes.client.ApiClient]:
    """An official-client ``ApiClient`` configured through the kubeconfig loader."""
    client = kube_emulator.api_client()
    try:
        yield client
    finally:
        client.close()


def running_kubelet(emulator: KubeEmulator, **options: Any) -> Iterator[ProcessKubelet]:
    """A started kubelet; afterwards kills its processes and fails on leaks or kubelet errors.
    For fixtures that need kubelet options (`yield from running_kubelet(emu, rewrite_argv=...)`)."""
    kubelet = ProcessKubelet(emulator, base_env=default_base_env(venv_path()), **options).start()
    try:
        yield kubelet
    finally:
        kubelet.stop()
    leftovers = kubelet.leftover_processes()
    assert not leftovers, f"processes outlived the kubelet: {[(p.pid, p.cmdline()) for p in leftovers]}"
    assert not kubelet.errors, f"kubelet errors: {kubelet.errors}"


@pytest.fixture
def process_kubelet(kube_emulator: KubeEmulator) -> Iterator[ProcessKubelet]:
    """A started kubelet on the emulator; teardown kills its processes and fails on leaks or errors."""
    yield from running_kubelet(kube_emulator)


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
