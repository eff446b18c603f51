"""The two control loops a Kubernetes backend relies on: garbage collection and namespace deletion.

Both run asynchronously in one background thread, as kube-controller-manager does, so a test
that deletes an owner must wait for dependents to disappear, exactly as on a real cluster:

* garbage collector: when an object is deleted (background propagation) every object whose
  ``metadata.ownerReferences[].uid`` names it loses that reference; an object left with no live
  owner is deleted too, transitively. An object created with owner references none of which
  exist is deleted as well (the real collector treats absent owners the same way).
  ``propagationPolicy: Orphan`` (strip the references) and ``Foreground`` (dependents first)
  are done synchronously by the store before the owner goes.
* namespace controller: a deleted namespace is ``Terminating`` (no new content), its content
  is deleted, then the namespace object disappears.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from .errors import ApiError
from .resources import ResourceType
from .store import Store, drop_owner_reference


class Controllers:
    """Background GC + namespace lifecycle over a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._busy = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="kube-emulator-controllers", daemon=True)
        store.add_delete_listener(self._on_delete)
        store.add_create_listener(self._on_create)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until queued GC work is done (for tests that want a settled store)."""
        with self._busy:
            return self._busy.wait_for(lambda: self._pending == 0, timeout=timeout_s)

    def _enqueue(self, item: tuple[str, Any]) -> None:
        with self._busy:
            self._pending += 1
        self._queue.put(item)

    def _on_delete(self, obj: dict[str, Any], policy: str) -> None:
        if policy == "Namespace":
            self._enqueue(("namespace", obj["metadata"]["name"]))
        elif policy != "Orphan":
            self._enqueue(("owner-gone", obj["metadata"]["uid"]))

    def _on_create(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        if obj["metadata"].get("ownerReferences") and self._store.gc_absent_owners:
            self._enqueue(("check-owners", (rt, obj["metadata"].get("namespace"), obj["metadata"]["name"])))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._handle(*item)
            except ApiError:
                pass  # the object changed or vanished meanwhile; nothing left to collect
            finally:
                with self._busy:
                    self._pending -= 1
                    self._busy.notify_all()

    def _handle(self, kind: str, arg: Any) -> None:
        store = self._store
        if kind == "namespace":
            for rt, obj in store.namespace_contents(arg):
                try:
                    store.delete(rt, arg, obj["metadata"]["name"])
                except ApiError:
                    pass  # already gone (collected as a dependent of something else)
            store.finish_namespace(arg)
        elif kind == "check-owners":
            rt, ns, name = arg
            refs = store.get(rt, ns, name)["metadata"].get("ownerReferences") or []
            if refs and not any(store.get_by_uid(ref.get("uid", "")) for ref in refs):
                store.delete(rt, ns, name)
        elif kind == "owner-gone":
            for rt, dep in store.dependents_of(arg):
                refs = dep["metadata"].get("ownerReferences") or []
                live = [r for r in refs if r.get("uid") != arg and store.get_by_uid(r.get("uid", ""))]
                ns, name = dep["metadata"].get("namespace"), dep["metadata"]["name"]
                if live:
                    store.mutate(rt, ns, name, lambda o: drop_owner_reference(o, arg))
                else:
                    store.delete(rt, ns, name)
