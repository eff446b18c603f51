"""Who gets how much, from jupyterhub_config.py (`c.RayKubeHubPolicy`): the caps of each user
(defaults, then their groups, then their own entry), checked so a bad setting is named when the
hub starts. `hub.py` re-exports everything here; see its docstring for the hooks.

Like `hub.py`, this module imports neither kubespawner nor a Kubernetes client at import time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from .policy import POLICY_ENV, Policy
from .scheduling import SCHEDULING_FIELDS

if TYPE_CHECKING:
    from kubespawner import KubeSpawner

ENV_POLICY = POLICY_ENV

COUNT_KEYS = ("max_gpus", "max_workers", "max_clusters")
LIST_KEYS = ("user_scheduling",)  # a set of allowed names: looser is the union, tighter the intersection
POLICY_KEYS = tuple(f.name for f in fields(Policy))  # the server reads exactly these (policy.py)

Cap = float | int | tuple[str, ...] | None


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
        if key in LIST_KEYS:
            if not isinstance(value, (list, tuple)) or not set(value) <= set(SCHEDULING_FIELDS):
                raise ValueError(f"{where}: {key} must be a list of any of {', '.join(SCHEDULING_FIELDS)}, "
                                 f"not {value!r}")
            checked[key] = tuple(value)
            continue
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
    if isinstance(a, tuple) and isinstance(b, tuple):
        return tuple(dict.fromkeys(a + b))
    return None if a is None or b is None else max(a, b)  # type: ignore[type-var]


def _tighter(a: Cap, b: Cap) -> Cap:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return tuple(k for k in a if k in b)
    return b if a is None else a if b is None else min(a, b)  # type: ignore[type-var]


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

    budget = Float(None, allow_none=True, min=0, config=True, help="""What all of a user's clusters
        on their server may cost, in the unit of the groups' `cost` (a price per node-hour, e.g.
        c.KubernetesBackend.default_worker_groups with "cost": 0.4). At 80 % an event warns, at
        100 % every group is scaled to 0 workers. Counted since the server started. None: no budget.""")

    user_scheduling = List(Enum(list(SCHEDULING_FIELDS)), config=True, help="""Which of a worker group's
        Kubernetes scheduling fields users may set in their own requests (the REST `scheduling`
        object, `%raycluster start --gpu-type/--market`): any of node_selector, tolerations,
        affinity, priority_class_name, runtime_class_name, accelerator_type, market_type. Empty
        (the default): none; their groups are placed only as c.KubernetesBackend configures. Say
        ["accelerator_type", "market_type"] to let users pick a GPU model and spot capacity. The
        user's token can create Pods directly, so this is a guard on what the server builds; pair
        a priority class with a ResourceQuota scoped to it, as Kubernetes advises.""")

    group_policies = Dict(config=True, help="""Caps by JupyterHub group name, e.g.
        {"gpu-users": {"max_gpus": 4}, "students": {"max_cpus": 4, "max_clusters": 1}}.
        Only the keys given change; a user in several groups gets, key by key, the most
        generous value (None, no cap, beats any number).""")

    user_policies = Dict(config=True, help="""Caps by user name, applied after the groups':
        {"alice": {"max_cpus": 64, "max_lifetime_s": None}}.""")

    allow_shared_namespace = Bool(False, config=True, help="""Let servers run in a namespace that
        other users' servers share (c.KubeSpawner.enable_user_namespaces = False, or a profile's
        `namespace`). Off by default, and the spawn is refused, because in a shared namespace every
        user's token can read and delete the other users' Ray Pods, Services and logs, get their
        Ray token Secrets by name, and get any other Secret in that namespace whose name it knows
        (the hub's own, if it is the hub's namespace). Turn on only if all users trust each other.""")

    max_memory = Unicode(None, allow_none=True, config=True, help="""Memory (a Kubernetes quantity,
        e.g. "64Gi") that all of a user's Pods may request together, their server's own request
        added on top; enforced only by the ResourceQuota in the user's namespace. None: no cap.""")

    accelerator_resources = List(Unicode(), ["nvidia.com/gpu"], config=True, help="""Extended resources
        that count as GPUs: each gets a `requests.<name>` of max_gpus in the user's ResourceQuota,
        e.g. ["nvidia.com/gpu", "amd.com/gpu"].""")

    service_account_template = Unicode("raykube-{username}", config=True, help="""Name of the
        ServiceAccount (and of its Role and RoleBinding) each user's server runs as, with
        KubeSpawner's template fields ({username}, {userid}, {servername}, ...). Per user by
        default. A fixed name makes every server in a namespace share one account.""")

    @validate("max_memory")
    def _check_memory(self, proposal: Any) -> str | None:
        from kubernetes.utils import parse_quantity

        try:
            if proposal["value"] is not None:
                parse_quantity(proposal["value"])
        except ValueError:
            raise TraitError(f"max_memory must be a Kubernetes quantity such as '64Gi', "
                             f"not {proposal['value']!r}") from None
        return proposal["value"]

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


def server_caps(spawner: KubeSpawner) -> Policy:
    """The caps the server will get: its chosen profile's RAYKUBE_POLICY (in `environment` once
    the profile is applied), else the user's; the ResourceQuota is written from these."""
    value = (spawner.environment or {}).get(ENV_POLICY)
    if callable(value):
        return Policy.from_mapping(json.loads(value(spawner)))
    return user_caps(spawner)
