"""The identity the code under test runs as: a ServiceAccount bound to ``deploy/rbac.yaml``'s Role.

A Jupyter server on a real cluster has exactly that Role in its namespace, so the tests give
the backend nothing more: a TokenRequest token for the ServiceAccount, in a kubeconfig
pointing at the apiserver (or at the fault proxy). A missing verb then fails a test with the
apiserver's own 403. ``rules`` replaces the Role's rules, for the test that shows each one is
needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

RBAC_YAML = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"
ACCOUNT = "jupyter-raykube"


def rbac_documents(namespace: str) -> list[dict[str, Any]]:
    """deploy/rbac.yaml's ServiceAccount, Role and RoleBinding, moved into ``namespace``."""
    docs = [d for d in yaml.safe_load_all(RBAC_YAML.read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects") or []:
            subject["namespace"] = namespace
    return docs


def role_rules() -> list[dict[str, Any]]:
    """The Role's rules as deploy/rbac.yaml writes them."""
    return next(d["rules"] for d in rbac_documents("x") if d["kind"] == "Role")


def grant(admin: client.ApiClient, namespace: str, rules: Sequence[dict[str, Any]] | None = None) -> None:
    """Create deploy/rbac.yaml's objects in ``namespace`` (the Role with ``rules`` if given)."""
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    for doc in rbac_documents(namespace):
        if doc["kind"] == "Role" and rules is not None:
            doc["rules"] = [dict(r) for r in rules]
        create = {"ServiceAccount": core.create_namespaced_service_account,
                  "Role": rbac.create_namespaced_role,
                  "RoleBinding": rbac.create_namespaced_role_binding}[doc["kind"]]
        try:
            create(namespace, doc)
        except ApiException as exc:
            if exc.status != 409:
                raise
            if doc["kind"] == "Role":
                rbac.replace_namespaced_role(doc["metadata"]["name"], namespace, doc)


def backend_kubeconfig(control_plane: Any, namespace: str, path: Path, *, server: str | None = None,
                       rules: Sequence[dict[str, Any]] | None = None) -> Path:
    """A kubeconfig that authenticates as the ``jupyter-raykube`` ServiceAccount of ``namespace``."""
    with control_plane.admin_api_client() as admin:
        grant(admin, namespace, rules)
    token = control_plane.service_account_token(namespace, ACCOUNT)
    return control_plane.write_kubeconfig(path, token=token, namespace=namespace, server=server)
