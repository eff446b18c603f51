"""JupyterHub + KubeSpawner: give every user's server what jupyter_raykube's Kubernetes backend
needs, from jupyterhub_config.py (docs/jupyterhub.md):

    from jupyter_raykube import hub
    c.KubeSpawner.pre_spawn_hook = hub.pre_spawn_hook    # the user's namespace, quota, ServiceAccount + Role
    c.KubeSpawner.modify_pod_hook = hub.modify_pod_hook  # env, service account, downward API
    c.RayKubeHubPolicy.max_cpus = 16                     # caps, per group / user too
    c.KubeSpawner.profile_list = hub.ray_profile_list()  # optional: small / medium / gpu

The contract with the single-user server (names and values are fixed; the server reads them):

    JUPYTER_POD_NAME, JUPYTER_POD_UID  downward API metadata.name / metadata.uid: the backend puts
                                       an ownerReference to this Pod on every cluster object
    RAYKUBE_NAMESPACE                  downward API metadata.namespace: where clusters go
    RAYKUBE_BACKEND                    "kubernetes"
    RAYKUBE_POLICY                     JSON object with exactly POLICY_KEYS; numbers, null = no cap

This module is imported by jupyterhub_config.py, so it imports neither kubespawner nor
kubernetes_asyncio (both exist only on the hub, and the hooks only run there): the hooks
import what they need when called.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from . import hub_namespace
from .backends.registry import BACKEND_ENV
from .hub_policy import (
    COUNT_KEYS,
    POLICY_KEYS,
    Cap,
    RayKubeHubPolicy,
    check_caps,
    policy_env_value,
    server_caps,
    tightened,
    updated,
    user_caps,
)
from .policy import POLICY_ENV, QUOTA_NAME

if TYPE_CHECKING:
    from kubespawner import KubeSpawner

__all__ = [  # jupyterhub_config.py uses hub.<name>; the policy half lives in hub_policy.py
    "COUNT_KEYS", "POLICY_KEYS", "ROLE_RULES", "Cap", "DEFAULT_PROFILES", "ProfileCaps", "RayKubeHubPolicy",
    "RayProfile", "check_caps", "modify_pod_hook", "policy_env_value", "pre_spawn_hook", "ray_override",
    "ray_profile_list", "server_caps", "tightened", "updated", "user_caps",
]

ENV_POD_NAME = "JUPYTER_POD_NAME"
ENV_POD_UID = "JUPYTER_POD_UID"
ENV_NAMESPACE = "RAYKUBE_NAMESPACE"
ENV_BACKEND = BACKEND_ENV
ENV_POLICY = POLICY_ENV
BACKEND = "kubernetes"

RBAC_GROUP = "rbac.authorization.k8s.io"

# The one definition of what a server's service account may do: exactly the calls the
# Kubernetes backend makes, in the namespace of its clusters (docs/kubernetes.md, "RBAC").
# deploy/rbac.yaml carries the same rules (tests/test_hub.py checks that they are equal).
ROLE_RULES: tuple[dict[str, list[str]], ...] = (
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get", "list", "delete"]},
    # Secrets by name only: a list or watch would hand over every token in the namespace.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["create", "get", "delete"]},
    # The hub's ResourceQuota, by name, to show it (read only: the user may not change it).
    {"apiGroups": [""], "resources": ["resourcequotas"], "verbs": ["get"]},
)


# --- profiles ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileCaps:
    """RAYKUBE_POLICY for a profile choice: called by JupyterHub with the spawner (an
    `environment` value), so the user's policy is read when the server starts. A plain JSON
    string would not do: KubeSpawner formats `environment` strings as templates."""

    caps: dict[str, Cap]

    def __post_init__(self) -> None:
        check_caps(self.caps, "profile caps")

    def __call__(self, spawner: KubeSpawner) -> str:
        return policy_env_value(tightened(user_caps(spawner), self.caps))


def ray_override(caps: Mapping[str, Cap]) -> dict[str, Any]:
    """A `kubespawner_override` that caps the user's Ray clusters at `caps` (tighter only),
    for your own profiles or profile_options choices."""
    return {"environment": {ENV_POLICY: ProfileCaps(dict(caps))}}


@dataclass(frozen=True)
class RayProfile:
    """One choice in the spawn form: a name and the caps it sets."""

    slug: str
    display_name: str
    description: str
    caps: dict[str, Cap]
    default: bool = False
    kubespawner_override: dict[str, Any] = field(default_factory=dict)  # anything else it changes


DEFAULT_PROFILES = (
    RayProfile("ray-small", "Small Ray cluster", "Up to 8 CPUs in 4 worker nodes, no GPUs.",
               {"max_cpus": 8, "max_gpus": 0, "max_workers": 4}, default=True),
    RayProfile("ray-medium", "Medium Ray cluster", "Up to 32 CPUs in 16 worker nodes, no GPUs.",
               {"max_cpus": 32, "max_gpus": 0, "max_workers": 16}),
    RayProfile("ray-gpu", "GPU Ray cluster", "Up to 32 CPUs and 4 GPUs in 8 worker nodes.",
               {"max_cpus": 32, "max_gpus": 4, "max_workers": 8}),
)


def ray_profile_list(profiles: Sequence[RayProfile] = DEFAULT_PROFILES) -> list[dict[str, Any]]:
    """KubeSpawner `profile_list` entries, one per profile. Each one's `kubespawner_override`
    adds RAYKUBE_POLICY = the user's caps tightened by the profile's, merged with the
    profile's own overrides (KubeSpawner merges dict overrides into the traits)."""
    entries = []
    for profile in profiles:
        override = dict(profile.kubespawner_override)
        override["environment"] = {**override.get("environment", {}), **ray_override(profile.caps)["environment"]}
        entries.append({"slug": profile.slug, "display_name": profile.display_name,
                        "description": profile.description, "default": profile.default,
                        "kubespawner_override": override})
    return entries


