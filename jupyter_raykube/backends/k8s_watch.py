"""A local cache of our Pods, kept current by list + watch (kubespawner's `ResourceReflector`).

The autoscaler asks for a cluster's nodes every second; answering from this cache costs no
API call. One thread lists the Pods matching a label selector, then watches from the list's
resourceVersion; a watch that ends is resumed from the last version seen (bookmarks keep it
fresh), and a `410 Gone` (the version left the server's history) starts over with a list.
Writes the backend makes are put into the cache at once (`upsert`), so a Pod it has just
created is never missing from the next round and is never launched twice. Stale writes lose
to newer versions; a Pod the watch saw deleted stays deleted (a tombstone per name).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import urllib3
from kubernetes import watch
from kubernetes.client import CoreV1Api, V1Pod
from kubernetes.client.exceptions import ApiException


def resource_version(pod: V1Pod) -> int:
    try:
        return int(pod.metadata.resource_version)
    except (TypeError, ValueError):  # opaque on paper; integers on every real apiserver
        return 0


class PodReflector:
    """Pods of one namespace matching `label_selector`, by name."""

    def __init__(self, api: CoreV1Api, namespace: str, label_selector: str, *,
                 request_timeout_s: float = 10.0, watch_timeout_s: int = 60,
                 log: logging.Logger | None = None,
                 describe_error: Callable[[BaseException, str], str] = lambda exc, verb: str(exc)) -> None:
        self.api = api
        self.namespace = namespace
        self.label_selector = label_selector
        self.request_timeout_s = request_timeout_s
        self.watch_timeout_s = watch_timeout_s
        self.log = log or logging.getLogger("jupyter_raykube")
        self.describe_error = describe_error
        self.first_load = threading.Event()
        self.last_error = ""  # the reason the last list/watch failed ("" once it works again)
        self.refused = False  # the last failure was 401/403: retrying will not help by itself
        self.lists = 0  # how many times the cache was (re)built from a list
        self._pods: dict[str, V1Pod] = {}
        self._tombstones: dict[str, int] = {}  # name -> resourceVersion of its deletion
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"raykube-pods-{namespace}", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> PodReflector:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        current = self._watch
        if current is not None:
            current.stop()  # unblocks a read that waits for the next event
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # --- the cache ---------------------------------------------------------------------------

    def pods(self) -> list[V1Pod]:
        with self._lock:
            return list(self._pods.values())

    def get(self, name: str) -> V1Pod | None:
        with self._lock:
            return self._pods.get(name)

    def upsert(self, pod: V1Pod) -> None:
        """Record a Pod this process just wrote (create or delete response)."""
        with self._lock:
            self._apply("MODIFIED", pod)

    def _apply(self, kind: str, pod: V1Pod) -> None:
        name = pod.metadata.name
        version = resource_version(pod)
        current = self._pods.get(name)
        if current is not None and resource_version(current) > version:
            return
        if kind == "DELETED":
            self._pods.pop(name, None)
            self._tombstones[name] = max(version, self._tombstones.get(name, 0))
            return
        if self._tombstones.get(name, -1) >= version:
            return  # an older write arriving after the watch saw the Pod go
        self._pods[name] = pod

    def _replace(self, items: list[V1Pod], list_version: int) -> None:
        """A fresh list: it is the truth up to `list_version`; keep only newer local writes."""
        with self._lock:
            fresh = {p.metadata.name: p for p in items}
            for name, pod in self._pods.items():
                if name not in fresh and resource_version(pod) > list_version:
                    fresh[name] = pod
            self._pods = fresh
            self._tombstones = {n: v for n, v in self._tombstones.items() if v > list_version}

    # --- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        version: str | None = None
        delay = 0.5
        while not self._stop.is_set():
            verb = "list" if version is None else "watch"
            try:
                if version is None:
                    version = self._list()
                verb = "watch"
                version = self._watch_from(version)
                delay = 0.5
            except ApiException as exc:
                if exc.status == 410:  # our version left the server's history: list again
                    self.log.debug("Pod watch in %s expired; listing again", self.namespace)
                    version = None
                    continue
                self._failed(exc, verb, delay)
                delay = min(delay * 2, 10.0)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                # ValueError: a connection cut mid-chunk (during stop, or by the server)
                if self._stop.is_set():
                    return
                self._failed(exc, verb, delay)
                delay = min(delay * 2, 10.0)

    def _failed(self, exc: BaseException, verb: str, delay: float) -> None:
        self.last_error = self.describe_error(exc, verb)
        self.refused = isinstance(exc, ApiException) and exc.status in (401, 403)
        self.log.warning("Watching Ray Pods in namespace %s failed (retrying in %.1f s): %s",
                         self.namespace, delay, self.last_error)
        self._stop.wait(delay)

    def _list(self) -> str:
        listed = self.api.list_namespaced_pod(self.namespace, label_selector=self.label_selector,
                                              _request_timeout=self.request_timeout_s)
        version = listed.metadata.resource_version
        self._replace(list(listed.items or []), int(version or 0))
        self.lists += 1
        self.last_error, self.refused = "", False
        self.first_load.set()
        return version

    def _watch_from(self, version: str) -> str:
        """Apply events until the server ends the watch; returns the last version seen."""
        w = watch.Watch()
        self._watch = w
        try:
            for event in w.stream(self.api.list_namespaced_pod, self.namespace,
                                  label_selector=self.label_selector, resource_version=version,
                                  allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout_s,
                                  _request_timeout=(self.request_timeout_s, self.watch_timeout_s + 15)):
                if self._stop.is_set():
                    break
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    with self._lock:
                        self._apply(event["type"], event["object"])
                version = w.resource_version or version
                self.last_error, self.refused = "", False
        finally:
            self._watch = None
        return version
