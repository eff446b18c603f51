"""`RayKube`: the extension app. It builds the manager, routes the REST API and the dashboard
proxy, tells the kernels it starts where the API is, and runs the autoscaler loops on the
server's event loop (started once the loop runs, cancelled and awaited at shutdown)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Bool, CaselessStrEnum, Dict, Float, Int, List, Type, Unicode, default

from ..backends.base import Backend
from ..backends.registry import CHOICES, backend_setting_from_env, resolve_backend
from ..client import SERVER_TOKEN_ENV, SERVER_URL_ENV
from ..manager import ClusterManager
from ..policy import Policy
from .handlers import ClusterEventsHandler, ClusterHandler, ClustersHandler, InfoHandler
from .proxy import DashboardProxyHandler

_NAME = r"(?P<name>[^/]+)"


class RayKube(ExtensionApp):
    """Per-user Ray clusters for this Jupyter server (`c.RayKube.*`)."""

    name = "jupyter_raykube"

    backend = CaselessStrEnum(CHOICES, config=True, help="""Where new clusters run: "local"
        (`ray start` processes next to this server), "kubernetes" (Pods), or "auto":
        kubernetes when this server runs in a Pod with a service account or a kubeconfig with
        a current context exists, else local. A request may still name either backend.
        Configure each with its own section (c.LocalBackend.*, c.KubernetesBackend.*).
        Default: $RAYKUBE_BACKEND (the JupyterHub hook sets it), else auto.""")

    backend_class = Type(None, klass=Backend, allow_none=True, config=True, help="""A Backend
        subclass to use instead of the one `backend` names (a plug-in point: tests inject a
        backend that refuses every start this way).""")

    max_clusters = Int(10, config=True, help="Clusters one user may run at once through this server.")

    default_groups = List(Dict(), config=True, help="""Worker groups of new clusters, as REST
        group objects: [{"name": "cpu", "cpus": 2, "max": 4}, {"name": "gpu", "gpus": 1, "max": 1}].
        Empty: a cpu group (1 CPU per node, up to one node per core here) and a gpu group (up
        to the GPUs this machine has). A request changes them with `groups`.""")

    max_workers = Int(None, allow_none=True, config=True, help="""Worker nodes a new cluster may
        have in all groups together. None: each group's max is the only limit.""")

    idle_timeout = Float(60.0, config=True, help="""Seconds a worker node may stay idle before
        the autoscaler drains and removes it (a request's `idle_timeout_s` overrides it).""")

    image = Unicode("", config=True, help="""Container image of Kubernetes clusters. Empty: the
        rayproject/ray image matching the kernel's Ray and Python versions.""")

    namespace = Unicode("", config=True, help="""Kubernetes namespace of the clusters' Pods.
        Empty: $RAYKUBE_NAMESPACE, else this server's own Pod's namespace, else the kubeconfig
        context's, else "default".""")

    stop_clusters_on_shutdown = Bool(config=True, help="""Stop this server's clusters when it
        shuts down. With False they keep running and the next server finds them again by name.
        Default: True for the local backend (its processes would otherwise outlive the server).""")

    @default("backend")
    def _default_backend(self) -> str:
        return backend_setting_from_env()

    @default("stop_clusters_on_shutdown")
    def _default_stop(self) -> bool:
        if self.backend_class is not None:
            return self.backend_class.name == "local"
        return resolve_backend(self.backend) == "local"

    restrict_to_owner = Bool(config=True, help="""Only the user the clusters belong to (their
        raykube.io/owner, $JUPYTERHUB_USER) may list or change them through the API; anyone
        else the server lets in (a Hub admin) gets 403. Default: true under JupyterHub, where
        callers have names; a standalone server's callers are anonymous.""")

    policy = Dict(config=True, help="""Limits for this server's user, as the JSON
        $RAYKUBE_POLICY holds: {"max_cpus": 16, "max_gpus": 1, "max_workers": 8,
        "max_clusters": 2, "max_lifetime_s": 28800, "idle_scale_down_s": 1800,
        "idle_stop_s": 7200}; null or absent means no limit. Empty: $RAYKUBE_POLICY (the
        JupyterHub hook sets it), else no limits.""")

    @default("restrict_to_owner")
    def _default_restrict(self) -> bool:
        return bool(os.environ.get("JUPYTERHUB_USER"))

    def initialize_settings(self) -> None:
        base_url = self.serverapp.base_url
        chosen: dict[str, Any] = {"backend": self.backend_class(parent=self)} if self.backend_class is not None else {}
        if self.policy:
            chosen["policy"] = Policy.from_mapping(self.policy)
        manager = ClusterManager(
            parent=self, default_backend=self.backend, **chosen, max_clusters=self.max_clusters,
            default_groups=self.default_groups, max_workers=self.max_workers, idle_timeout=self.idle_timeout,
            image=self.image, namespace=self.namespace,
            stop_clusters_on_close=self.stop_clusters_on_shutdown,
            adopt_on_start=not self.stop_clusters_on_shutdown,
            dashboard_url_template=url_path_join(base_url, "raykube/clusters/{name}/dashboard/"))
        self.settings["raykube_manager"] = manager
        self.settings["raykube_restrict_to_owner"] = self.restrict_to_owner
        self._serve_task: asyncio.Task[None] | None = None
        # Kernels this server starts inherit these, so `%raycluster` talks to this API. They
        # are put back at shutdown: another server in this process must not inherit a dead URL.
        self._env_before = {key: os.environ.get(key) for key in (SERVER_URL_ENV, SERVER_TOKEN_ENV)}
        os.environ[SERVER_URL_ENV] = self._local_url()
        os.environ[SERVER_TOKEN_ENV] = self.serverapp.identity_provider.token or ""

    def initialize_handlers(self) -> None:
        api = "raykube/api"
        self.handlers.extend([
            (rf"/{api}/?", InfoHandler),
            (rf"/{api}/clusters/?", ClustersHandler),
            (rf"/{api}/clusters/{_NAME}/?", ClusterHandler),
            (rf"/{api}/clusters/{_NAME}/events/?", ClusterEventsHandler),
            (rf"/raykube/clusters/{_NAME}/dashboard/?(?P<path>.*)", DashboardProxyHandler),
        ])

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        manager: ClusterManager = self.settings["raykube_manager"]
        self._serve_task = asyncio.ensure_future(manager.serve())

    async def stop_extension(self) -> None:
        for key, value in getattr(self, "_env_before", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._serve_task is not None:
            self._serve_task.cancel()  # serve() stops owned clusters in its finally
            try:
                await self._serve_task
            except asyncio.CancelledError:
                pass

    def _local_url(self) -> str:
        """The server as seen from its own kernels (same machine or Pod)."""
        app = self.serverapp
        host = "127.0.0.1" if app.ip in ("", "0.0.0.0", "localhost", "*", "::") else app.ip
        return f"http://{host}:{app.port}{app.base_url}"