# --- the single-user Pod -----------------------------------------------------------------------


def service_account_name(spawner: KubeSpawner) -> str:
    """The user's ServiceAccount (also its Role's and RoleBinding's name). KubeSpawner's own
    template expansion, so {username} is the same safe slug as in its Pod and PVC names."""
    template = RayKubeHubPolicy(parent=spawner).service_account_template
    return spawner._expand_user_properties(template)


def modify_pod_hook(spawner: KubeSpawner, pod: Any) -> Any:
    """c.KubeSpawner.modify_pod_hook: the notebook container gets the environment of the module
    docstring (entries already there win: a profile's RAYKUBE_POLICY, or JUPYTER_POD_NAME set in
    c.KubeSpawner.environment), and the Pod runs as the user's service account with its token
    mounted, which is what the backend's in-cluster configuration reads."""
    from kubernetes_asyncio.client import V1EnvVar, V1EnvVarSource, V1ObjectFieldSelector

    def field_ref(path: str) -> V1EnvVarSource:
        return V1EnvVarSource(field_ref=V1ObjectFieldSelector(api_version="v1", field_path=path))

    wanted = [
        V1EnvVar(name=ENV_POD_NAME, value_from=field_ref("metadata.name")),
        V1EnvVar(name=ENV_POD_UID, value_from=field_ref("metadata.uid")),
        V1EnvVar(name=ENV_NAMESPACE, value_from=field_ref("metadata.namespace")),
        V1EnvVar(name=ENV_BACKEND, value=BACKEND),
        V1EnvVar(name=ENV_POLICY, value=policy_env_value(user_caps(spawner))),
    ]
    container = next((c for c in pod.spec.containers if c.name == "notebook"), pod.spec.containers[0])
    env = list(container.env or [])
    present = {var.name for var in env}
    container.env = env + [var for var in wanted if var.name not in present]

    account = service_account_name(spawner)
    if pod.spec.service_account_name not in (None, account):
        spawner.log.warning("Ray: running %s as service account %s instead of %s", pod.metadata.name, account,
                            pod.spec.service_account_name)
    pod.spec.service_account_name = account
    pod.spec.automount_service_account_token = True
    _restrict(pod, spawner.api.api_client)
    return pod


