"""The JupyterHub hooks (`jupyter_raykube.hub`) with real KubeSpawner objects, against the test
control plane (tests/kube: a real kube-apiserver with RBAC and admission). The hub authenticates
as a ServiceAccount holding exactly the Role (or ClusterRole) that docs/jupyterhub.md tells
admins to apply, so the apiserver's RBAC, escalation check included, judges the docs; its
requests go through the fault proxy, whose log the tests read.

KubeSpawner gets a minimal hub and user stand-in, as in kubespawner's own tests (`Hub()` and a
user with `name`, `id`, `url`, `groups`). Outside a cluster its asyncio client
(kubernetes_asyncio) loads the kubeconfig named by $KUBECONFIG, a variable it reads once, when
first imported: the `kubespawner_kubeconfig` fixture imports KubeSpawner with $KUBECONFIG naming
a file that each test then fills in for its own namespace (the variable itself is not left set,
so other tests' kubeconfig discovery is unaffected). KubeSpawner creates its client in
`__init__` on the running loop, so each test runs one `asyncio.run(...)`. At the end,
`asyncio.run` cancels KubeSpawner's client-closing task, which is what JupyterHub does at
shutdown.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from jupyterhub.objects import Hub
from kubernetes.client import ApiClient, CoreV1Api, NetworkingV1Api, RbacAuthorizationV1Api
from kubernetes.client.exceptions import ApiException
from traitlets import TraitError
from traitlets.config import Config

from jupyter_raykube import hub
from tests.kube.controlplane import ControlPlane
from tests.kube.faultproxy import FaultProxy
from tests.kube.helpers import wait_until
from tests.kube.kubelet import ProcessKubelet

if TYPE_CHECKING:
    from kubespawner import KubeSpawner

ROOT = Path(__file__).parent.parent
RBAC = ROOT / "deploy" / "rbac.yaml"
DOCS = ROOT / "docs" / "jupyterhub.md"
NS = "jhub"  # where the pure tests put objects; the cluster tests use a fresh namespace each
HUB_ACCOUNT = "hub"  # Zero to JupyterHub's hub ServiceAccount, as in docs/jupyterhub.md
USER = "alice@example.com"
ACCOUNT = "raykube-alice-example-com---ff8d9819"  # KubeSpawner's safe slug of USER
OWNER_LABEL = "alice-example.com-ff8d9819"  # the backend's raykube.io/owner value for USER
ENV_NAMES = (hub.ENV_POD_NAME, hub.ENV_POD_UID, hub.ENV_NAMESPACE, hub.ENV_BACKEND, hub.ENV_POLICY)
NO_CAPS = {**dict.fromkeys(hub.POLICY_KEYS), "user_scheduling": []}


@dataclass
class HubGroup:
    name: str


@dataclass
class HubUser:
    """What KubeSpawner and the hooks read of JupyterHub's User."""

    name: str
    id: int = 7
    groups: list[HubGroup] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"/user/{self.name}/"


_KUBESPAWNER_KUBECONFIG: list[Path] = []


