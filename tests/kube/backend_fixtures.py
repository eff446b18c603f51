"""pytest fixtures of the KubernetesBackend tests, registered for the whole suite by
``pytest_plugins`` in ``tests/conftest.py`` (as ``fixtures.py`` is), so that the test modules
that share them use them by name and never import them. A module may override one (its own
``ns``, say) by defining a fixture of the same name.

* ``ns``: the test's namespace, enforcing Pod Security "restricted".
* ``kube_config_file``: the backend's kubeconfig (deploy/rbac.yaml's ServiceAccount, through
  the fault proxy).
* ``v1``: the admin's CoreV1Api, for a test's own setup and checks.
* ``ray_kubelet``: the default pools, each Ray node on its own ports (``own_ports``).
* ``silent_kubelet``: one Node whose kubelet never starts its Pods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, CoreV1Api

from .backend_helpers import RESTRICTED, own_ports
from .controlplane import ControlPlane
from .faultproxy import FaultProxy
from .fixtures import running_kubelet
from .identity import backend_kubeconfig
from .kubelet import ProcessKubelet
from .nodes import NodePool


@pytest.fixture
def ns(make_kube_namespace: Callable[..., str], request: pytest.FixtureRequest) -> str:
    """The test's namespace, enforcing Pod Security "restricted"."""
    return make_kube_namespace(request.node.name.removeprefix("test_"), RESTRICTED)


@pytest.fixture
def kube_config_file(kube_control_plane: ControlPlane, ns: str, kube_fault_proxy: FaultProxy,
                     tmp_path: Path) -> Path:
    """The backend's kubeconfig: deploy/rbac.yaml's ServiceAccount, through the fault proxy."""
    return backend_kubeconfig(kube_control_plane, ns, tmp_path / "kubeconfig", server=kube_fault_proxy.url)


@pytest.fixture
def v1(kube_admin: ApiClient) -> CoreV1Api:
    return CoreV1Api(kube_admin)


@pytest.fixture
def ray_kubelet(kube_control_plane: ControlPlane) -> Iterator[ProcessKubelet]:
    """`process_kubelet` with per-node ports (see `own_ports`), same teardown checks."""
    yield from running_kubelet(kube_control_plane, rewrite_argv=own_ports)


@pytest.fixture
def silent_kubelet(kube_control_plane: ControlPlane) -> Iterator[ProcessKubelet]:
    """One Node whose kubelet never starts its Pods: they stay Pending with nothing in their
    status, which is when the backend reads their Events."""
    yield from running_kubelet(kube_control_plane, pools=[NodePool("hung", count=1, serve_pods=False)])
