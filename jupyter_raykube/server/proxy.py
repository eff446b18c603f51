"""`{base_url}raykube/clusters/{name}/dashboard/...`: the cluster's Ray dashboard behind the
Jupyter server's own authentication, so it works under JupyterHub and HTTPS without exposing
the dashboard port. The Ray token is added here (Ray's `X-Ray-Authorization` header for
proxies); the browser never sees it, and Jupyter's credentials are not passed on."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from tornado import httpclient, web

from ..backends.base import ClusterNotFound
from ..manager import ClusterManager

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade", "content-length", "content-encoding"}
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "authorization", "cookie", "x-xsrftoken", "x-ray-authorization"}


class DashboardProxyHandler(JupyterHandler):
    auth_resource = "raykube"
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

    @property
    def manager(self) -> ClusterManager:
        return self.settings["raykube_manager"]

    @web.authenticated
    @authorized  # the auth action comes from the request's method, so one handler serves all
    async def _handle(self, name: str, path: str) -> None:
        await self._proxy(name, path)

    get = head = post = put = patch = delete = _handle

    async def _proxy(self, name: str, path: str) -> None:
        try:
            cluster = await self.manager.get(name)
        except ClusterNotFound as exc:
            raise web.HTTPError(404, str(exc)) from None
        if cluster.handle is None or cluster.state != "running":
            raise web.HTTPError(503, f"cluster {name!r} is {cluster.state}; its dashboard is not up")
        query = f"?{self.request.query}" if self.request.query else ""
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() not in _NOT_FORWARDED}
        headers["X-Ray-Authorization"] = f"Bearer {self.manager.token}"
        has_body = self.request.method in ("POST", "PUT", "PATCH")
        request = httpclient.HTTPRequest(
            f"http://{cluster.handle.dashboard_address}/{path}{query}", method=self.request.method,
            headers=headers, body=self.request.body if has_body else None, follow_redirects=False,
            request_timeout=60, allow_nonstandard_methods=True, decompress_response=True)
        response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code == 599:
            raise web.HTTPError(502, f"the Ray dashboard of {name!r} is not reachable: {response.error}")
        self.set_status(response.code, response.reason)
        self.clear_header("Content-Type")
        for key, value in response.headers.get_all():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "set-cookie":
                self.add_header(key, value)
        if self.request.method != "HEAD" and response.body:
            self.write(response.body)
        await self.finish()
