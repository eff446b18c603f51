"""`RayKube`: the extension app. It builds the manager, routes the REST API and the dashboard
proxy, tells the kernels it starts where the API is, and runs the autoscaler loops on the
server's event loop (started once the loop runs, cancelled and awaited at shutdown)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Bool, Int, Type, default

from ..backends.base import Backend
from ..backends.local import LocalBackend
from ..client import SERVER_TOKEN_ENV, SERVER_URL_ENV
from ..manager import ClusterManager
from .handlers import ClusterEventsHandler, ClusterHandler, ClustersHandler, InfoHandler
from .proxy import DashboardProxyHandler

_NAME = r"(?P<name>[^/]+)"


class RayKube(ExtensionApp):
    """Per-user Ray clusters for this Jupyter server (`c.RayKube.*`)."""

    name = "jupyter_raykube"

    backend_class = Type(LocalBackend, klass=Backend, config=True, help="""Where clusters run.
        The default runs local `ray start` processes; `...backends.kubernetes.KubernetesBackend`
        runs Pods. Configure the chosen class with its own section (c.LocalBackend.*).""")

    max_clusters = Int(10, config=True, help="Clusters one user may run at once through this server.")

    stop_clusters_on_shutdown = Bool(config=True, help="""Stop this server's clusters when it
        shuts down. With False they keep running and the next server finds them again by name.
        Default: True for the local backend (its processes would otherwise outlive the server).""")

    @default("stop_clusters_on_shutdown")
    def _default_stop(self) -> bool:
        return self.backend_class is LocalBackend or issubclass(self.backend_class, LocalBackend)

    def initialize_settings(self) -> None:
        base_url = self.serverapp.base_url
        manager = ClusterManager(
            parent=self, backend=self.backend_class(parent=self), max_clusters=self.max_clusters,
            stop_clusters_on_close=self.stop_clusters_on_shutdown,
            adopt_on_start=not self.stop_clusters_on_shutdown,
            dashboard_url_template=url_path_join(base_url, "raykube/clusters/{name}/dashboard/"))
        self.settings["raykube_manager"] = manager
        self._serve_task: asyncio.Task[None] | None = None
        # Kernels this server starts inherit these, so `%raycluster` talks to this API.
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