@pytest.fixture(scope="session")
def kubespawner_kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where KubeSpawner's client looks for a kubeconfig (see the module docstring). Made once
    per process: tests/test_hub_isolation.py uses this fixture too."""
    if _KUBESPAWNER_KUBECONFIG:
        return _KUBESPAWNER_KUBECONFIG[0]
    path = tmp_path_factory.mktemp("kubespawner") / "kubeconfig"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KUBECONFIG", str(path))
        import kubespawner  # noqa: F401
        from kubernetes_asyncio.config import kube_config
    if kube_config.KUBE_CONFIG_DEFAULT_LOCATION != str(path):
        pytest.fail("kubernetes_asyncio was imported before this fixture ran, so it reads another kubeconfig")
    _KUBESPAWNER_KUBECONFIG.append(path)
    return path


@pytest.fixture
def hub_ns(make_kube_namespace: Callable[..., str]) -> str:
    """The hub's namespace (a fresh one per test), where the users' servers also run."""
    return make_kube_namespace("jhub")


def grant_hub(admin: ApiClient, kind: str, namespace: str, hub_namespace: str) -> None:
    """docs/jupyterhub.md's Role (in `namespace`) or ClusterRole for the hub's ServiceAccount."""
    rbac = RbacAuthorizationV1Api(admin)
    binding = {"metadata": {"name": "raykube-hub"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": "raykube-hub"},
               "subjects": [{"kind": "ServiceAccount", "name": HUB_ACCOUNT, "namespace": hub_namespace}]}
    role = {"metadata": {"name": "raykube-hub"}, "rules": documented_hub_rules(kind)}
    if kind == "Role":
        creates = [partial(rbac.create_namespaced_role, namespace, role),
                   partial(rbac.create_namespaced_role_binding, namespace, binding)]
    else:
        creates = [partial(rbac.create_cluster_role, role), partial(
            rbac.create_cluster_role_binding, {**binding, "metadata": {"name": f"raykube-hub-{hub_namespace}"}})]
    for create in creates:
        try:
            create()
        except ApiException as exc:
            if exc.status != 409:  # the ClusterRole, made by an earlier test
                raise


@pytest.fixture
def hub_config(kube_control_plane: ControlPlane, hub_ns: str, kubespawner_kubeconfig: Path,
               kube_fault_proxy: FaultProxy, kube_admin: ApiClient, monkeypatch: pytest.MonkeyPatch) -> Config:
    """KubeSpawner config for this test's namespace; the hub is its ServiceAccount with the
    documented Role there, talking through the fault proxy."""
    from kubespawner.clients import load_config

    grant_hub(kube_admin, "Role", hub_ns, hub_ns)
    token = kube_control_plane.service_account_token(hub_ns, HUB_ACCOUNT)
    kube_control_plane.write_kubeconfig(kubespawner_kubeconfig, token=token, namespace=hub_ns,
                                        server=kube_fault_proxy.url)
    load_config.cache_clear()  # KubeSpawner loads the kubeconfig once per process; this test's is new
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # KubeSpawner tries in-cluster config first
    c = Config()
    c.KubeSpawner.namespace = hub_ns
    c.KubeSpawner.k8s_api_request_retry_timeout = 10
    # The shared layout, opted into: these tests are about the hooks' objects. The default
    # (one namespace per user) is test_per_user_namespace's and tests/test_hub_isolation.py's.
    c.KubeSpawner.enable_user_namespaces = False
    c.RayKubeHubPolicy.allow_shared_namespace = True
    return c


def make_spawner(config: Config, user: str = USER, groups: tuple[str, ...] = (), **options: Any) -> KubeSpawner:
    """A KubeSpawner as JupyterHub builds one (call inside the event loop)."""
    from kubespawner import KubeSpawner

    spawner = KubeSpawner(config=config, hub=Hub(), user=HubUser(user, groups=[HubGroup(g) for g in groups]),
                          api_token="test-token", oauth_client_id="jupyterhub-user-alice")
    spawner.user_options = options
    return spawner


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())


def as_json(obj: Any, spawner: KubeSpawner | None = None) -> Any:
    """API JSON of a model: of the official client's, or (with `spawner`) of kubernetes_asyncio's."""
    return (spawner.api.api_client if spawner is not None else ApiClient()).sanitize_for_serialization(obj)


def env_of(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["spec"]["containers"][0].get("env", [])


def api_calls(proxy: FaultProxy) -> set[tuple[str, str, str]]:
    """(API group, resource, RBAC verb) of every request the hub made."""
    pattern = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/[^/]+)?"
                         r"/(?P<res>[a-z]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?$")
    calls = set()
    for record in proxy.requests():
        match = pattern.match(record.path)
        assert match, f"unexpected API path {record.path}"
        resource = match["res"] + (f"/{match['sub']}" if match["sub"] else "")
        if record.method == "GET":
            verb = "get" if match["name"] else "list"
        else:
            verb = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}[record.method]
        calls.add((match["group"] or "", resource, verb))
    return calls


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def documented_hub_rules(kind: str) -> list[dict[str, Any]]:
    """The rules of the hub's Role or ClusterRole in docs/jupyterhub.md."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    documents = [d for block in blocks for d in yaml.safe_load_all(block) if d]
    return next(d["rules"] for d in documents if d["kind"] == kind and d["metadata"]["name"] == "raykube-hub")


def assert_no_invalid_objects(proxy: FaultProxy) -> None:
    """The apiserver accepted every object (no 422) and every call (no 403: the documented rules suffice)."""
    assert not [r for r in proxy.requests() if r.status in (403, 422)], [
        (r.method, r.path, r.status) for r in proxy.requests() if r.status in (403, 422)]


# --- (c) one set of rules ----------------------------------------------------------------------


