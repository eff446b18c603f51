"""The kubelet's log endpoint: what the apiserver proxies ``pods/log`` to.

On a real cluster ``GET /api/v1/namespaces/NS/pods/NAME/log`` is answered by the apiserver
dialling the Pod's node (the Node's InternalIP and ``daemonEndpoints.kubeletEndpoint.Port``)
over HTTPS at ``/containerLogs/NS/NAME/CONTAINER``. This serves that path (with ``tailLines``,
``limitBytes``, ``previous`` and ``follow``) from the container log files the process kubelet
writes, on a serving certificate from the cluster CA.
"""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlparse



class LogSource(Protocol):
    def log_path(self, namespace: str, pod: str, container: str, previous: bool) -> str | None: ...

    def log_finished(self, namespace: str, pod: str, container: str) -> bool: ...


def _tail(data: bytes, lines: int | None, limit: int | None) -> bytes:
    if lines is not None:
        parts = data.splitlines(keepends=True)
        data = b"".join(parts[-lines:]) if lines > 0 else b""
    if limit is not None:
        data = data[:limit]
    return data


class _Handler(BaseHTTPRequestHandler):
    server: "LogServer"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass  # the apiserver logs the proxied request; nothing to add here

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404, "only /containerLogs/NAMESPACE/POD/CONTAINER is served")
            return
        _, ns, pod, container = parts
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        previous = query.get("previous") in ("true", "1")
        path = self.server.source.log_path(ns, pod, container, previous)
        if path is None:
            what = "previous terminated container" if previous else "container"
            self.send_error(404, f'{what} "{container}" in pod "{pod}" not found')
            return
        lines = int(query["tailLines"]) if "tailLines" in query else None
        limit = int(query["limitBytes"]) if "limitBytes" in query else None
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        follow = query.get("follow") in ("true", "1")
        if not follow:
            body = _tail(Path(path).read_bytes(), lines, limit)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._follow(path, ns, pod, container, lines)

    def _follow(self, path: str, ns: str, pod: str, container: str, lines: int | None) -> None:
        with open(path, "rb") as handle:
            chunk = _tail(handle.read(), lines, None)
            while not self.server.stopping.is_set():
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                elif self.server.source.log_finished(ns, pod, container):
                    break
                else:
                    time.sleep(0.1)
                chunk = handle.read()
        self.wfile.write(b"0\r\n\r\n")


class LogServer(ThreadingHTTPServer):
    """HTTPS on ``host_ip:<random port>``; ``port`` goes into every Node's daemonEndpoints."""

    daemon_threads = True

    def __init__(self, source: LogSource, cert: Path, key: Path, host_ip: str = "127.0.0.1") -> None:
        super().__init__((host_ip, 0), _Handler)
        self.source = source
        self.stopping = threading.Event()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.port: int = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, name="kubelet-logs", daemon=True)

    def start(self) -> "LogServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
