"""Which backend a cluster runs on when nobody says: Kubernetes where Kubernetes is
configured (a Pod's service account, or a kubeconfig as kubectl would find it), else local
processes, so a laptop with nothing set up just works. `RAYKUBE_BACKEND` (set by the
JupyterHub hook) or a trait forces either.

Backend classes are named by import path, so choosing `local` never imports the
`kubernetes` package (two seconds of start-up)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from traitlets.utils.importstring import import_item

from ..spec import BACKENDS, SpecError
from .base import Backend

BACKEND_ENV = "RAYKUBE_BACKEND"
AUTO = "auto"
CHOICES = (AUTO, *BACKENDS)
BACKEND_CLASSES: dict[str, str] = {
    "local": "jupyter_raykube.backends.local.LocalBackend",
    "kubernetes": "jupyter_raykube.backends.kubernetes.KubernetesBackend",
}
_SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def backend_setting_from_env() -> str:
    """The default of every `backend` trait: `$RAYKUBE_BACKEND`, else auto."""
    return os.environ.get(BACKEND_ENV, "").strip().lower() or AUTO


def resolve_backend(setting: str) -> str:
    """`local` or `kubernetes` for a setting of local, kubernetes or auto."""
    choice = setting.strip().lower()
    if choice not in CHOICES:
        raise SpecError("backend", setting, f"one of {', '.join(CHOICES)}")
    if choice != AUTO:
        return choice
    return "kubernetes" if kubernetes_configured() else "local"


def kubernetes_configured() -> bool:
    """True in a Pod with a service account, or with a kubeconfig that names a current context."""
    if "KUBERNETES_SERVICE_HOST" in os.environ and _SERVICE_ACCOUNT_TOKEN.exists():
        return True
    return any(_has_current_context(path) for path in _kubeconfig_paths())


def backend_class(name: str) -> type[Backend]:
    try:
        path = BACKEND_CLASSES[name]
    except KeyError:
        raise SpecError("backend", name, f"one of {', '.join(BACKENDS)}") from None
    cls: type[Backend] = import_item(path)
    return cls


def build_backend(name: str, *, parent: Any, namespace: str = "") -> Backend:
    """The backend called `name`, configured from `parent`'s config. One that cannot work here
    (no Kubernetes configuration) is a SpecError on `backend`, naming the field to change."""
    cls = backend_class(name)
    options = {"namespace": namespace} if name == "kubernetes" and namespace else {}
    try:
        return cls(parent=parent, **options)
    except Exception as exc:  # noqa: BLE001 - e.g. kubernetes' ConfigException
        raise SpecError("backend", name, f"a backend configured on this machine ({name} is not: {exc})") from exc


def _kubeconfig_paths() -> list[Path]:
    """Where kubectl looks: every file in $KUBECONFIG, else ~/.kube/config."""
    listed = os.environ.get("KUBECONFIG", "")
    if listed:
        return [Path(p).expanduser() for p in listed.split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


def _has_current_context(path: Path) -> bool:
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and bool(config.get("current-context"))
