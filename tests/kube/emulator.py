"""``KubeEmulator``: an in-process Kubernetes API server on 127.0.0.1 for the project's tests.

What it is for: the Kubernetes backend is tested over real HTTP with the unpatched official
client (and ``kubectl``), against a server that behaves like kube-apiserver where the backend
can observe it: status codes and ``Status`` bodies, defaulting, strict validation (see
``schema.py``, pinned to Kubernetes 1.37, and ``validation.py``), resourceVersions, selectors,
watches with expiry, patches, garbage collection, namespace deletion. What it is not: no
admission webhooks, no RBAC enforcement (Roles are stored and validated, not enforced), no
server-side apply, no protobuf, no graceful Pod deletion (a deleted Pod is gone at once; the
process kubelet then kills its process).

Typical use (the fixtures in ``conftest.py`` do this)::

    emu = KubeEmulator().start()
    cfg_path = emu.write_kubeconfig(tmp_path / "kubeconfig")
    v1 = kubernetes.client.CoreV1Api(emu.api_client())
    emu.inject(method="POST", path_regex=r"/pods$", status=500, times=2)
    ...
    emu.stop()
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path
from typing import Any, Protocol

import kubernetes
import yaml

from .controllers import Controllers
from .faults import Fault, FaultRegistry, RequestRecord
from .resources import ResourceType
from .schema import KUBERNETES_VERSION
from .server import make_server
from .store import Store


class LogSource(Protocol):
    """Where ``GET .../pods/NAME/log`` reads from (the process kubelet implements it)."""

    def log_path(self, namespace: str, pod: str, container: str, previous: bool) -> str | None: ...

    def log_finished(self, namespace: str, pod: str, container: str) -> bool: ...


class KubeEmulator:
    """A running (after :meth:`start`) Kubernetes API emulator.

    ``token``: the bearer token written into the kubeconfig; a request that sends a different
    one gets 401. ``require_token`` also rejects requests without any token; leave it off when
    kubectl is used, because client-go never sends credentials to a plain-http server.
    ``token=None`` disables the check entirely.
    ``history_size``: how many change events watches can replay; smaller makes ``410`` easy to hit.
    ``bookmark_interval_s``: idle time before a watch that allows bookmarks gets a BOOKMARK.
    ``max_watch_s``: server-side cap on a watch's duration (kube-apiserver caps them too).
    ``gc_absent_owners``: delete objects created with ownerReferences to nothing, like the GC.
    """

    def __init__(self, *, token: str | None = "", require_token: bool = False, history_size: int = 10_000,
                 bookmark_interval_s: float = 5.0, max_watch_s: float = 300.0, gc_absent_owners: bool = True) -> None:
        self.token = secrets.token_hex(16) if token == "" else token
        self.require_token = require_token
        self.store = Store(history_size=history_size, gc_absent_owners=gc_absent_owners)
        self.controllers = Controllers(self.store)
        self.faults = FaultRegistry()
        self.bookmark_interval_s = bookmark_interval_s
        self.max_watch_s = max_watch_s
        self.log_source: LogSource | None = None
        self.stopping = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- lifecycle
    def start(self) -> "KubeEmulator":
        self._server = make_server(self)
        self.controllers.start()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kube-emulator-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close watches and the listener; idempotent."""
        self.stopping.set()
        self.store.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.controllers.stop()

    def __enter__(self) -> "KubeEmulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def version_info(self) -> dict[str, str]:
        major, minor = KUBERNETES_VERSION.split(".")
        return {"major": major, "minor": minor, "gitVersion": f"v{KUBERNETES_VERSION}.0",
                "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.25.0", "compiler": "gc", "platform": "linux/amd64"}

    # -------------------------------------------------------------- clients
    def kubeconfig(self, namespace: str = "default", name: str = "raykube-emulator") -> dict[str, Any]:
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        return {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": name, "cluster": {"server": self.url}}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}],
            "current-context": name,
        }

    def write_kubeconfig(self, path: str | os.PathLike[str], namespace: str = "default") -> Path:
        """Write a kubeconfig for kubectl / ``kubernetes.config.load_kube_config``; mode 0600."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(self.kubeconfig(namespace)))
        target.chmod(0o600)
        return target

    def configuration(self) -> kubernetes.client.Configuration:
        """A client Configuration loaded through the official kubeconfig loader."""
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config_from_dict(self.kubeconfig(), client_configuration=cfg)
        return cfg

    def api_client(self) -> kubernetes.client.ApiClient:
        return kubernetes.client.ApiClient(self.configuration())

    # ------------------------------------------------------ fault injection
    def inject(self, method: str | None = None, path_regex: str | None = None, status: int | None = 500,
               times: int | None = 1, delay_s: float = 0.0, retry_after_s: int | None = None,
               query_regex: str | None = None, reason: str | None = None, message: str | None = None) -> Fault:
        """Arm a fault: the next ``times`` matching requests wait ``delay_s`` then fail with ``status``.

        ``status=None`` only delays. 429 gets ``Retry-After`` (``retry_after_s``, default 1).
        Returns the :class:`Fault`; its ``hits`` counts firings, ``remove()`` disarms it.
        """
        return self.faults.add(Fault(method=method, path_regex=path_regex, query_regex=query_regex, status=status,
                                     times=times, delay_s=delay_s, retry_after_s=retry_after_s, reason=reason,
                                     message=message))

    def clear_faults(self) -> None:
        self.faults.clear()

    def requests(self, method: str | None = None, path_regex: str | None = None) -> list[RequestRecord]:
        """The request log (method, path, query, status, ...), optionally filtered."""
        return self.faults.records(method, path_regex)

    def clear_requests(self) -> None:
        self.faults.clear_log()

    # ------------------------------------------------------------ resources
    def register_custom_resource(self, group: str, version: str, plural: str, kind: str, namespaced: bool = True,
                                 schema: dict[str, Any] | None = None,
                                 short_names: tuple[str, ...] = ()) -> ResourceType:
        """Serve a custom resource at ``/apis/<group>/<version>/...`` (listed in discovery).

        ``schema`` is an optional JSON schema for the whole object; without one only the
        metadata rules (names, labels) are checked.
        """
        rt = ResourceType(group, version, plural, kind, namespaced, kind.lower(), short_names, ("status",),
                          builtin=False, schema=schema)
        self.store.register(rt)
        return rt

    def resource(self, plural: str, group: str = "") -> ResourceType:
        return self.store.type_for(group, plural)

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until garbage collection and namespace cleanup have caught up."""
        return self.controllers.wait_idle(timeout_s)
