"""What a `ClusterManager` is configured with (`c.ClusterManager.*`, each option declared
once, here) and what follows from it alone: the default backend, and what a new cluster gets
when its request does not say (groups, sizes, idle timeout, image, a free name). The manager
(manager.py) inherits this and does the work; keeping the two apart keeps each readable."""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir
from traitlets import Bool, CaselessStrEnum, Dict, Float, Instance, Int, List, TraitError, Type, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from .backends.base import Backend
from .backends.registry import AUTO, CHOICES, backend_setting_from_env, build_backend, resolve_backend
from .errors import SpecError
from .policy import Policy, PolicyTrait
from .spec import DEFAULT_IDLE_TIMEOUT_S, ClusterSpec, WorkerGroup, parse_group_setting

_NAME_CHARS = re.compile(r"[^a-z0-9-]+")


class ManagerSettings(LoggingConfigurable):
    """The options; traitlets reads them from the `ClusterManager` section too (it matches
    every class of the instance's MRO), which is the name the docs use."""

    default_backend = CaselessStrEnum(CHOICES, config=True, help="""Backend of clusters whose
        spec does not name one: "local" (ray start processes on this machine), "kubernetes"
        (Pods), or "auto": kubernetes when this server runs in a Pod with a service account or a
        kubeconfig with a current context exists, else local. Default: $RAYKUBE_BACKEND, else auto.""")

    backend_class = Type(None, klass=Backend, allow_none=True, config=True, help="""A Backend
        subclass for clusters whose spec does not name a backend, instead of the one
        `default_backend` names (a plug-in point: tests inject a backend that refuses every
        start this way).""")

    backend = Instance(Backend, help="""The default backend, built from `backend_class` or
        `default_backend` unless given.""")

    owner = Unicode(config=True, help="The user clusters are created for (a label on every node).")

    token_path = Unicode(config=True, help="""File holding this user's Ray token (created on first
        use, mode 0600). Default: <jupyter runtime dir>/raykube/auth_token.""")

    autoscale_interval_s = Float(1.0, config=True, help="""Seconds between autoscaler rounds
        of a cluster nobody uses. While a driver is connected, demand is pending, a node drains
        or launches wait for a slot, rounds come every 0.25 s.""")
    max_launch_in_flight = Int(None, allow_none=True, config=True, help="""Worker nodes
        starting at once, per cluster. None: the backend's suggestion (local: two per core, at
        least 4; Kubernetes: 8).""")
    join_timeout_s = Float(120.0, config=True, help="A worker that has not joined Ray by then is removed.")
    backoff_s = Float(60.0, config=True, help="How long a group that failed to start a node waits.")
    start_timeout_s = Float(180.0, config=True, help="Seconds a new cluster may take to be ready.")
    max_clusters = Int(10, allow_none=True, config=True, help="""Clusters this manager (a Jupyter
        server, or a kernel without one) may run at once; None: no limit. An administrator's
        `policy` may allow fewer.""")

    stop_clusters_on_close = Bool(config=True, help="""Stop the clusters this manager started
        when it closes (the Jupyter server shuts down, the kernel exits). With False they keep
        running and are found again by name. Default: True for local clusters (processes of
        this machine would otherwise outlive their server); False on Kubernetes, where the next
        server adopts them and their Pods die with the server's Pod anyway.""")

    adopt_on_start = Bool(config=True, help="""When the manager starts, autoscale this owner's
        running clusters (found by the backend) as if started here, so a restarted server takes
        over the clusters it left running. Default: the opposite of `stop_clusters_on_close`.""")

    # --- what a new cluster gets when its request does not say ----------------------------------

    default_groups = List(Dict(), config=True, help="""Worker groups of new clusters, as REST group
        objects: [{"name": "cpu", "cpus": 2, "max": 4}, {"name": "gpu", "gpus": 1, "max": 1}].
        Empty: the backend's own. Local: a cpu group (1 CPU per node, up to one node per core
        of this machine) and a gpu group (up to the GPUs this machine has); Kubernetes:
        KubernetesBackend.default_worker_groups, sized for the node pools, not this server's
        Pod. A request changes them with `groups`.""")
    max_workers = Int(None, allow_none=True, config=True, help="""Worker nodes a new cluster may
        have in all groups together (None: each group's max is the only limit).""")
    idle_timeout = Float(DEFAULT_IDLE_TIMEOUT_S, config=True, help="""Seconds a worker node may
        stay idle before the autoscaler drains and removes it (a request's `idle_timeout_s`
        overrides it).""")
    image = Unicode("", config=True, help="""Container image of new Kubernetes clusters. Empty:
        the rayproject/ray image matching this kernel's Ray and Python versions.""")
    namespace = Unicode("", config=True, help="""Namespace of Kubernetes clusters. Empty: the
        Kubernetes backend's own default (c.KubernetesBackend.namespace, $RAYKUBE_NAMESPACE,
        this server's own Pod's namespace, the kubeconfig context's).""")

    policy = PolicyTrait(config=True, help="""This user's limits, as the JSON $RAYKUBE_POLICY
        holds: {"max_cpus": 16, "max_gpus": 1, "max_workers": 8, "max_clusters": 2,
        "max_lifetime_s": 28800, "idle_scale_down_s": 1800, "idle_stop_s": 7200}; null or
        absent means no limit. Default: $RAYKUBE_POLICY (the JupyterHub hook sets it), else no
        limits.""")

    dashboard_url_template = Unicode("", config=True, help="""URL of a cluster's dashboard,
        with {name} and {address} filled in. Empty: the dashboard's own http://address (the
        Jupyter server sets its proxy's URL).""")

    @default("owner")
    def _default_owner(self) -> str:
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()

    @validate("default_groups")
    def _check_default_groups(self, proposal: Any) -> list[dict[str, Any]]:
        _parse_default_groups(proposal["value"])  # a bad setting fails at start-up, not per request
        return proposal["value"]

    @default("policy")
    def _default_policy(self) -> Policy:
        return Policy.from_env()

    @default("default_backend")
    def _default_default_backend(self) -> str:
        return backend_setting_from_env()

    @default("stop_clusters_on_close")
    def _default_stop(self) -> bool:
        return self.backend.name == "local"

    @default("adopt_on_start")
    def _default_adopt(self) -> bool:
        return not self.stop_clusters_on_close

    @default("backend")
    def _default_backend(self) -> Backend:
        if self.backend_class is not None:
            return self.backend_class(parent=self)
        name = resolve_backend(self.default_backend)
        try:
            return self._build_backend(name)
        except SpecError as exc:
            if self.default_backend != AUTO:
                raise
            self.log.warning("Ray clusters run locally: %s", exc)
            return self._build_backend("local")

    @default("token_path")
    def _default_token_path(self) -> str:
        return str(Path(jupyter_runtime_dir()) / "raykube" / "auth_token")

    def spec_from_request(self, request: Mapping[str, Any]) -> ClusterSpec:
        """A full spec from a (partial) request body: what it leaves out comes from this
        manager's defaults. Bad input raises SpecError naming the field."""
        if not isinstance(request, Mapping) or not isinstance(request.get("name"), str):
            raise SpecError("name", request.get("name") if isinstance(request, Mapping) else request,
                            'a JSON object with a "name" string, e.g. {"name": "alice-1"}')
        return ClusterSpec.from_dict(request, defaults=self._defaults(request["name"], request.get("backend")))

    def _defaults(self, name: str, backend: Any) -> ClusterSpec:
        backend = backend or self.backend.name
        if not isinstance(backend, str):
            raise SpecError("backend", backend, "local or kubernetes")
        groups = self._new_cluster_groups(backend)
        return ClusterSpec(name=name, backend=backend, groups=groups,
                           idle_timeout_s=self.idle_timeout, max_workers=self.max_workers,
                           image=self.image or None)

    def _free_name(self, taken: set[str]) -> str:
        """`<owner>-<n>`, the smallest n not in use (the owner made a valid DNS label)."""
        owner = _NAME_CHARS.sub("-", self.owner.lower()).strip("-")[:30].strip("-") or "ray"
        return next(f"{owner}-{n}" for n in range(1, 100_000) if f"{owner}-{n}" not in taken)

    _groups_by_backend: dict[str, tuple[WorkerGroup, ...]] | None = None

    def _new_cluster_groups(self, backend: str) -> tuple[WorkerGroup, ...]:
        """Computed once per backend: the local default asks the GPU driver how many GPUs there
        are, which is not something to repeat on the server's event loop for every request."""
        if self._groups_by_backend is None:
            self._groups_by_backend = {}
        if backend not in self._groups_by_backend:
            self._groups_by_backend[backend] = self._groups_of(backend)
        return self._groups_by_backend[backend]

    def _groups_of(self, backend: str) -> tuple[WorkerGroup, ...]:
        """The administrator's default_groups, else what the backend's machines offer (this
        machine's cores and GPUs locally; KubernetesBackend.default_worker_groups on Kubernetes)."""
        if self.default_groups:
            return _parse_default_groups(self.default_groups)
        return self.backend_for(backend).default_groups()  # type: ignore[attr-defined]

    def _build_backend(self, name: str) -> Backend:
        return build_backend(name, parent=self, namespace=self.namespace)


def _parse_default_groups(items: list[dict[str, Any]]) -> tuple[WorkerGroup, ...]:
    try:
        return parse_group_setting("default_groups", items)
    except SpecError as exc:
        raise TraitError(str(exc)) from None
