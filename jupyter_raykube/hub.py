"""JupyterHub + KubeSpawner: give every user's server what jupyter_raykube's Kubernetes backend
needs, from jupyterhub_config.py (docs/jupyterhub.md):

    from jupyter_raykube import hub
    c.KubeSpawner.pre_spawn_hook = hub.pre_spawn_hook    # the user's ServiceAccount + Role + RoleBinding
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
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from traitlets import Dict, Float, Int, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from .backends.registry import BACKEND_ENV
from .policy import POLICY_ENV, Policy

if TYPE_CHECKING:
    from kubespawner import KubeSpawner

ENV_POD_NAME = "JUPYTER_POD_NAME"
ENV_POD_UID = "JUPYTER_POD_UID"
ENV_NAMESPACE = "RAYKUBE_NAMESPACE"
ENV_BACKEND = BACKEND_ENV
ENV_POLICY = POLICY_ENV
BACKEND = "kubernetes"

COUNT_KEYS = ("max_gpus", "max_workers", "max_clusters")
POLICY_KEYS = tuple(f.name for f in fields(Policy))  # the server reads exactly these (policy.py)

RBAC_GROUP = "rbac.authorization.k8s.io"

# The one definition of what a server's service account may do: exactly the calls the
# Kubernetes backend makes, in the namespace of its clusters (docs/kubernetes.md, "RBAC").
# deploy/rbac.yaml carries the same rules (tests/test_hub.py checks that they are equal).
ROLE_RULES: tuple[dict[str, list[str]], ...] = (
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["services", "secrets"], "verbs": ["create", "get", "list", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["create", "get", "delete"]},
)

Cap = float | int | None


# --- caps --------------------------------------------------------------------------------------


def check_caps(data: Mapping[str, Any], where: str) -> dict[str, Cap]:
    """Validate a partial set of caps ({"max_gpus": 2}); errors name `where`, the key and the value.
    Counts become ints and whole numbers of CPUs/seconds too, so the JSON reads as typed."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping of caps, not {data!r}")
    checked: dict[str, Cap] = {}
    for key, value in data.items():
        if key not in POLICY_KEYS:
            raise ValueError(f"{where}: unknown cap {key!r}; allowed: {', '.join(POLICY_KEYS)}")
        if value is None:
            checked[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}: {key} must be a number >= 0 or None (no cap), not {value!r}")
        if key in COUNT_KEYS and value != int(value):
            raise ValueError(f"{where}: {key} must be a whole number, not {value!r}")
        checked[key] = int(value) if value == int(value) else float(value)
    return checked


def _looser(a: Cap, b: Cap) -> Cap:
    return None if a is None or b is None else max(a, b)


def _tighter(a: Cap, b: Cap) -> Cap:
    return b if a is None else a if b is None else min(a, b)


def updated(policy: Policy, caps: Mapping[str, Cap]) -> Policy:
    """`policy` with the given caps replaced (by a group's or user's settings)."""
    return replace(policy, **check_caps(caps, "caps"))


def tightened(policy: Policy, caps: Mapping[str, Cap]) -> Policy:
    """The stricter of `policy` and `caps`, key by key (a profile can only narrow a policy)."""
    checked = check_caps(caps, "caps")
    return replace(policy, **{k: _tighter(getattr(policy, k), v) for k, v in checked.items()})


def policy_env_value(policy: Policy) -> str:
    """RAYKUBE_POLICY: the server's own `Policy`, so hub and server cannot drift."""
    return json.dumps(policy.to_json(), separators=(",", ":"))