def _restrict(pod: Any, api_client: Any) -> None:
    """Fill in what Pod Security `restricted` (the user's namespace's label) requires and the
    Pod leaves unset; a value the admin set stays, and the apiserver judges it. KubeSpawner's
    security contexts are camelCase dicts; a model (another hook's) is turned into one by the
    spawner's own client (a new ApiClient would open, and leak, an HTTP session per call)."""

    def as_dict(context: Any) -> dict[str, Any]:
        return dict(api_client.sanitize_for_serialization(context) or {})

    pod_context = as_dict(pod.spec.security_context)
    pod_context.setdefault("runAsNonRoot", True)
    pod_context.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    pod.spec.security_context = pod_context
    for container in [*(pod.spec.init_containers or ()), *pod.spec.containers]:
        context = as_dict(container.security_context)
        context.setdefault("allowPrivilegeEscalation", False)
        context.setdefault("capabilities", {"drop": ["ALL"]})
        container.security_context = context


# --- the user's ServiceAccount, Role and RoleBinding -------------------------------------------


def rbac_manifests(name: str, namespace: str, labels: Mapping[str, str]) -> tuple[dict[str, Any], ...]:
    """Pure: the ServiceAccount, Role (ROLE_RULES) and RoleBinding of one user, as API JSON."""

    def meta() -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "labels": dict(labels)}

    return (
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta()},
        {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "Role", "metadata": meta(),
         "rules": [{k: list(v) for k, v in rule.items()} for rule in ROLE_RULES]},
        {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "RoleBinding", "metadata": meta(),
         "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
    )


def rbac_labels(user: str) -> dict[str, str]:
    from .backends.k8s_objects import LABEL_MANAGED_BY, LABEL_OWNER, MANAGED_BY, label_value

    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_OWNER: label_value(user)}


@dataclass(frozen=True)
class _Kind:
    """How to create, read, update and delete one kind, and when an existing object will do."""

    name: str  # the API methods' suffix: create_namespaced_<name>
    same: Callable[[dict[str, Any], dict[str, Any]], bool] | None  # None: any existing one will do
    recreate: Callable[[dict[str, Any], dict[str, Any]], bool] = lambda existing, wanted: False


def _rules(role: Mapping[str, Any]) -> list[tuple[tuple[str, ...], ...]]:
    keys = ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs")
    return [tuple(tuple(rule.get(k) or ()) for k in keys) for rule in role.get("rules") or ()]


def _role_ref(binding: Mapping[str, Any]) -> tuple[str, ...]:
    ref = binding.get("roleRef") or {}
    return tuple(ref.get(k, "") for k in ("apiGroup", "kind", "name"))


