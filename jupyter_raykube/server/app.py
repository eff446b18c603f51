"""`RayKube`: the extension app. It builds the manager from the server's config, routes the REST
API and the dashboard proxy, tells the kernels it starts where the API is, and runs the autoscaler loops on the
server's event loop (started once the loop runs, cancelled and awaited at shutdown)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Bool, Int, default

from ..client import SERVER_TOKEN_ENV, SERVER_URL_ENV
from ..job_logs import JobLogFollowers
from ..manager import ClusterManager
from .handlers import ClusterEventsHandler, ClusterHandler, ClustersHandler, InfoHandler
from .job_handlers import (JOB_LOGS_SETTING, UPLOAD_LIMIT_SETTING, JobHandler, JobLogsHandler, JobsHandler,
                           JobStopHandler, NodeLogsHandler, PackageHandler)
from .proxy import DashboardProxyHandler

_NAME = r"(?P<name>[^/]+)"
_JOB = r"(?P<job>[^/]+)"


class RayKube(ExtensionApp):
    """Per-user Ray clusters for this Jupyter server.

    The app holds only what is about serving HTTP (`c.RayKube.restrict_to_owner`); everything
    about clusters is configured once, on the manager it builds from this server's config
    (`c.ClusterManager.*`, `c.LocalBackend.*`, `c.KubernetesBackend.*`)."""

    name = "jupyter_raykube"

    restrict_to_owner = Bool(config=True, help="""Only the user the clusters belong to (their
        raykube.io/owner, $JUPYTERHUB_USER) may use any route of this extension: the REST API
        and the dashboard proxy, HTTP and websocket. Anyone else the server lets in (a Hub
        admin) gets 403. Default: true under JupyterHub, where callers have names; a standalone
        server's callers are anonymous.""")

    max_upload_bytes = Int(100 * 1024**2, config=True, help="""Largest working dir (zipped) that
        `%rayjob --working-dir` may upload to a cluster, in bytes. Ray's GCS keeps packages in
        memory; put data sets in storage the job reads, not in the working dir. Tornado refuses
        bodies over c.ServerApp.max_body_size (100 MiB by default) before this is checked.""")

    @default("restrict_to_owner")
    def _default_restrict(self) -> bool:
        return bool(os.environ.get("JUPYTERHUB_USER"))

    def initialize_settings(self) -> None:
        # Only what the server alone knows, and only where the user's config left it unset.
        known = {"dashboard_url_template": url_path_join(self.serverapp.base_url, "raykube/clusters/{name}/dashboard/")}
        configured = self.config.get("ClusterManager", {})
        manager = ClusterManager(parent=self, **{k: v for k, v in known.items() if k not in configured})
        self.settings["raykube_manager"] = manager
        self.settings["raykube_restrict_to_owner"] = self.restrict_to_owner
        self.settings[UPLOAD_LIMIT_SETTING] = self.max_upload_bytes
        self.settings[JOB_LOGS_SETTING] = JobLogFollowers()
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
            (rf"/{api}/clusters/{_NAME}/jobs/?", JobsHandler),
            (rf"/{api}/clusters/{_NAME}/jobs/{_JOB}/?", JobHandler),
            (rf"/{api}/clusters/{_NAME}/jobs/{_JOB}/logs/?", JobLogsHandler),
            (rf"/{api}/clusters/{_NAME}/jobs/{_JOB}/stop/?", JobStopHandler),
            (rf"/{api}/clusters/{_NAME}/packages/(?P<package>[^/]+)/?", PackageHandler),
            (rf"/{api}/clusters/{_NAME}/nodes/(?P<node>[^/]+)/logs/?", NodeLogsHandler),
            (rf"/raykube/clusters/{_NAME}/dashboard/?(?P<path>.*)", DashboardProxyHandler),
        ])

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        manager: ClusterManager = self.settings["raykube_manager"]
        self._serve_task = asyncio.ensure_future(manager.serve())

    async def stop_extension(self) -> None:
        await self.settings[JOB_LOGS_SETTING].close()
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
