"""The namespace a user's server runs in, under the hub hook (docs/jupyterhub.md, "Security
model"): one per user by default, labelled for Pod Security `restricted`, holding a
ResourceQuota and a LimitRange written from the admin's policy. A Role cannot keep users
apart inside one namespace (`create pods` there can mount any Secret there), so a namespace
shared by several users is refused unless the admin opts in.

Pure builders of API JSON and the spawn-time decision; `hub.py` makes the API calls. Like
`hub.py`, importing this module imports neither kubespawner nor a Kubernetes client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .policy import QUOTA_NAME, Policy

if TYPE_CHECKING:
    from kubespawner import KubeSpawner

POD_SECURITY_LABELS = {"pod-security.kubernetes.io/enforce": "restricted",
                       "pod-security.kubernetes.io/enforce-version": "latest"}
SHARED_NAMESPACE_SETTING = "c.RayKubeHubPolicy.allow_shared_namespace"
USER_NAMESPACES_SETTING = "c.KubeSpawner.enable_user_namespaces"
# What a container without requests gets (the LimitRange): a quota on requests.cpu/memory
# refuses Pods that name none, and a user's own Pods might not.
DEFAULT_CONTAINER_REQUESTS = {"cpu": "100m", "memory": "256Mi"}


# KubeSpawner's template fields that differ from user to user
_USER_FIELDS = ("userid", "unescaped_username", "username", "user_server", "safe_username", "safe_user_server",
                "escaped_username", "escaped_user_server")


class SharedNamespaceError(RuntimeError):
    """A spawn into a namespace that other users' servers share, without the admin's opt-in."""


def use_user_namespaces_by_default(spawner: KubeSpawner) -> None:
    """Turn on KubeSpawner's per-user namespaces unless the admin set enable_user_namespaces
    themselves (True or False). KubeSpawner reads its namespace in __init__, so set it too."""
    if spawner.enable_user_namespaces or "enable_user_namespaces" in spawner.config.get("KubeSpawner", {}):
        return
    spawner.enable_user_namespaces = True
    spawner.namespace = spawner._expand_user_properties(spawner.user_namespace_template)


def is_per_user(spawner: KubeSpawner) -> bool:
    """True when the server goes to the user's own namespace: user namespaces on, a template
    that names the user, and no profile that chose another namespace."""
    template = spawner.user_namespace_template
    names_user = any(f"{{{field}}}" in template for field in _USER_FIELDS)
    own = spawner._expand_user_properties(template)
    return bool(spawner.enable_user_namespaces) and names_user and spawner.namespace == own


def check_namespace(spawner: KubeSpawner, allow_shared: bool) -> None:
    """Refuse a shared namespace unless `allow_shared`; the message names both settings."""
    if allow_shared or is_per_user(spawner):
        return
    raise SharedNamespaceError(
        f"Ray: refusing to start {spawner.user.name}'s server in namespace {spawner.namespace!r}, which other "
        f"users' servers share: there each user's token could read the others' Ray tokens and Pods. Set "
        f"{USER_NAMESPACES_SETTING} = True (one namespace per user; the default when it is not set), or, if every "
        f"user may see the others' clusters, {SHARED_NAMESPACE_SETTING} = True.")


def namespace_manifest(name: str, labels: Mapping[str, str],
                       annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The user's namespace with `labels` plus the Pod Security labels (which win)."""
    metadata: dict[str, Any] = {"name": name, "labels": {**labels, **POD_SECURITY_LABELS}}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def quota_hard(policy: Policy, *, server_requests: Mapping[str, float], max_memory_bytes: int | None,
               accelerators: Sequence[str]) -> dict[str, str]:
    """ResourceQuota `hard` for one user: the policy's totals plus what their server itself
    requests (it runs in the same namespace). Keys without a cap are left out."""
    hard: dict[str, str] = {}
    if policy.max_cpus is not None:
        hard["requests.cpu"] = _quantity(policy.max_cpus + server_requests.get("cpu", 0.0))
    if max_memory_bytes is not None:
        hard["requests.memory"] = str(int(max_memory_bytes + server_requests.get("memory", 0.0)))
    if policy.max_gpus is not None:
        for resource in accelerators:
            hard[f"requests.{resource}"] = _quantity(policy.max_gpus)
    if policy.max_clusters is not None and policy.max_workers is not None:
        hard["pods"] = str(int(policy.max_clusters * (1 + policy.max_workers) + 1))  # + the server's
    return hard


def quota_manifest(namespace: str, hard: Mapping[str, str], labels: Mapping[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": QUOTA_NAME, "namespace": namespace, "labels": dict(labels)},
            "spec": {"hard": dict(hard)}}


def limit_range_manifest(namespace: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "LimitRange",
            "metadata": {"name": QUOTA_NAME, "namespace": namespace, "labels": dict(labels)},
            "spec": {"limits": [{"type": "Container", "defaultRequest": dict(DEFAULT_CONTAINER_REQUESTS)}]}}


def server_egress_manifest(name: str, namespace: str, server_labels: Mapping[str, str],
                           ray_pod_labels: Mapping[str, str]) -> dict[str, Any]:
    """The user's server Pod may connect to the user's own Ray Pods, whatever else limits its
    egress. Zero to JupyterHub's singleuser NetworkPolicy allows no private IPs, and Pod IPs are
    private; NetworkPolicies add up, so this one opens exactly that path and nothing else."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(ray_pod_labels)},
            "spec": {"podSelector": {"matchLabels": dict(server_labels)}, "policyTypes": ["Egress"],
                     "egress": [{"to": [{"podSelector": {"matchLabels": dict(ray_pod_labels)}}]}]}}


def server_requests(spawner: KubeSpawner) -> dict[str, float]:
    """CPUs and bytes the server's own container requests (the LimitRange's default if none)."""
    from kubernetes.utils import parse_quantity

    cpu = spawner.cpu_guarantee
    memory = spawner.mem_guarantee
    return {"cpu": float(cpu if cpu is not None else parse_quantity(DEFAULT_CONTAINER_REQUESTS["cpu"])),
            "memory": float(memory if memory is not None else parse_quantity(DEFAULT_CONTAINER_REQUESTS["memory"]))}


def same_quantities(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal maps of quantities, as the apiserver may rewrite them ("1000m" for "1")."""
    from kubernetes.utils import parse_quantity

    return set(a) == set(b) and all(parse_quantity(str(a[k])) == parse_quantity(str(b[k])) for k in a)


def _quantity(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{int(round(value * 1000))}m"