def test_role_rules_are_deploy_rbac_yaml_rules() -> None:
    documents = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    role = next(d for d in documents if d["kind"] == "Role")
    assert role["rules"] == [dict(rule) for rule in hub.ROLE_RULES]
    sa, user_role, binding = hub.rbac_manifests(ACCOUNT, NS, {"raykube.io/owner": OWNER_LABEL})
    assert user_role["rules"] == role["rules"]
    assert binding == {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": ACCOUNT, "namespace": NS, "labels": {"raykube.io/owner": OWNER_LABEL}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NS}]}
    assert sa == {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": binding["metadata"]}
    # The hub may only grant what it holds: both documented hub roles hold the users' rules.
    for kind in ("Role", "ClusterRole"):
        assert granted(role["rules"]) <= granted(documented_hub_rules(kind)), kind


def test_importing_the_hook_module_needs_no_hub_packages() -> None:
    """jupyterhub_config.py imports it; kubespawner and friends are imported by the hooks."""
    code = ("import sys, jupyter_raykube.hub; "
            "print(sorted(m for m in ('kubespawner', 'kubernetes_asyncio', 'jupyterhub', 'kubernetes', 'ray') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# --- policy ------------------------------------------------------------------------------------


def test_policy_defaults_groups_users_and_profiles() -> None:
    policy = hub.RayKubeHubPolicy(
        max_cpus=16, max_gpus=0, max_lifetime_s=3600.0,
        group_policies={"gpu-users": {"max_gpus": 4, "max_cpus": 64}, "big": {"max_gpus": 2, "max_cpus": None},
                        "students": {"max_cpus": 4, "max_clusters": 1}},
        user_policies={"bob": {"max_lifetime_s": None, "max_cpus": 2.5}})
    assert policy.caps_for("alice").to_json() == {**NO_CAPS, "max_cpus": 16, "max_gpus": 0, "max_lifetime_s": 3600}
    assert json.loads(hub.policy_env_value(policy.caps_for("alice"))) == policy.caps_for("alice").to_json()
    assert list(json.loads(hub.policy_env_value(policy.caps_for("alice")))) == list(hub.POLICY_KEYS)
    # Groups grant: per key, the most generous value among the user's groups (None beats numbers).
    caps = policy.caps_for("carol", ["students", "gpu-users", "big"])
    assert (caps.max_cpus, caps.max_gpus, caps.max_clusters) == (None, 4, 1)
    assert policy.caps_for("dave", ["students"]).max_cpus == 4
    assert policy.caps_for("erin", ["no-such-group"]) == policy.defaults()
    # The user's own entry comes last.
    caps = policy.caps_for("bob", ["gpu-users"])
    assert (caps.max_cpus, caps.max_gpus, caps.max_lifetime_s) == (2.5, 4, None)
    # A profile only tightens.
    small = hub.tightened(policy.caps_for("carol", ["gpu-users"]), {"max_cpus": 8, "max_gpus": 0, "max_workers": 4})
    assert (small.max_cpus, small.max_gpus, small.max_workers, small.max_lifetime_s) == (8, 0, 4, 3600)
    gpu = hub.tightened(policy.caps_for("dave", ["students"]), {"max_cpus": 32, "max_gpus": 4})
    assert (gpu.max_cpus, gpu.max_gpus) == (4, 0)


@pytest.mark.parametrize(("setting", "message"), [
    ({"group_policies": {"ml": {"max_cpu": 4}}}, "group_policies['ml']: unknown cap 'max_cpu'; allowed: max_cpus"),
    ({"group_policies": {"ml": {"max_gpus": 1.5}}}, "group_policies['ml']: max_gpus must be a whole number, not 1.5"),
    ({"user_policies": {"bob": {"max_cpus": -1}}}, "user_policies['bob']: max_cpus must be a number >= 0 or None"),
    ({"user_policies": {"bob": {"idle_stop_s": "1h"}}}, "idle_stop_s must be a number >= 0 or None (no cap), not '1h'"),
    ({"user_policies": {"bob": 4}}, "user_policies['bob']: expected a mapping of caps, not 4"),
])
def test_policy_rejects_bad_settings_by_name(setting: dict[str, Any], message: str) -> None:
    with pytest.raises(TraitError) as info:
        hub.RayKubeHubPolicy(**setting)
    assert message in str(info.value)
    with pytest.raises(TraitError, match=re.escape(message)):  # as jupyterhub_config.py can check it
        hub.RayKubeHubPolicy(config=Config({"RayKubeHubPolicy": setting}))


def test_profile_entries() -> None:
    entries = hub.ray_profile_list()
    assert [(e["slug"], e["default"]) for e in entries] == [("ray-small", True), ("ray-medium", False),
                                                            ("ray-gpu", False)]
    assert entries[2]["kubespawner_override"] == {
        "environment": {"RAYKUBE_POLICY": hub.ProfileCaps({"max_cpus": 32, "max_gpus": 4, "max_workers": 8})}}
    # KubeSpawner deep-copies profile_list before use.
    assert copy.deepcopy(entries) == entries
    custom = hub.ray_profile_list([hub.RayProfile(
        "gpu", "GPU", "", {"max_gpus": 2},
        kubespawner_override={"node_selector": {"pool": "gpu"}, "environment": {"TEAM": "ml"}})])
    assert custom[0]["kubespawner_override"] == {
        "node_selector": {"pool": "gpu"},
        "environment": {"TEAM": "ml", "RAYKUBE_POLICY": hub.ProfileCaps({"max_gpus": 2})}}
    with pytest.raises(ValueError, match="profile caps: unknown cap 'gpus'"):
        hub.ray_override({"gpus": 1})


# --- (a) the single-user Pod -------------------------------------------------------------------


@pytest.mark.k8s
def test_pod_gets_env_service_account_and_downward_api(hub_config: Config, hub_ns: str, kube_fault_proxy: FaultProxy,
                                                       kube_admin: ApiClient,
                                                       process_kubelet: ProcessKubelet) -> None:
    """The Pod KubeSpawner builds, after the hooks, is accepted by the API server; run by the
    kubelet, its container sees its own name, UID and namespace, the backend and the policy."""
    script = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {list(ENV_NAMES)!r}}}))"
    hub_config.KubeSpawner.cmd = ["python", "-c", script]
    # As docs/kubernetes.md suggests without the hooks: the hook must not add a second one.
    hub_config.KubeSpawner.environment = {
        "JUPYTER_POD_NAME": {"valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}}
    hub_config.RayKubeHubPolicy.max_cpus = 16
    hub_config.RayKubeHubPolicy.group_policies = {"gpu-users": {"max_gpus": 2}}

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], Any]:
        spawner = make_spawner(hub_config, groups=("gpu-users",))
        await hub.pre_spawn_hook(spawner)
        pod = await spawner.get_pod_manifest()
        before = as_json(copy.deepcopy(pod), spawner)
        pod = hub.modify_pod_hook(spawner, pod)
        created = await spawner.api.create_namespaced_pod(spawner.namespace, pod)
        return before, as_json(pod, spawner), created

    before, after, created = run(scenario)
    assert_no_invalid_objects(kube_fault_proxy)
    policy = {**NO_CAPS, "max_cpus": 16, "max_gpus": 2}
    names = [e["name"] for e in env_of(after)]
    assert len(names) == len(set(names)), names
    assert env_of(after)[:len(env_of(before))] == env_of(before)  # what was there stays, in order
    assert env_of(after)[len(env_of(before)):] == [
        {"name": "JUPYTER_POD_UID", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}}},
        {"name": "RAYKUBE_NAMESPACE",
         "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
        {"name": "RAYKUBE_BACKEND", "value": "kubernetes"},
        {"name": "RAYKUBE_POLICY", "value": json.dumps(policy, separators=(",", ":"))},
    ]
    assert (after["spec"]["serviceAccountName"], after["spec"]["automountServiceAccountToken"]) == (ACCOUNT, True)
    # What Pod Security "restricted" asks, where KubeSpawner left it unset; nothing else changed.
    assert after["spec"]["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert after["spec"]["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert after["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    for manifest in (before, after):
        manifest["spec"]["containers"][0].pop("env")
        manifest["spec"]["containers"][0].pop("securityContext", None)
        for key in ("serviceAccountName", "automountServiceAccountToken", "securityContext"):
            manifest["spec"].pop(key, None)
    assert after == before

    v1 = CoreV1Api(kube_admin)
    name = created.metadata.name
    wait_until(lambda: v1.read_namespaced_pod(name, hub_ns).status.phase == "Succeeded", timeout_s=30,
               what=f"Pod {name} to run and exit")
    seen = json.loads(v1.read_namespaced_pod_log(name, hub_ns).strip().splitlines()[-1])
    assert seen == {"JUPYTER_POD_NAME": name, "JUPYTER_POD_UID": created.metadata.uid, "RAYKUBE_NAMESPACE": hub_ns,
                    "RAYKUBE_BACKEND": "kubernetes", "RAYKUBE_POLICY": json.dumps(policy, separators=(",", ":"))}


@pytest.mark.k8s
def test_profile_choice_sets_policy_and_namespace(hub_config: Config, hub_ns: str, kube_fault_proxy: FaultProxy,
                                                  kube_admin: ApiClient,
                                                  make_kube_namespace: Callable[..., str]) -> None:
    """A chosen profile's caps tighten the user's policy (through KubeSpawner's own override
    merging), the hook keeps that RAYKUBE_POLICY, and a profile that sets `namespace` gets its
    ServiceAccount, Role and RoleBinding there."""
    team = make_kube_namespace("team-ml")
    grant_hub(kube_admin, "Role", team, hub_ns)
    hub_config.RayKubeHubPolicy.max_cpus = 16
    hub_config.RayKubeHubPolicy.max_lifetime_s = 3600
    hub_config.RayKubeHubPolicy.group_policies = {"gpu-users": {"max_gpus": 2}}
    hub_config.KubeSpawner.environment = {"TEAM": "{username}"}
    hub_config.KubeSpawner.profile_list = hub.ray_profile_list([
        *hub.DEFAULT_PROFILES,
        hub.RayProfile("team", "Team GPU", "", {"max_gpus": 1}, kubespawner_override={"namespace": team})])

    async def spawn(profile: str) -> tuple[str, dict[str, Any]]:
        spawner = make_spawner(hub_config, groups=("gpu-users",), profile=profile)
        await hub.pre_spawn_hook(spawner)
        await spawner.load_user_options()  # what KubeSpawner's start() does next
        pod = hub.modify_pod_hook(spawner, await spawner.get_pod_manifest())
        await spawner.api.create_namespaced_pod(spawner.namespace, pod)
        return spawner.namespace, as_json(pod, spawner)

    namespace, pod = run(lambda: spawn("ray-gpu"))
    assert namespace == hub_ns
    policies = [e["value"] for e in env_of(pod) if e["name"] == "RAYKUBE_POLICY"]
    assert [json.loads(p) for p in policies] == [
        {**NO_CAPS, "max_cpus": 16, "max_gpus": 2, "max_workers": 8, "max_lifetime_s": 3600}]
    assert {"name": "TEAM", "value": "alice-example-com---ff8d9819"} in env_of(pod)  # other env untouched

    namespace, pod = run(lambda: spawn("team"))
    assert namespace == team
    assert [json.loads(e["value"]) for e in env_of(pod) if e["name"] == "RAYKUBE_POLICY"] == [
        {**NO_CAPS, "max_cpus": 16, "max_gpus": 1, "max_lifetime_s": 3600}]
    rbac = RbacAuthorizationV1Api(kube_admin)
    assert rbac.read_namespaced_role(ACCOUNT, team).rules[0].resources == ["pods"]
    assert_no_invalid_objects(kube_fault_proxy)


# --- (b) the user's ServiceAccount, Role and RoleBinding ---------------------------------------


@pytest.fixture
def rbac_api(kube_admin: ApiClient) -> RbacAuthorizationV1Api:
    return RbacAuthorizationV1Api(kube_admin)


def assert_user_rbac(kube_api_client: ApiClient, namespace: str) -> None:
    rbac = RbacAuthorizationV1Api(kube_api_client)
    labels = {"app.kubernetes.io/managed-by": "jupyter-raykube", "raykube.io/owner": OWNER_LABEL}
    sa = as_json(CoreV1Api(kube_api_client).read_namespaced_service_account(ACCOUNT, namespace))
    role = as_json(rbac.read_namespaced_role(ACCOUNT, namespace))
    binding = as_json(rbac.read_namespaced_role_binding(ACCOUNT, namespace))
    assert all(obj["metadata"]["labels"] == labels for obj in (sa, role, binding))
    assert role["rules"] == [dict(rule) for rule in hub.ROLE_RULES]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": namespace}]
    # The server Pod (KubeSpawner's labels) may connect to this user's Ray Pods, and to nothing more
    egress = as_json(NetworkingV1Api(kube_api_client).read_namespaced_network_policy(ACCOUNT, namespace))
    assert egress["metadata"]["labels"] == labels
    assert egress["spec"] == {
        "podSelector": {"matchLabels": {"component": "singleuser-server", "hub.jupyter.org/servername": "",
                                        "hub.jupyter.org/username": ACCOUNT.removeprefix("raykube-")}},
        "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": {"matchLabels": labels}}]}]}


