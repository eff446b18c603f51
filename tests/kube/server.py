"""HTTP front of the emulator: Kubernetes REST paths over ``http.server``, one thread per connection.

Routing follows the apiserver's URL layout (``/api/v1/namespaces/NS/pods/NAME/status``,
``/apis/GROUP/VERSION/...``), so the unpatched official client and kubectl work. Responses are
JSON with ``Content-Length`` on keep-alive connections; watches and followed logs are chunked
streams. Every request passes the bearer-token check, then fault injection, then the handler,
and lands in the request log.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import parse_qs, urlsplit

from . import resources, tables
from .errors import ApiError, bad_request
from .selectors import object_matcher, parse_field_selector, parse_label_selector

if TYPE_CHECKING:
    from .emulator import KubeEmulator

_TRUE = ("true", "1")


class _Server(ThreadingHTTPServer):
    """Tracks open connections so that stopping the emulator also ends keep-alive connections."""

    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True
    emulator: "KubeEmulator"

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def track(self, sock: socket.socket, add: bool) -> None:
        with self._open_lock:
            (self._open.add if add else self._open.discard)(sock)

    def close_connections(self) -> None:
        with self._open_lock:
            open_now = list(self._open)
        for sock in open_now:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the client closed it first


class _Route:
    """A parsed resource URL."""

    def __init__(self, group: str, version: str, plural: str, namespace: str | None, name: str | None,
                 sub: str | None) -> None:
        self.group, self.version, self.plural = group, version, plural
        self.namespace, self.name, self.sub = namespace, name, sub


def parse_resource_path(parts: list[str]) -> _Route | None:
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        ns = rest[1]
        rest = rest[2:]
    else:
        ns = None
    if len(rest) > 3:
        return None
    return _Route(group, version, rest[0], ns, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        """Quiet: the request log on the emulator is the record tests read."""

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        try:
            super().finish()
        except OSError:
            pass  # flushing to a client that hung up

    # ---------------------------------------------------------------- plumbing
    @property
    def emu(self) -> "KubeEmulator":
        return self.server.emulator

    def _body(self) -> Any:
        raw = self._raw
        if not raw:
            return None
        ctype = self.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if not ctype.endswith("json"):
            # kubectl's typed clients try protobuf first and fall back to JSON on a 415.
            raise ApiError(415, f"the body of the request was in an unknown format - accepted media types "
                                f"include: application/json (not {ctype})", "UnsupportedMediaType")
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise bad_request(f"couldn't decode the request body as JSON: {exc}") from None

    def _send(self, status: int, body: Any, content_type: str = "application/json",
              extra: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
                f"Content-Type: {content_type}", f"Content-Length: {len(data)}",
                "Cache-Control: no-cache, private"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        self._status = status
        self._record(False)  # before the client can see the response, so tests never race the log
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self._status = 200
        self._record(False)

    def _record(self, fault: bool) -> None:
        if not self._recorded:
            self._recorded = True
            self.emu.faults.record(self.command, self._path, self._query, self._status, self._ua,
                                   fault or self._fault_hit)

    def _chunk(self, data: bytes) -> bool:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            return True
        except OSError:
            return False

    def _end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    def _client_alive(self) -> bool:
        """False once the client hung up (a readable socket with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return True
            return bool(self.connection.recv(1, socket.MSG_PEEK))
        except OSError:
            return False

    def _error(self, err: ApiError) -> None:
        extra = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s is not None else None
        self._send(err.code, err.status_body(), extra=extra)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        self._path, self._query = url.path, url.query
        self._ua = self.headers.get("User-Agent", "")
        self._status = 0
        self._recorded = False
        self._fault_hit = False
        # Always consume the body first: an unread body would corrupt the next keep-alive request.
        length = int(self.headers.get("Content-Length") or 0)
        self._raw = self.rfile.read(length) if length > 0 else b""
        try:
            self._authorize()
            fault = self.emu.faults.take(self.command, self._path, self._query)
            if fault is not None:
                self._fault_hit = fault.status is not None
                if fault.delay_s:
                    time.sleep(fault.delay_s)
                if fault.status is not None:
                    retry = fault.retry_after_s
                    if retry is None and fault.status == 429:
                        retry = 1
                    err = ApiError(fault.status, fault.message or f"injected fault ({fault.status})",
                                   fault.reason or "", retry_after_s=retry)
                    self._error(err)
                    return
            self._dispatch()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the emulator must surface as a 500, not a hung client
            if self._status:  # a stream already started: no second response on this connection
                self.close_connection = True
            else:
                self._error(exc if isinstance(exc, ApiError)
                            else ApiError(500, f"emulator error: {type(exc).__name__}: {exc}"))
        finally:
            self._record(False)

    def _authorize(self) -> None:
        token = self.emu.token
        sent = self.headers.get("Authorization")
        if token is None or (sent is None and not self.emu.require_token):
            return  # kubectl (client-go) never sends credentials to a plain-http server
        if sent != f"Bearer {token}":
            raise ApiError(401, "Unauthorized")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = lambda self: self._handle()  # noqa: E731

    # ---------------------------------------------------------------- routing
    def _dispatch(self) -> None:
        q = {k: v[-1] for k, v in parse_qs(self._query, keep_blank_values=True).items()}
        for key in ("limit", "timeoutSeconds", "tailLines", "limitBytes", "gracePeriodSeconds"):
            if q.get(key) and not q[key].lstrip("-").isdigit():
                raise bad_request(f"invalid value for {key}: {q[key]!r} is not an integer")
        parts = [p for p in self._path.split("/") if p]
        types = self.emu.store.types()
        if self.command == "GET" and parts in (["healthz"], ["readyz"], ["livez"]):
            self._send(200, b"ok", "text/plain")
            return
        if self.command == "GET":
            doc = self._discovery(parts, types)
            if doc is not None:
                self._send(200, doc)
                return
        route = parse_resource_path(parts)
        if route is None:
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        rt = self.emu.store.type_for(route.group, route.plural, route.version)
        if route.namespace is not None and not rt.namespaced:
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        if route.sub is not None and route.sub not in rt.subresources:
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        dry_run = q.get("dryRun") == "All"
        store = self.emu.store
        ns = route.namespace
        if route.name is None:
            if self.command == "GET":
                self._list_or_watch(rt, ns, q)
            elif self.command == "POST":
                obj = store.create(rt, ns, self._body(), dry_run=dry_run)
                self._send(201, obj)
            elif self.command == "DELETE":
                self._delete_collection(rt, ns, q)
            else:
                raise ApiError(405, f"{self.command} is not supported on a collection")
            return
        if route.sub == "log":
            self._log(ns or "", route.name, q)
        elif route.sub == "binding" and self.command == "POST":
            body = self._body() or {}
            store.bind(ns or "", route.name, ((body.get("target") or {}).get("name")) or "")
            self._send(201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
        elif self.command == "GET":
            obj = store.get(rt, ns, route.name)
            self._send_object(rt, obj)
        elif self.command == "PUT":
            self._send(200, store.replace(rt, ns, route.name, self._body(), route.sub, dry_run))
        elif self.command == "PATCH":
            ctype = self.headers.get("Content-Type", "")
            self._send(200, store.patch(rt, ns, route.name, ctype, self._body(), route.sub, dry_run))
        elif self.command == "DELETE":
            gone = store.delete(rt, ns, route.name, self._delete_options(q), dry_run)
            if rt.plural in ("pods", "services", "namespaces") or not rt.builtin:
                self._send(200, gone)  # these kinds' registries return the deleted object
            else:
                self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                 "details": {"name": route.name, "group": rt.group, "kind": rt.plural,
                                             "uid": gone["metadata"]["uid"]}})
        else:
            raise ApiError(405, f"{self.command} is not supported here")

    def _discovery(self, parts: list[str], types: list[resources.ResourceType]) -> dict[str, Any] | None:
        emu = self.emu
        if parts in (["version"],):
            return emu.version_info()
        if parts == ["api"]:
            return resources.api_versions(f"127.0.0.1:{emu.port}")
        if parts == ["api", "v1"]:
            return resources.resource_list("v1", types)
        if parts == ["apis"]:
            return resources.api_group_list(types)
        if len(parts) == 2 and parts[0] == "apis":
            if not any(rt.group == parts[1] for rt in types):
                raise ApiError(404, "the server could not find the requested resource", "NotFound")
            return resources.api_group(parts[1], types)
        if len(parts) == 3 and parts[0] == "apis":
            doc = resources.resource_list(f"{parts[1]}/{parts[2]}", types)
            if not doc["resources"]:
                raise ApiError(404, "the server could not find the requested resource", "NotFound")
            return doc
        if parts[:1] == ["openapi"]:
            raise ApiError(404, "the server could not find the requested resource (openapi is not served)",
                           "NotFound")
        return None

    def _wants_table(self) -> bool:
        return "as=Table" in self.headers.get("Accept", "")

    def _send_object(self, rt: resources.ResourceType, obj: dict[str, Any]) -> None:
        if self._wants_table():
            self._send(200, tables.table(rt, [obj], str(obj["metadata"]["resourceVersion"]), None))
        else:
            self._send(200, obj)

    # --------------------------------------------------------------- handlers
    def _selectors(self, rt: resources.ResourceType, q: dict[str, str]) -> Any:
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"), rt.allowed_field_selectors(), rt.plural)
        return object_matcher(labels, fields)

    def _list_or_watch(self, rt: resources.ResourceType, ns: str | None, q: dict[str, str]) -> None:
        match = self._selectors(rt, q)
        if q.get("watch", "").lower() in _TRUE:
            self._watch(rt, ns, match, q)
            return
        limit = int(q.get("limit") or 0)
        after = None
        if q.get("continue"):
            try:
                after = tuple(json.loads(base64.urlsafe_b64decode(q["continue"]).decode()))
            except ValueError:
                raise ApiError(410, "the provided continue parameter is invalid", "Expired") from None
        items, rv, cont, remaining = self.emu.store.list(rt, ns, match, limit, after)  # type: ignore[arg-type]
        if self._wants_table():
            token = base64.urlsafe_b64encode(json.dumps(list(cont)).encode()).decode() if cont else None
            self._send(200, tables.table(rt, items, str(rv), token))
            return
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if cont is not None:
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(list(cont)).encode()).decode()
            meta["remainingItemCount"] = remaining
        self._send(200, {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta, "items": items})

    def _watch(self, rt: resources.ResourceType, ns: str | None, match: Any, q: dict[str, str]) -> None:
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else self.emu.max_watch_s
        events: Iterator[dict[str, Any]] = self.emu.store.watch(
            rt, ns, match, q.get("resourceVersion"), min(timeout, self.emu.max_watch_s),
            bookmarks=q.get("allowWatchBookmarks", "").lower() in _TRUE,
            bookmark_interval_s=self.emu.bookmark_interval_s,
            send_initial_events=q.get("sendInitialEvents", "").lower() in _TRUE,
            alive=self._client_alive, stop=self.emu.stopping)
        as_table = self._wants_table()  # kubectl get -w
        self._start_stream("application/json")
        try:
            for event in events:
                if as_table and event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    obj = event["object"]
                    event = {"type": event["type"],
                             "object": tables.table(rt, [obj], obj["metadata"]["resourceVersion"], None)}
                if not self._chunk(json.dumps(event).encode() + b"\n"):
                    self.close_connection = True
                    return
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
        self._end_stream()

    def _delete_options(self, q: dict[str, str]) -> dict[str, Any]:
        body = self._body() or {}
        if not isinstance(body, dict):
            raise bad_request("DeleteOptions must be an object")
        if q.get("propagationPolicy"):
            body["propagationPolicy"] = q["propagationPolicy"]
        if q.get("gracePeriodSeconds"):
            body["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
        if body.get("propagationPolicy") not in (None, "Background", "Foreground", "Orphan"):
            raise bad_request(f"invalid propagationPolicy {body['propagationPolicy']!r}")
        return body

    def _delete_collection(self, rt: resources.ResourceType, ns: str | None, q: dict[str, str]) -> None:
        match = self._selectors(rt, q)
        options = self._delete_options(q)
        items, _, _, _ = self.emu.store.list(rt, ns, match)
        for obj in items:
            try:
                self.emu.store.delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], options,
                                      q.get("dryRun") == "All")
            except ApiError as err:
                if err.code != 404:
                    raise
        self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})

    def _log(self, ns: str, name: str, q: dict[str, str]) -> None:
        pod = self.emu.store.get(self.emu.store.type_for("", "pods"), ns, name)
        containers = [c["name"] for c in pod["spec"].get("containers") or []]
        container = q.get("container") or (containers[0] if len(containers) == 1 else "")
        if not container:
            raise bad_request(f"a container name must be specified for pod {name}, choose one of: "
                              f"[{' '.join(containers)}]")
        if container not in containers:
            raise bad_request(f"container {container} is not valid for pod {name}")
        previous = q.get("previous", "").lower() in _TRUE
        source = self.emu.log_source
        path = source.log_path(ns, name, container, previous) if source is not None else None
        if path is None:
            what = "previous terminated container" if previous else "container"
            raise bad_request(f'{what} "{container}" in pod "{name}" is waiting to start: ContainerCreating')
        full = _read_from(path, 0)
        data = _tail(full, q)
        if q.get("follow", "").lower() not in _TRUE:
            self._send(200, data, "text/plain")
            return
        self._start_stream("text/plain")
        offset = len(full)
        if data and not self._chunk(data):
            return
        while self._client_alive() and not self.emu.stopping.is_set():
            finished = source.log_finished(ns, name, container)  # type: ignore[union-attr]
            more = _read_from(path, offset)
            if more:
                offset += len(more)
                if not self._chunk(more):
                    return
            elif finished:
                break
            else:
                time.sleep(0.1)
        self._end_stream()


def _read_from(path: str, offset: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read()
    except OSError:
        return b""


def _tail(data: bytes, q: dict[str, str]) -> bytes:
    """``tailLines`` then ``limitBytes``, as the kubelet applies them."""
    if q.get("tailLines"):
        n = int(q["tailLines"])
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-n:]) if n > 0 else b""
    if q.get("limitBytes"):
        data = data[: int(q["limitBytes"])]
    return data


def make_server(emulator: "KubeEmulator", host: str = "127.0.0.1", port: int = 0) -> _Server:
    server = _Server((host, port), Handler)
    server.emulator = emulator
    return server
