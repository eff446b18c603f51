"""The one client of a cluster's Ray dashboard (`http://host:port`, Ray's Jobs and log APIs):
the address, the Ray token header (Ray 2.60's token auth checks it on plain requests and on a
websocket's handshake alike), tornado's HTTP client, "not reachable" for a dashboard that does
not answer, and Ray's error bodies (often whole tracebacks naming files on the node) cut down
to one line. What a status means is the caller's to say (jobs.py, node_logs.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from urllib.parse import urlencode

from tornado import httpclient
from tornado.websocket import WebSocketClientConnection, WebSocketError, websocket_connect

from .errors import BackendError

_PATH = re.compile(r"(?<![\w.])/[^\s'\"]+")
_MAX_ERROR_CHARS = 300
UNREACHABLE = "the cluster's Ray dashboard is not reachable"


class DashboardRefused(BackendError):
    """The dashboard answered a websocket handshake with an HTTP status instead (`code`)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"Ray's dashboard refused the websocket ({code}): {detail}")
        self.code = code
        self.detail = detail


def error_line(body: bytes | None) -> str:
    """The gist of one of Ray's error answers: its `msg` if it is JSON, else its last non-empty
    line, with paths on the head node replaced by `<path>`."""
    text = (body or b"").decode(errors="replace")
    try:
        text = str(json.loads(text).get("msg") or text)
    except (ValueError, AttributeError):
        pass
    lines = [line for line in text.splitlines() if line.strip()]
    return _PATH.sub("<path>", lines[-1] if lines else "no details")[:_MAX_ERROR_CHARS]


class RayDashboard:
    """One cluster's dashboard: its `host:port` and the cluster's Ray token."""

    def __init__(self, address: str, token: str) -> None:
        self.address = address
        self.token = token

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Ray-Authorization": f"Bearer {self.token}"}

    async def fetch(self, method: str, path: str, body: bytes | None = None, *,
                    params: Mapping[str, object] | None = None, timeout_s: float = 60.0
                    ) -> httpclient.HTTPResponse:
        """The dashboard's answer, whatever its status (the caller maps them); a dashboard that
        does not answer is a BackendError."""
        url = f"http://{self.address}{path}" + (f"?{urlencode(params)}" if params else "")
        headers = self.headers | ({"Content-Type": "application/json"} if body is not None else {})
        request = httpclient.HTTPRequest(url, method=method, body=body, headers=headers,
                                         request_timeout=timeout_s, allow_nonstandard_methods=True)
        response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code == 599:
            raise BackendError(f"{UNREACHABLE}: {response.error}")
        return response

    async def open_websocket(self, path: str, on_message: Callable[[str | bytes | None], None]
                             ) -> WebSocketClientConnection:
        """A websocket to the dashboard; `on_message` gets each message, then None once it is
        closed. A refused handshake is a DashboardRefused with Ray's status."""
        request = httpclient.HTTPRequest(f"ws://{self.address}{path}", headers=self.headers,
                                         connect_timeout=20, request_timeout=60, follow_redirects=False)
        try:
            return await websocket_connect(request, on_message_callback=on_message)
        except httpclient.HTTPClientError as exc:
            if exc.code == 599 or exc.response is None:
                raise BackendError(f"{UNREACHABLE}: {exc}") from None
            raise DashboardRefused(exc.code, error_line(exc.response.body)) from None
        except (OSError, WebSocketError) as exc:
            raise BackendError(f"{UNREACHABLE}: {exc!r}") from None
