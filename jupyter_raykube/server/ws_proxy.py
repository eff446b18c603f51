"""The websocket half of the dashboard proxy (Ray's job log tail, for one, is a websocket).

The dashboard's end is opened before the browser's handshake is accepted, so a dashboard that
is down or refuses answers the browser with an HTTP status (Ray's own 4xx, else 502) instead
of a socket that opens and dies at once. Then messages (text stays text, binary stays binary)
and closes (with code and reason) pass both ways, one message at a time on each side so a fast
sender waits for a slow reader instead of filling the server's memory."""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.base.websocket import WebSocketMixin
from tornado import httpclient, httputil, web
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    WebSocketError,
    WebSocketHandler,
    websocket_connect,
)

# Negotiated separately on each leg, so never copied from one to the other.
HANDSHAKE_HEADERS = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-accept",
                               "sec-websocket-extensions", "sec-websocket-protocol"})


def is_websocket_upgrade(request: httputil.HTTPServerRequest) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


async def connect_upstream(url: str, headers: dict[str, str], subprotocols: list[str]
                           ) -> WebSocketClientConnection:
    """Open the dashboard's end; its refusal keeps its HTTP status, anything else is a 502."""
    request = httpclient.HTTPRequest(url, headers=headers, connect_timeout=20, request_timeout=60,
                                     follow_redirects=False)
    try:
        return await websocket_connect(request, subprotocols=subprotocols or None)
    except httpclient.HTTPClientError as exc:
        if 400 <= exc.code < 500 and exc.response is not None:
            body = (exc.response.body or b"").decode(errors="replace").strip()[:500]
            raise web.HTTPError(exc.code, f"the Ray dashboard refused the websocket: {body}",
                                reason=exc.response.reason) from None
        raise web.HTTPError(502, f"the Ray dashboard is not reachable: {exc}") from None
    except (OSError, WebSocketError) as exc:  # refused, reset, DNS, or a plain HTTP answer
        raise web.HTTPError(502, f"the Ray dashboard did not open a websocket: {exc!r}") from None


class DashboardSocketMixin(WebSocketMixin, WebSocketHandler):
    """Relays one browser websocket to the dashboard. Mixed into the dashboard proxy handler,
    ahead of `JupyterHandler`, like jupyter_server's kernel sockets: a handshake gets their
    origin check, keep-alive pings and bare 403 (no login redirect); plain HTTP requests on the
    same URL keep `JupyterHandler`'s behaviour."""

    _upstream: WebSocketClientConnection | None = None
    _pump: asyncio.Task[None] | None = None

    async def relay(self, url: str, headers: dict[str, str]) -> None:
        """Connect to the dashboard, then accept the browser; returns once the socket is over
        (tornado's handshake awaits the frame loop), when the dashboard end is closed too."""
        self._upstream = await connect_upstream(url, headers, self._offered_subprotocols())
        try:
            await super().get()
        finally:
            self._upstream.close()  # already closed, unless the browser's handshake was refused

    def prepare(self, *args: Any, **kwargs: Any) -> Any:
        """A handshake without a user gets the kernel sockets' 403; HTTP keeps the login redirect."""
        if is_websocket_upgrade(self.request):
            return super().prepare(*args, **kwargs)
        return super(WebSocketMixin, self).prepare(*args, **kwargs)

    def clear_cookie(self, *args: Any, **kwargs: Any) -> None:
        """An invalid login cookie is still cleared on HTTP; only a handshake can't set one."""
        if not is_websocket_upgrade(self.request):
            super(WebSocketMixin, self).clear_cookie(*args, **kwargs)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        """Whatever the dashboard chose, since it is the one speaking the protocol."""
        chosen = self._upstream.selected_subprotocol if self._upstream is not None else None
        return chosen if chosen in subprotocols else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        super().open(*args, **kwargs)  # WebSocketMixin: keep-alive pings to the browser
        self._pump = asyncio.ensure_future(self._pump_upstream())

    async def on_message(self, message: str | bytes) -> None:
        """Browser to dashboard; awaited, so the browser's next frame is read after this one is sent."""
        if self._upstream is None:
            return
        try:
            await self._upstream.write_message(message, binary=isinstance(message, bytes))
        except WebSocketClosedError:
            pass  # the dashboard closed; its close is on the way to the browser

    def on_close(self) -> None:
        """The browser closed (or went away): close the dashboard end the same way."""
        if self._upstream is not None:
            self._upstream.close(self.close_code, self.close_reason)

    def _offered_subprotocols(self) -> list[str]:
        offered = self.request.headers.get("Sec-WebSocket-Protocol", "")
        return [p.strip() for p in offered.split(",") if p.strip()]

    async def _pump_upstream(self) -> None:
        """Dashboard to browser until the dashboard closes, then pass its code and reason on."""
        upstream = self._upstream
        assert upstream is not None
        while (message := await upstream.read_message()) is not None:
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except WebSocketClosedError:
                return  # the browser is gone; on_close has closed the dashboard end
        self.close(upstream.close_code, upstream.close_reason)