@pytest.mark.k8s
def test_pre_spawn_hook_creates_rbac_idempotently_and_repairs_it(hub_config: Config, hub_ns: str,
                                                                 kube_fault_proxy: FaultProxy, kube_admin: ApiClient,
                                                                 rbac_api: RbacAuthorizationV1Api) -> None:
    async def hook() -> None:
        await hub.pre_spawn_hook(make_spawner(hub_config))

    kube_fault_proxy.clear_requests()
    run(hook)
    calls = api_calls(kube_fault_proxy)
    assert_user_rbac(kube_admin, hub_ns)

    # Again: nothing is created or changed.
    kube_fault_proxy.clear_requests()
    run(hook)
    assert not [r for r in kube_fault_proxy.requests() if r.method != "GET" and r.status < 400]
    assert_user_rbac(kube_admin, hub_ns)

    # Someone widened the Role and pointed the binding at another role: both are put back.
    rbac_api.patch_namespaced_role(ACCOUNT, hub_ns, {"rules": [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]})
    rbac_api.delete_namespaced_role_binding(ACCOUNT, hub_ns)
    rbac_api.create_namespaced_role_binding(hub_ns, {
        "metadata": {"name": ACCOUNT}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                   "name": "admin"},
        "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": hub_ns}]})
    kube_fault_proxy.clear_requests()
    run(hook)
    calls |= api_calls(kube_fault_proxy)
    assert_no_invalid_objects(kube_fault_proxy)
    assert_user_rbac(kube_admin, hub_ns)
    assert ("rbac.authorization.k8s.io", "roles", "update") in calls
    assert ("rbac.authorization.k8s.io", "rolebindings", "delete") in calls
    assert calls <= granted(documented_hub_rules("Role")), calls - granted(documented_hub_rules("Role"))