class RayKubeHubPolicy(LoggingConfigurable):
    """Caps on each user's Ray clusters, set in jupyterhub_config.py as c.RayKubeHubPolicy.*.

    A user's caps: the defaults below, then for each key set by any of the user's JupyterHub
    groups the most generous of those groups' values (None, no cap, is the most generous),
    then the user's own entry in `user_policies`. A chosen profile can only tighten the
    result (`ray_profile_list`)."""

    max_cpus = Float(None, allow_none=True, min=0, config=True,
                     help="CPUs all of a user's Ray nodes may have together. None: no cap.")
    max_gpus = Int(None, allow_none=True, min=0, config=True,
                   help="GPUs all of a user's Ray nodes may have together. 0: no GPU groups. None: no cap.")
    max_workers = Int(None, allow_none=True, min=0, config=True,
                      help="Worker nodes one cluster may have. None: no cap.")
    max_clusters = Int(None, allow_none=True, min=0, config=True,
                       help="Clusters one user may run at once. None: no cap.")
    max_lifetime_s = Float(None, allow_none=True, min=0, config=True,
                           help="Seconds a cluster may live before it is stopped. None: no cap.")
    idle_scale_down_s = Float(None, allow_none=True, min=0, config=True, help="""Longest time (s) an idle
        worker node is kept before it is drained and removed; users may choose shorter. None: no cap.""")
    idle_stop_s = Float(None, allow_none=True, min=0, config=True, help="""Longest time (s) a cluster with
        no running work is kept before it is stopped; users may choose shorter. None: no cap.""")

    group_policies = Dict(config=True, help="""Caps by JupyterHub group name, e.g.
        {"gpu-users": {"max_gpus": 4}, "students": {"max_cpus": 4, "max_clusters": 1}}.
        Only the keys given change; a user in several groups gets, key by key, the most
        generous value (None, no cap, beats any number).""")

    user_policies = Dict(config=True, help="""Caps by user name, applied after the groups':
        {"alice": {"max_cpus": 64, "max_lifetime_s": None}}.""")

    service_account_template = Unicode("raykube-{username}", config=True, help="""Name of the
        ServiceAccount (and of its Role and RoleBinding) each user's server runs as, with
        KubeSpawner's template fields ({username}, {userid}, {servername}, ...). Per user by
        default. A fixed name makes every server in a namespace share one account.""")

    @validate("group_policies", "user_policies")
    def _check_overrides(self, proposal: Any) -> dict[str, Any]:
        name = proposal["trait"].name
        for key, caps in proposal["value"].items():
            try:
                check_caps(caps, f"{name}[{key!r}]")
            except ValueError as exc:
                raise TraitError(str(exc)) from exc
        return proposal["value"]

    def defaults(self) -> Policy:
        return updated(Policy(), {key: getattr(self, key) for key in POLICY_KEYS})

    def caps_for(self, user: str, groups: Sequence[str] = ()) -> Policy:
        """The caps of `user`, member of `groups` (see the class docstring for the order)."""
        caps = self.defaults()
        granted: dict[str, Cap] = {}
        for group in groups:
            for key, value in check_caps(self.group_policies.get(group, {}), f"group_policies[{group!r}]").items():
                granted[key] = _looser(granted[key], value) if key in granted else value
        return updated(updated(caps, granted), self.user_policies.get(user, {}))

    def caps_for_spawner(self, spawner: KubeSpawner) -> Policy:
        user = spawner.user
        return self.caps_for(user.name, [g.name for g in getattr(user, "groups", None) or ()])


def user_caps(spawner: KubeSpawner) -> Policy:
    """The caps of the spawner's user, from the hub's config (c.RayKubeHubPolicy)."""
    return RayKubeHubPolicy(parent=spawner).caps_for_spawner(spawner)


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
    return pod


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


_KINDS = {
    "ServiceAccount": _Kind("service_account", None),
    "Role": _Kind("role", lambda existing, wanted: _rules(existing) == _rules(wanted)),
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

    # KubeSpawner applies the chosen profile (which may set `namespace`) and makes a per-user
    # namespace only in start(), after this hook: do both now (each is idempotent).
    await spawner.load_user_options()
    if spawner.enable_user_namespaces:
        await spawner._ensure_namespace()

    name = service_account_name(spawner)
    rbac = RbacAuthorizationV1Api(spawner.api.api_client)
    apis = {"ServiceAccount": spawner.api, "Role": rbac, "RoleBinding": rbac}
    for body in rbac_manifests(name, spawner.namespace, rbac_labels(spawner.user.name)):
        await exponential_backoff(
            partial(_ensure, spawner, apis[body["kind"]], body),
            f"Could not create {body['kind']} {spawner.namespace}/{name}",
            timeout=spawner.k8s_api_request_retry_timeout)
    return name


async def pre_spawn_hook(spawner: KubeSpawner) -> None:
    """c.KubeSpawner.pre_spawn_hook: the user's ServiceAccount + Role + RoleBinding (ROLE_RULES)."""
    await ensure_user_rbac(spawner)
