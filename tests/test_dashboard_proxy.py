"""The dashboard proxy over websockets: Ray's job log tail through a real Jupyter server and a
real local cluster, plus the relay itself against a plain websocket peer (binary frames and
client-side close codes, which no Ray endpoint exercises)."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from typing import Any

import pytest
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from tornado import httputil, testing
from tornado.httpclient import HTTPClientError
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketHandler,
    websocket_connect,
)

from jupyter_raykube.backends.local import LocalBackend
from jupyter_raykube.server.proxy import upstream_headers, upstream_url
from jupyter_raykube.server.ws_proxy import HANDSHAKE_HEADERS, DashboardSocketMixin

from .conftest import cluster_processes


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"jupyter_raykube": True}}}


async def _api(jp_fetch: Any, *path: str, **kwargs: Any) -> Any:
    response = await jp_fetch("raykube", "api", *path, **kwargs)
    return json.loads(response.body) if response.body else None


async def _wait_running(jp_fetch: Any, name: str, timeout: float = 180) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (snap := await _api(jp_fetch, "clusters", name))["state"] not in ("running", "failed"):
        assert loop.time() < deadline, f"{name} never started: {snap}"
        await asyncio.sleep(0.5)
    assert snap["state"] == "running", snap["error"]


async def _refused(connecting: Any) -> int:
    """The HTTP status a websocket handshake was answered with instead of 101 (a browser sees
    only a failed socket, so the status is all there is to check)."""
    with pytest.raises(HTTPClientError) as err:
        await connecting
    return err.value.code


async def _read_all(ws: WebSocketClientConnection) -> list[str | bytes]:
    messages = []
    while (message := await ws.read_message()) is not None:
        messages.append(message)
    return messages


async def test_job_logs_tail_over_websocket_through_proxy(
        jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any, jp_http_port: int, jp_base_url: str) -> None:
    await jp_serverapp._post_start()  # what start_ioloop() runs: starts the extension's loops
    await _api(jp_fetch, "clusters", method="POST", body=json.dumps({"name": "ws-1"}))
    dashboard = ("raykube", "clusters", "ws-1", "dashboard")
    try:
        assert await _refused(jp_ws_fetch(*dashboard, "api", "version")) == 409  # still starting
        await _wait_running(jp_fetch, "ws-1")
        uid = LocalBackend().store.read("ws-1")["uid"]

        entrypoint = shlex.join([sys.executable, "-c", "print('hello-from-ray')"])
        submitted = await jp_fetch(*dashboard, "api", "jobs/", method="POST",
                                   body=json.dumps({"entrypoint": entrypoint}))
        tail = (*dashboard, "api", "jobs", json.loads(submitted.body)["submission_id"], "logs", "tail")
        ws = await jp_ws_fetch(*tail)
        logs = await asyncio.wait_for(_read_all(ws), timeout=120)  # Ray closes it when the job ends
        assert "hello-from-ray" in "".join(str(m) for m in logs), logs
        assert ws.close_code == 1000  # Ray's close, passed on with its code

        # A browser authenticates a websocket with ?token=; the proxy drops it before Ray.
        url = f"ws://127.0.0.1:{jp_http_port}{jp_base_url}{'/'.join(dashboard)}/api"
        token = f"token={jp_serverapp.identity_provider.token}"
        assert await _refused(websocket_connect(f"{url}/jobs/raysubmit_nope/logs/tail?{token}")) == 404
        assert await _refused(websocket_connect(f"{url}/version?{token}")) == 502  # not a socket

        assert await _refused(websocket_connect(f"{url}/version")) == 403  # no Jupyter credentials
        assert await _refused(jp_ws_fetch(*tail, headers={"Authorization": "token wrong"})) == 403
        unknown = ("raykube", "clusters", "nope", "dashboard", "api", "version")
        assert await _refused(jp_ws_fetch(*unknown)) == 404
    finally:
        await jp_fetch("raykube", "api", "clusters", "ws-1", method="DELETE", raise_error=False)
    assert cluster_processes(uid) == []


def test_upstream_request_carries_rays_token_and_none_of_jupyters() -> None:
    headers = httputil.HTTPHeaders({
        "Authorization": "token jupyter", "Cookie": "_xsrf=1", "X-XSRFToken": "1", "Host": "hub",
        "Sec-WebSocket-Key": "k", "Sec-WebSocket-Extensions": "permessage-deflate", "Accept": "*/*"})
    request = httputil.HTTPServerRequest(
        start_line=httputil.RequestStartLine("GET", "/x", "HTTP/1.1"), headers=headers)
    assert upstream_headers(request, "ray-secret", drop=HANDSHAKE_HEADERS) == {
        "Accept": "*/*", "X-Ray-Authorization": "Bearer ray-secret"}
    assert (upstream_url("ws", "10.0.0.1:8265", "api/jobs/a b/logs/tail", "token=jupyter&lines=5")
            == "ws://10.0.0.1:8265/api/jobs/a%20b/logs/tail?lines=5")
    assert upstream_url("http", "h:1", "api/version", "a=1&b") == "http://h:1/api/version?a=1&b"


class _Peer(WebSocketHandler):
    """Stands in for a dashboard socket: echoes, closes with 4001 on "bye", reports its close."""

    def on_message(self, message: str | bytes) -> None:
        if message == "bye":
            self.close(4001, "done")
        else:
            self.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        closed = self.application.settings["raykube_test_peer_closed"]
        closed.put_nowait((self.close_code, self.close_reason))


class _Relay(DashboardSocketMixin, JupyterHandler):
    """The proxy's websocket half, pointed at `?to=` instead of a cluster's dashboard."""

    @ws_authenticated
    async def get(self) -> None:
        await self.relay(self.get_argument("to"), {})


async def test_relay_passes_text_binary_and_closes_both_ways(
        jp_serverapp: Any, jp_ws_fetch: Any, jp_http_port: int, jp_base_url: str) -> None:
    closed: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()
    app = jp_serverapp.web_app
    app.settings["raykube_test_peer_closed"] = closed
    app.add_handlers(".*$", [(f"{jp_base_url}raykube-test/peer", _Peer),
                             (f"{jp_base_url}raykube-test/relay", _Relay)])
    peer = f"ws://127.0.0.1:{jp_http_port}{jp_base_url}raykube-test/peer"

    def relay(to: str) -> Any:
        return jp_ws_fetch("raykube-test", "relay", params={"to": to})

    ws = await relay(peer)
    await ws.write_message("hi")
    assert await ws.read_message() == "hi"
    await ws.write_message(b"\x00\xff", binary=True)
    assert await ws.read_message() == b"\x00\xff"
    await ws.write_message("bye")
    assert await ws.read_message() is None
    assert (ws.close_code, ws.close_reason) == (4001, "done")
    assert (await asyncio.wait_for(closed.get(), 10))[0] == 4001  # the close echoed back to the peer

    ws = await relay(peer)
    ws.close(4002, "leaving")
    assert await asyncio.wait_for(closed.get(), 10) == (4002, "leaving")

    assert await _refused(relay(peer.replace("/peer", "/missing"))) == 404  # the peer's own status
    unused, free_port = testing.bind_unused_port()
    unused.close()
    assert await _refused(relay(f"ws://127.0.0.1:{free_port}/")) == 502