def _subjects(binding: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Subjects without the apiGroup the API server fills in ("" for a ServiceAccount)."""
    return [tuple(s.get(k, "") for k in ("kind", "name", "namespace")) for s in binding.get("subjects") or ()]


def _default_requests(limit_range: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(item.get("type"), item.get("defaultRequest") or {}) for item in limit_range["spec"].get("limits") or ()]


def _same_limits(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    mine, theirs = _default_requests(wanted), _default_requests(existing)
    return len(mine) == len(theirs) and all(
        a[0] == b[0] and hub_namespace.same_quantities(a[1], b[1]) for a, b in zip(mine, theirs))


_KINDS = {
    "ServiceAccount": _Kind("service_account", None),
    "ResourceQuota": _Kind("resource_quota", lambda existing, wanted: hub_namespace.same_quantities(
        (existing.get("spec") or {}).get("hard") or {}, wanted["spec"]["hard"])),
    "LimitRange": _Kind("limit_range", _same_limits),
    "Role": _Kind("role", lambda existing, wanted: _rules(existing) == _rules(wanted)),
    "NetworkPolicy": _Kind("network_policy", lambda existing, wanted: existing.get("spec") == wanted["spec"]),
    "RoleBinding": _Kind("role_binding",
                         lambda existing, wanted: (_role_ref(existing), _subjects(existing))
                         == (_role_ref(wanted), _subjects(wanted)),
                         recreate=lambda existing, wanted: _role_ref(existing) != _role_ref(wanted)),
}


async def _ensure(spawner: KubeSpawner, api: Any, body: dict[str, Any]) -> bool:
    """One attempt to make `body` exist as given, for exponential_backoff (True: done, False:
    try again), as KubeSpawner creates its objects. An existing object that differs is updated
    (a RoleBinding whose roleRef differs is deleted and made again: roleRef is immutable)."""
    from kubernetes_asyncio.client.rest import ApiException

    kind = _KINDS[body["kind"]]
    namespace, name = spawner.namespace, body["metadata"]["name"]
    timeout = spawner.k8s_api_request_timeout

    async def call(verb: str, *args: Any) -> Any:
        return await asyncio.wait_for(getattr(api, f"{verb}_namespaced_{kind.name}")(*args), timeout)

    try:
        await call("create", namespace, body)
        spawner.log.info("Ray: created %s %s/%s", body["kind"], namespace, name)
        return True
    except asyncio.TimeoutError:
        return False
    except ApiException as exc:
        if exc.status != 409:
            raise
    if kind.same is None:
        return True
    try:
        existing = api.api_client.sanitize_for_serialization(await call("read", name, namespace))
        if kind.same(existing, body):
            return True
        if kind.recreate(existing, body):
            spawner.log.info("Ray: replacing %s %s/%s", body["kind"], namespace, name)
            await call("delete", name, namespace)
            return False
        spawner.log.info("Ray: updating %s %s/%s", body["kind"], namespace, name)
        metadata = {**body["metadata"], "resourceVersion": existing["metadata"]["resourceVersion"]}
        await call("replace", name, namespace, {**body, "metadata": metadata})
        return True
    except asyncio.TimeoutError:
        return False
    except ApiException as exc:
        if exc.status in (404, 409):  # deleted or changed meanwhile: start over
            return False
        raise


async def ensure_user_rbac(spawner: KubeSpawner) -> str:
    """Make the user's ServiceAccount, Role and RoleBinding exist in the namespace their server
    will run in, through the spawner's own API client; returns the account's name."""
    from jupyterhub.utils import exponential_backoff
    from kubernetes_asyncio.client import RbacAuthorizationV1Api

    name = service_account_name(spawner)
    rbac = RbacAuthorizationV1Api(spawner.api.api_client)
    apis = {"ServiceAccount": spawner.api, "Role": rbac, "RoleBinding": rbac}
    for body in rbac_manifests(name, spawner.namespace, rbac_labels(spawner.user.name)):
        await exponential_backoff(
            partial(_ensure, spawner, apis[body["kind"]], body),
            f"Could not create {body['kind']} {spawner.namespace}/{name}",
            timeout=spawner.k8s_api_request_retry_timeout)
    return name


async def ensure_server_egress(spawner: KubeSpawner) -> None:
    """The NetworkPolicy that lets the user's server Pod reach the user's Ray Pods (the one
    Zero to JupyterHub's egress rules would otherwise block; docs/kubernetes.md)."""
    from jupyterhub.utils import exponential_backoff
    from kubernetes_asyncio.client import NetworkingV1Api

    from .backends.k8s_network import server_selector

    server = server_selector(spawner._build_pod_labels(spawner._expand_all(spawner.extra_labels)))
    body = hub_namespace.server_egress_manifest(service_account_name(spawner), spawner.namespace, server,
                                                rbac_labels(spawner.user.name))
    await exponential_backoff(partial(_ensure, spawner, NetworkingV1Api(spawner.api.api_client), body),
                              f"Could not create NetworkPolicy {spawner.namespace}/{body['metadata']['name']}",
                              timeout=spawner.k8s_api_request_retry_timeout)


async def _ensure_namespace(spawner: KubeSpawner) -> bool:
    """One attempt (for exponential_backoff) to make the user's namespace exist with KubeSpawner's
    labels and annotations and the Pod Security labels; an existing one gets the latter."""
    from kubernetes_asyncio.client.rest import ApiException

    name, timeout = spawner.namespace, spawner.k8s_api_request_timeout
    labels = {**spawner._expand_all(spawner.user_namespace_labels), **rbac_labels(spawner.user.name)}
    body = hub_namespace.namespace_manifest(name, labels, spawner._expand_all(spawner.user_namespace_annotations))
    try:
        await asyncio.wait_for(spawner.api.create_namespace(body), timeout)
        spawner.log.info("Ray: created namespace %s", name)
        return True
    except asyncio.TimeoutError:
        return False
    except ApiException as exc:
        if exc.status != 409:
            raise
    try:
        existing = (await asyncio.wait_for(spawner.api.read_namespace(name), timeout)).metadata.labels or {}
        missing = {k: v for k, v in hub_namespace.POD_SECURITY_LABELS.items() if existing.get(k) != v}
        if missing:
            spawner.log.info("Ray: labelling namespace %s %s", name, missing)
            await asyncio.wait_for(spawner.api.patch_namespace(name, {"metadata": {"labels": missing}}), timeout)
        return True
    except asyncio.TimeoutError:
        return False
    except ApiException as exc:
        if exc.status == 404:  # deleted meanwhile: start over
            return False
        raise


async def ensure_user_quota(spawner: KubeSpawner, settings: RayKubeHubPolicy) -> dict[str, str]:
    """The ResourceQuota and LimitRange of the user's namespace, from the server's caps (a
    profile's included) and c.RayKubeHubPolicy; returns the quota's `hard`."""
    from jupyterhub.utils import exponential_backoff
    from kubernetes.utils import parse_quantity

    memory = int(parse_quantity(settings.max_memory)) if settings.max_memory is not None else None
    hard = hub_namespace.quota_hard(server_caps(spawner), server_requests=hub_namespace.server_requests(spawner),
                                    max_memory_bytes=memory, accelerators=settings.accelerator_resources)
    labels = rbac_labels(spawner.user.name)
    for body in (hub_namespace.quota_manifest(spawner.namespace, hard, labels),
                 hub_namespace.limit_range_manifest(spawner.namespace, labels)):
        await exponential_backoff(partial(_ensure, spawner, spawner.api, body),
                                  f"Could not create {body['kind']} {spawner.namespace}/{body['metadata']['name']}",
                                  timeout=spawner.k8s_api_request_retry_timeout)
    # Until the quota controller has counted the namespace, admission refuses every Pod
    # ("status unknown for quota"), the server's own included: wait for it here.
    await exponential_backoff(partial(_quota_counted, spawner, hard),
                              f"ResourceQuota {spawner.namespace}/{QUOTA_NAME} was not counted",
                              timeout=spawner.k8s_api_request_retry_timeout)
    return hard


async def _quota_counted(spawner: KubeSpawner, hard: Mapping[str, str]) -> bool:
    quota = await asyncio.wait_for(spawner.api.read_namespaced_resource_quota(QUOTA_NAME, spawner.namespace),
                                   spawner.k8s_api_request_timeout)
    counted = (quota.status.hard or {}) if quota.status is not None else {}
    return hub_namespace.same_quantities(counted, hard)


async def pre_spawn_hook(spawner: KubeSpawner) -> None:
    """c.KubeSpawner.pre_spawn_hook: the user's own namespace (the default; a shared one only
    with allow_shared_namespace), labelled for Pod Security `restricted`, with a ResourceQuota
    and LimitRange from the policy; then the user's ServiceAccount + Role + RoleBinding, and the
    NetworkPolicy that lets the server reach its Ray Pods."""
    from jupyterhub.utils import exponential_backoff

    settings = RayKubeHubPolicy(parent=spawner)
    hub_namespace.use_user_namespaces_by_default(spawner)
    # KubeSpawner applies the chosen profile (which may set `namespace`) and makes the user's
    # namespace only in start(), after this hook: do both now (each is idempotent).
    await spawner.load_user_options()
    hub_namespace.check_namespace(spawner, settings.allow_shared_namespace)
    if hub_namespace.is_per_user(spawner):
        await exponential_backoff(partial(_ensure_namespace, spawner), f"Could not create namespace {spawner.namespace}",
                                  timeout=spawner.k8s_api_request_retry_timeout)
        await ensure_user_quota(spawner, settings)
    await ensure_user_rbac(spawner)
    await ensure_server_egress(spawner)
