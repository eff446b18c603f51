"""Shared fixtures: an isolated Jupyter runtime dir, a local-backend manager, and a
session-wide check that fails the run if any test leaves Ray processes of ours behind."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
import yaml

from jupyter_raykube.backends import processes

if TYPE_CHECKING:
    from jupyter_raykube.blocking import BlockingManager

# The Kubernetes fixtures are registered here, once, so every module shares the session's one
# control plane (a fixture imported into a test module would be that module's own); the
# KubernetesBackend tests' own fixtures (ns, kube_config_file, v1, ray_kubelet...) likewise.
pytest_plugins = ["pytest_jupyter.jupyter_server", "tests.kube.fixtures", "tests.kube.backend_fixtures"]
T = TypeVar("T")

_runtime = Path(os.environ.get("RAYKUBE_TEST_RUNTIME", "/tmp")) / f"raykube-tests-{os.getpid()}"
# Every process this session starts inherits this tag, so the leak check below counts (and
# kills) only this session's processes, never those of another test run on the same machine.
SESSION_TAG = "JUPYTER_RAYKUBE_TEST_SESSION"


def pytest_configure(config: pytest.Config) -> None:
    """The session's environment, set once pytest runs (not when this module is imported)."""
    os.environ["JUPYTER_RUNTIME_DIR"] = str(_runtime)  # every process the tests start inherits it
    os.environ[SESSION_TAG] = uuid.uuid4().hex
    # Run from a terminal of a Jupyter server with the extension, the tests would otherwise
    # send their clusters to that server.
    for inherited in ("RAYKUBE_SERVER_URL", "RAYKUBE_SERVER_TOKEN", "RAYKUBE_BACKEND", "RAYKUBE_POLICY"):
        os.environ.pop(inherited, None)


def _ours() -> set[int]:
    return {p.pid for p in processes.find_marked(SESSION_TAG, os.environ[SESSION_TAG])
            if p.pid in {q.pid for q in processes.find_marked(processes.CLUSTER_MARKER)}}


@pytest.hookimpl(trylast=True)  # after pytest's own hook has torn down session fixtures (e.g. on -x)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a Ray process started by these tests is still alive."""
    leaked = _ours()
    if leaked:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"LEAK: {len(leaked)} Ray processes started by the tests are still running: "
            f"{sorted(leaked)}; killing them", red=True)
        for pid in leaked:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def offline_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubeconfig whose server nobody answers (context namespace "ray-users"), outside any
    Pod: enough to build a KubernetesBackend and read its objects and settings without a cluster."""
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "ray-users"}}]}))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return config


@pytest.fixture(scope="session")
def runtime_dir() -> Path:
    return _runtime


def wait_for(predicate: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def read_until_ready(proc: subprocess.Popen[str]) -> str:
    """What a helper process printed up to and including its "READY ..." line (all of it, if
    it ended without one), for the caller to check and to show on failure."""
    assert proc.stdout is not None
    output = []
    for line in proc.stdout:
        output.append(line)
        if line.startswith("READY"):
            break
    return "".join(output)


def cluster_processes(uid: str) -> list[int]:
    """PIDs of every live process belonging to the cluster with this uid."""
    return [p.pid for p in processes.find_marked(processes.CLUSTER_MARKER, uid)]


@pytest.fixture
def blocking_manager() -> Iterator[BlockingManager]:
    from jupyter_raykube.blocking import BlockingManager

    manager = BlockingManager()
    yield manager
    manager.close()
