"""`{base_url}raykube/clusters/{name}/dashboard/...`: the cluster's Ray dashboard, over HTTP and
websockets, behind the Jupyter server's own authentication, so it works under JupyterHub and
HTTPS without exposing the dashboard port. The Ray token is added here (Ray's
`X-Ray-Authorization` header for proxies); the browser never sees it, and Jupyter's credentials
(header, cookies, `?token=`) are not passed on."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from tornado import httpclient, httputil, web

from ..errors import ClusterNotFound, ClusterNotRunning
from .guard import OwnerGuard
from .ws_proxy import HANDSHAKE_HEADERS, DashboardSocketMixin, is_websocket_upgrade

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade", "content-length", "content-encoding"}
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "authorization", "cookie", "x-xsrftoken", "x-ray-authorization"}
_JUPYTER_QUERY = {"token", "_xsrf"}  # how a browser authenticates a websocket to Jupyter
_PATH_SAFE = "/:@!$&'()*+,;=~"  # RFC 3986 path characters; only the rest is percent-encoded


def upstream_url(scheme: str, address: str, path: str, query: str) -> str:
    """The dashboard's URL for a request, without Jupyter's credentials in the query."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key in _JUPYTER_QUERY for key, _ in pairs):
        query = urlencode([(key, value) for key, value in pairs if key not in _JUPYTER_QUERY])
    url = f"{scheme}://{address}/{quote(path, safe=_PATH_SAFE)}"
    return f"{url}?{query}" if query else url


def upstream_headers(request: httputil.HTTPServerRequest, token: str, *,
                     drop: frozenset[str] = frozenset()) -> dict[str, str]:
    """The browser's headers minus hop-by-hop ones and Jupyter's credentials, plus Ray's token."""
    dropped = _NOT_FORWARDED | drop
    headers = {k: v for k, v in request.headers.get_all() if k.lower() not in dropped}
    headers["X-Ray-Authorization"] = f"Bearer {token}"
    return headers


class DashboardProxyHandler(OwnerGuard, DashboardSocketMixin, JupyterHandler):
    """Every method (and the websocket) is let through only for the clusters' owner, with the
    same checks as the REST API: the dashboard's job API runs code on the cluster."""

    auth_resource = "raykube"
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

    async def get(self, name: str, path: str) -> None:
        """One URL for both, as the dashboard has: a websocket handshake is relayed, the rest is HTTP."""
        if is_websocket_upgrade(self.request):
            await ensure_async(self._socket(name, path))
        else:
            # `web.authenticated` answers a login redirect itself and returns None, not a coroutine.
            await ensure_async(self._handle(name, path))

    @web.authenticated
    @authorized  # the auth action comes from the request's method, so one handler serves all
    async def _handle(self, name: str, path: str) -> None:
        self.check_caller()
        self.check_name(name)
        await self._proxy(name, path)

    head = post = put = patch = delete = _handle

    @ws_authenticated  # as Jupyter's kernel sockets: a bare 403, never a login redirect
    @authorized  # a handshake is a GET: the same "read" a GET of the dashboard needs
    async def _socket(self, name: str, path: str) -> None:
        self.check_caller()
        self.check_name(name)
        address = await self._dashboard_address(name)
        await self.relay(upstream_url("ws", address, path, self.request.query),
                         upstream_headers(self.request, self.manager.token, drop=HANDSHAKE_HEADERS))

    async def _dashboard_address(self, name: str) -> str:
        try:
            cluster = await self.manager.running(name, "its dashboard is not up")
        except ClusterNotFound as exc:
            raise web.HTTPError(404, str(exc)) from None
        except ClusterNotRunning as exc:
            raise web.HTTPError(409, str(exc)) from None
        assert cluster.handle is not None
        return cluster.handle.dashboard_address

    async def _proxy(self, name: str, path: str) -> None:
        address = await self._dashboard_address(name)
        has_body = self.request.method in ("POST", "PUT", "PATCH")
        request = httpclient.HTTPRequest(
            upstream_url("http", address, path, self.request.query), method=self.request.method,
            headers=upstream_headers(self.request, self.manager.token),
            body=self.request.body if has_body else None, follow_redirects=False,
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
