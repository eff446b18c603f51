"""A fault-injecting HTTP proxy in front of the real kube-apiserver.

The backend must survive an apiserver that is slow, overloaded (429 + Retry-After), briefly
broken (5xx), racing with another writer (409), or whose answer to a create never arrives. A
real apiserver does none of that on demand, so tests point the client at this proxy
(``http://127.0.0.1:PORT``) instead. It forwards each request over TLS to the apiserver with
the caller's own ``Authorization`` header (so RBAC still applies to the caller), streams watch
responses as they come, and fires the rules armed with :meth:`FaultProxy.inject`, whose
signature is the old emulator's. Every request is logged before its answer is written, so a
test reading :meth:`FaultProxy.requests` right after a call sees that call.

Callers authenticate with a bearer token (the official Python client sends it over plain http;
a client certificate cannot pass a proxy). kubectl (client-go) sends no token to an ``http://``
server, so use ``ControlPlane.kubectl`` against the apiserver itself.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .faults import Fault, FaultRegistry, RequestRecord

# Not forwarded: they describe one hop, not the request (RFC 9110 section 7.6.1).
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "host", "content-length"}
_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            410: "Expired", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}


@dataclass
class ProxyFault(Fault):
    """A :class:`Fault` that may also lose the answer: ``lose_answer`` forwards the request (so a
    create really happens) and then closes the caller's connection without a response."""

    lose_answer: bool = False


def status_body(code: int, reason: str | None, message: str | None) -> bytes:
    """A ``kind: Status`` failure body worded like the apiserver's."""
    reason = reason or _REASONS.get(code, "InternalError")
    if message is None:
        try:
            message = f"injected fault: {code} {HTTPStatus(code).phrase}"
        except ValueError:
            message = f"injected fault: {code}"
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()


class FaultProxy:
    """Plain-HTTP proxy on 127.0.0.1 to an https apiserver; ``start()``/``stop()`` or a ``with`` block."""

    def __init__(self, upstream_url: str, ca_file: Path, *, timeout_s: float = 330.0) -> None:
        parsed = urllib.parse.urlsplit(upstream_url)
        if parsed.scheme != "https" or parsed.hostname is None:
            raise ValueError(f"upstream must be https://HOST:PORT, got {upstream_url!r}")
        self.upstream_host, self.upstream_port = parsed.hostname, parsed.port or 443
        self.ssl_context = ssl.create_default_context(cafile=str(ca_file))
        self.timeout_s = timeout_s  # longer than the longest watch a client asks for (300 s)
        self.faults = FaultRegistry()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._upstreams: set[http.client.HTTPSConnection] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="kube-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, and cut open upstream connections so streaming watches end now."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            upstreams = list(self._upstreams)
        for conn in upstreams:
            _close_hard(conn)
        if self._thread is not None:
            self._thread.join(5)
        self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ faults and log
    def inject(self, method: str | None = None, path_regex: str | None = None, status: int | None = 500,
               times: int | None = 1, delay_s: float = 0.0, retry_after_s: int | None = None,
               query_regex: str | None = None, reason: str | None = None, message: str | None = None,
               lose_answer: bool = False) -> ProxyFault:
        """Arm a fault: the next ``times`` matching requests wait ``delay_s``, then fail with ``status``
        (a Status body; 429 and 503 carry ``Retry-After`` when ``retry_after_s`` is set, 429 always,
        default 1), or with ``status=None`` are served normally after the delay, or with
        ``lose_answer=True`` are served upstream but the caller's connection is closed unanswered.
        ``times=None`` keeps it armed. Returns the rule; ``hits`` counts firings, ``remove()`` disarms."""
        if retry_after_s is None and status == 429:
            retry_after_s = 1
        return self.faults.add(ProxyFault(method=method, path_regex=path_regex, query_regex=query_regex,
                                          status=None if lose_answer else status, times=times, delay_s=delay_s,
                                          retry_after_s=retry_after_s, reason=reason, message=message,
                                          lose_answer=lose_answer))

    def clear_faults(self) -> None:
        self.faults.clear()

    def requests(self, method: str | None = None, path_regex: str | None = None) -> list[RequestRecord]:
        """The request log (method, path, query, status, time, user_agent, fault), optionally filtered."""
        return self.faults.records(method, path_regex)

    def clear_requests(self) -> None:
        self.faults.clear_log()

    # ------------------------------------------------------------------ upstream connections
    def _connect(self) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(self.upstream_host, self.upstream_port, context=self.ssl_context,
                                           timeout=self.timeout_s)
        with self._lock:
            self._upstreams.add(conn)
        return conn

    def _forget(self, conn: http.client.HTTPSConnection) -> None:
        with self._lock:
            self._upstreams.discard(conn)
        conn.close()


def _close_hard(conn: http.client.HTTPSConnection) -> None:
    """Unblock a thread reading a watch from ``conn`` (close() alone leaves the read waiting)."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(2)
        except OSError:
            pass
    conn.close()


class _ProxyHandler(BaseHTTPRequestHandler):
    """One caller connection; keeps one upstream connection alive beside it."""

    owner: FaultProxy
    protocol_version = "HTTP/1.1"
    _upstream: http.client.HTTPSConnection | None = None

    def do_request(self) -> None:
        owner = self.owner
        split = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        agent = self.headers.get("User-Agent", "")
        fault = owner.faults.take(self.command, split.path, split.query)
        if fault is not None and fault.delay_s:
            time.sleep(fault.delay_s)
        if fault is not None and fault.status is not None:
            owner.faults.record(self.command, split.path, split.query, fault.status, agent, True)
            self._send_status(fault)
            return
        try:
            response = self._forward(body)
        except (OSError, http.client.HTTPException) as exc:
            owner.faults.record(self.command, split.path, split.query, 502, agent, False)
            self._send_status(Fault(status=502, reason="InternalError", message=f"fault proxy: upstream: {exc}"))
            return
        lost = isinstance(fault, ProxyFault) and fault.lose_answer
        owner.faults.record(self.command, split.path, split.query, response.status, agent, fault is not None)
        if lost:
            response.read()
            self.close_connection = True
            return
        self._relay(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_request

    def _forward(self, body: bytes | None) -> http.client.HTTPResponse:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        for attempt in range(2):  # a kept-alive upstream may have been closed by the apiserver
            if self._upstream is None:
                self._upstream = self.owner._connect()
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                return self._upstream.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.owner._forget(self._upstream)
                self._upstream = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _relay(self, response: http.client.HTTPResponse) -> None:
        """Copy the answer; without a Content-Length (watches) re-chunk it as it arrives."""
        self.send_response_only(response.status, response.reason)
        length = response.getheader("Content-Length")
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        if self.command == "HEAD" or response.status in (204, 304):
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            response.read()
            return
        if length is not None:
            self.send_header("Content-Length", length)
            self.end_headers()
            self.wfile.write(response.read())
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while chunk := response.read1(65536):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the caller went away mid-stream, or stop() cut the upstream
            self.close_connection = True
        if response.will_close or self.close_connection:
            self._drop_upstream()

    def _send_status(self, fault: Fault) -> None:
        assert fault.status is not None
        payload = status_body(fault.status, fault.reason, fault.message)
        self.send_response_only(fault.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if fault.retry_after_s is not None and fault.status in (429, 503):
            self.send_header("Retry-After", str(fault.retry_after_s))
        self.end_headers()
        self.wfile.write(payload)

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self.owner._forget(self._upstream)
            self._upstream = None

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._drop_upstream()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet: the request log is :meth:`FaultProxy.requests`."""