@pytest.mark.k8s
def test_per_user_namespace(hub_config: Config, hub_ns: str, kube_fault_proxy: FaultProxy, kube_admin: ApiClient,
                            kube_control_plane: ControlPlane) -> None:
    """By default (enable_user_namespaces not set) the hook makes the user's namespace
    (KubeSpawner would only in start()), labelled for Pod Security "restricted", with the
    quota of the policy, puts the objects there, and the server's Pod passes admission there."""
    grant_hub(kube_admin, "ClusterRole", "", hub_ns)
    del hub_config.KubeSpawner["enable_user_namespaces"], hub_config.RayKubeHubPolicy["allow_shared_namespace"]
    hub_config.RayKubeHubPolicy.max_cpus = 8
    # KubeSpawner's default is {hubnamespace}-{username}; this test's hub namespace keeps it unique
    hub_config.KubeSpawner.user_namespace_template = hub_ns + "-{username}"
    hub_config.KubeSpawner.user_namespace_labels = {"team": "ml"}

    async def scenario() -> tuple[str, Any]:
        spawner = make_spawner(hub_config)
        await hub.pre_spawn_hook(spawner)
        await hub.pre_spawn_hook(spawner)
        pod = hub.modify_pod_hook(spawner, await spawner.get_pod_manifest())
        return spawner.namespace, await spawner.api.create_namespaced_pod(spawner.namespace, pod)

    kube_fault_proxy.clear_requests()
    user_namespace = f"{hub_ns}-alice-example-com---ff8d9819"
    try:
        namespace, created = run(scenario)
        calls = api_calls(kube_fault_proxy) - {("", "pods", "create")}  # KubeSpawner's own call
        assert_no_invalid_objects(kube_fault_proxy)
        assert namespace == user_namespace
        v1 = CoreV1Api(kube_admin)
        labels = v1.read_namespace(namespace).metadata.labels
        assert (labels["team"], labels["pod-security.kubernetes.io/enforce"]) == ("ml", "restricted")
        # 8 CPUs for Ray + the server's own request (KubeSpawner sets none: the LimitRange's 100m)
        assert v1.read_namespaced_resource_quota("raykube", namespace).spec.hard == {"requests.cpu": "8100m"}
        assert_user_rbac(kube_admin, namespace)
        assert created.metadata.namespace == namespace and created.spec.service_account_name == ACCOUNT
        allowed = granted(documented_hub_rules("ClusterRole"))
        assert ("", "namespaces", "create") in calls and calls <= allowed, calls - allowed
    finally:
        kube_control_plane.delete_namespace(user_namespace)
        RbacAuthorizationV1Api(kube_admin).delete_cluster_role_binding(f"raykube-hub-{hub_ns}")

