"""The emulator's object store: etcd plus the generic apiserver registry, in one lock.

One global ``resourceVersion`` counter orders every write (as etcd's revision does), a bounded
history of change events feeds watches (a watch from a revision older than the history gets
``410 Expired`` so clients re-list, as after etcd compaction), and every object written is
defaulted and validated first. Stored dicts are never mutated after they are stored; each
write stores a new dict, so readers may hold references without copying.
"""

from __future__ import annotations

import copy
import ipaddress
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from . import defaults
from .errors import (STALE_OBJECT, ApiError, FieldCause, already_exists, bad_request, conflict, expired, invalid,
                     not_found)
from .patching import apply_patch
from .resources import ResourceType, builtin_types
from .selectors import Matcher
from .validation import object_errors

_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_SERVER_META = ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp",
                "deletionGracePeriodSeconds", "selfLink", "managedFields")

ObjKey = tuple[tuple[str, str], str, str]  # (type key, namespace, name)


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Change:
    """One entry of the watch history; ``old`` lets selector watches turn edits into ADDED/DELETED."""

    rv: int
    type: str
    key: tuple[str, str]
    namespace: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without fields the server bumps on every write (for no-op detection)."""
    out = dict(obj)
    meta = dict(out.get("metadata") or {})
    meta.pop("resourceVersion", None)
    out["metadata"] = meta
    return out


def drop_owner_reference(obj: dict[str, Any], uid: str) -> None:
    refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
    if refs:
        obj["metadata"]["ownerReferences"] = refs
    else:
        obj["metadata"].pop("ownerReferences", None)


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class Store:
    """Thread-safe typed object store with watch; the emulator's HTTP layer and kubelet share it."""

    def __init__(self, history_size: int = 10_000, gc_absent_owners: bool = True) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._types: dict[tuple[str, str], ResourceType] = {}
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self._by_uid: dict[str, ObjKey] = {}
        self._dependents: dict[str, set[ObjKey]] = {}
        self._rv = 0
        self._history: deque[Change] = deque(maxlen=max(1, history_size))
        self._compacted_rv = 0
        self._closed = False
        self._cluster_ips = ipaddress.ip_network("10.96.0.0/12").hosts()
        self._used_ips: set[str] = set()
        self.gc_absent_owners = gc_absent_owners
        self._delete_listeners: list[Callable[[dict[str, Any], str], None]] = []
        self._create_listeners: list[Callable[[ResourceType, dict[str, Any]], None]] = []
        for rt in builtin_types():
            self.register(rt)
        for ns in ("default", "kube-system", "kube-public"):
            self.create(self.type_for("", "namespaces"), None, {"metadata": {"name": ns}})

    # ----------------------------------------------------------------- types
    def register(self, rt: ResourceType) -> None:
        with self._lock:
            self._types[rt.key] = rt
            self._objects.setdefault(rt.key, {})

    def types(self) -> list[ResourceType]:
        with self._lock:
            return list(self._types.values())

    def type_for(self, group: str, plural: str, version: str | None = None) -> ResourceType:
        rt = self._types.get((group, plural))
        if rt is None or (version is not None and rt.version != version):
            raise ApiError(404, f"the server could not find the requested resource ({plural}.{group or 'core'})")
        return rt

    def type_for_kind(self, api_version: str, kind: str) -> ResourceType:
        for rt in self.types():
            if rt.api_version == api_version and rt.kind == kind:
                return rt
        raise ApiError(404, f"no resource for {api_version} {kind}")

    def add_delete_listener(self, fn: Callable[[dict[str, Any], str], None]) -> None:
        """``fn(deleted_object, propagation_policy)``, called under the store lock: must only enqueue."""
        self._delete_listeners.append(fn)

    def add_create_listener(self, fn: Callable[[ResourceType, dict[str, Any]], None]) -> None:
        self._create_listeners.append(fn)

    # ------------------------------------------------------------- internals
    def _allocate_cluster_ip(self) -> str:
        for ip in self._cluster_ips:
            text = str(ip)
            if text not in self._used_ips and not text.endswith((".0", ".1")):
                return text
        raise ApiError(500, "no ClusterIP addresses left")

    def _emit(self, typ: str, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if len(self._history) == self._history.maxlen:
            self._compacted_rv = self._history[0].rv
        self._history.append(Change(self._rv, typ, rt.key, obj["metadata"].get("namespace", ""), obj, old))
        self._cond.notify_all()

    def _index(self, rt: ResourceType, obj: dict[str, Any], add: bool) -> None:
        meta = obj["metadata"]
        key: ObjKey = (rt.key, meta.get("namespace", ""), meta["name"])
        if add:
            self._by_uid[meta["uid"]] = key
        else:
            self._by_uid.pop(meta["uid"], None)
        for ref in meta.get("ownerReferences") or []:
            deps = self._dependents.setdefault(ref.get("uid", ""), set())
            if add:
                deps.add(key)
            else:
                deps.discard(key)
                if not deps:
                    self._dependents.pop(ref.get("uid", ""), None)
        if rt.kind == "Service" and not rt.group:
            ip = (obj.get("spec") or {}).get("clusterIP")
            if ip and ip != "None":
                (self._used_ips.add if add else self._used_ips.discard)(ip)

    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], dict[str, Any]]:
        return self._objects[rt.key]

    def _check_namespace(self, rt: ResourceType, namespace: str | None) -> str:
        if not rt.namespaced:
            return ""
        if not namespace:
            raise bad_request("the namespace of the object must be set for a namespaced resource")
        ns = self._objects[("", "namespaces")].get(("", namespace))
        if ns is None:
            raise not_found("namespaces", namespace)
        return namespace

    def _validate(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        causes = object_errors(rt, obj)
        if causes:
            raise invalid(rt.kind, str(obj.get("metadata", {}).get("name") or ""), causes, rt.group)

    def _type_fields(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version not in (None, rt.api_version) or kind not in (None, rt.kind):
            raise bad_request(f"the API version in the data ({api_version}) does not match the expected API "
                              f"version ({rt.api_version}) or kind {kind} is not {rt.kind}")
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind

    # -------------------------------------------------------------- reading
    def current_rv(self) -> int:
        with self._lock:
            return self._rv

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        """The stored object (shared, do not mutate) or a 404."""
        with self._lock:
            obj = self._bucket(rt).get(((namespace or "") if rt.namespaced else "", name))
            if obj is None:
                raise not_found(rt.plural, name, rt.group)
            return obj

    def get_by_uid(self, uid: str) -> dict[str, Any] | None:
        with self._lock:
            key = self._by_uid.get(uid)
            return None if key is None else self._objects[key[0]].get((key[1], key[2]))

    def list(self, rt: ResourceType, namespace: str | None, match: Matcher | None = None, limit: int = 0,
             after: tuple[str, str] | None = None) -> tuple[list[dict[str, Any]], int, tuple[str, str] | None, int]:
        """Items sorted by (namespace, name), the list's resourceVersion, a continue key, and the remaining count."""
        with self._lock:
            keys = sorted(k for k in self._bucket(rt) if (not namespace or not rt.namespaced or k[0] == namespace)
                          and (after is None or k > after))
            items = [self._bucket(rt)[k] for k in keys]
            rv = self._rv
        if match is not None:
            items = [o for o in items if match(o)]
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            return items[:limit], rv, (last.get("namespace", ""), last["name"]), len(items) - limit
        return items, rv, None, 0

    def dependents_of(self, uid: str) -> list[tuple[ResourceType, dict[str, Any]]]:
        with self._lock:
            out = []
            for key in self._dependents.get(uid, set()):
                obj = self._objects[key[0]].get((key[1], key[2]))
                if obj is not None:
                    out.append((self._types[key[0]], obj))
            return out

    def namespace_contents(self, namespace: str) -> list[tuple[ResourceType, dict[str, Any]]]:
        with self._lock:
            return [(self._types[tk], obj) for tk, bucket in self._objects.items()
                    for (ns, _), obj in bucket.items() if ns == namespace and self._types[tk].namespaced]

    # -------------------------------------------------------------- writing
    def create(self, rt: ResourceType, namespace: str | None, body: dict[str, Any],
               dry_run: bool = False) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        obj = copy.deepcopy(body)
        self._type_fields(rt, obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if meta.get("resourceVersion"):
            raise ApiError(500, "resourceVersion should not be set on objects to be created")
        if rt.namespaced and meta.get("namespace") and namespace and meta["namespace"] != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        with self._lock:
            ns = self._check_namespace(rt, namespace or meta.get("namespace"))
            ns_obj = self._objects[("", "namespaces")].get(("", ns)) if ns else None
            if ns_obj is not None and ns_obj["metadata"].get("deletionTimestamp"):
                raise ApiError(403, f"{rt.plural} \"{meta.get('name') or meta.get('generateName', '')}\" is "
                                    f"forbidden: unable to create new content in namespace {ns} because it is being "
                                    "terminated", name=meta.get("name"), kind=rt.plural)
            for field in _SERVER_META:
                meta.pop(field, None)
            if ns:
                meta["namespace"] = ns
            else:
                meta.pop("namespace", None)
            if not meta.get("name") and meta.get("generateName"):
                for _ in range(100):
                    candidate = str(meta["generateName"])[:58] + "".join(secrets.choice(_NAME_CHARS) for _ in range(5))
                    if (ns, candidate) not in self._bucket(rt):
                        meta["name"] = candidate
                        break
            if meta.get("name") and (ns, meta["name"]) in self._bucket(rt):
                raise already_exists(rt.plural, meta["name"], rt.group)
            if not meta.get("name"):
                raise invalid(rt.kind, "", [FieldCause("metadata.name", "Required value: name or generateName is "
                                                                         "required", "FieldValueRequired")], rt.group)
            defaults.apply_create_defaults(rt, obj, self._allocate_cluster_ip)
            if rt.kind == "Service" and not rt.group:
                ip = obj["spec"].get("clusterIP")
                if ip in self._used_ips:
                    raise invalid("Service", meta["name"], [FieldCause(
                        "spec.clusterIPs", f'Invalid value: ["{ip}"]: failed to allocate IP {ip}: provided IP is '
                                           "already allocated")])
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["resourceVersion"] = str(self._rv + 1)
            if "spec" in obj or not rt.builtin:
                meta["generation"] = 1
            self._validate(rt, obj)
            if dry_run:
                return obj
            self._rv += 1
            self._bucket(rt)[(ns, meta["name"])] = obj
            self._index(rt, obj, add=True)
            self._emit("ADDED", rt, obj, None)
            if rt.kind == "Namespace" and not rt.group:
                self.create(self.type_for("", "serviceaccounts"), meta["name"], {"metadata": {"name": "default"}})
            for fn in self._create_listeners:
                fn(rt, obj)
            return obj

    def _write(self, rt: ResourceType, old: dict[str, Any], new: dict[str, Any], subresource: str | None,
               require_rv: bool, dry_run: bool) -> dict[str, Any]:
        """The shared tail of update and patch: preconditions, subresource split, rules, validation."""
        name = old["metadata"]["name"]
        self._type_fields(rt, new)
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                              f"({name})")
        sent_rv = meta.get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt.qualified() if rt.group else rt.plural, name, STALE_OBJECT)
        if not sent_rv and require_rv:
            raise invalid(rt.kind, name, [FieldCause("metadata.resourceVersion",
                                                     "Invalid value: 0x0: must be specified for an update")], rt.group)
        if subresource == "status":
            merged = dict(old)
            merged["status"] = new.get("status")
            if merged["status"] is None:
                merged.pop("status")
            new = copy.deepcopy(merged)
            meta = new["metadata"]
        else:
            if rt.has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            for field in _SERVER_META:
                if field in old["metadata"]:
                    meta[field] = old["metadata"][field]
                else:
                    meta.pop(field, None)
            if rt.namespaced:
                meta["namespace"] = old["metadata"]["namespace"]
            meta["name"] = name
            defaults.check_update(rt, old, new)
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if _content(new) == _content(old):
            return old
        if _spec_part(new) != _spec_part(old) and "generation" in meta:
            meta["generation"] = int(meta["generation"]) + 1
        meta["resourceVersion"] = str(self._rv + 1)
        self._validate(rt, new)
        if dry_run:
            return new
        self._rv += 1
        self._index(rt, old, add=False)
        self._bucket(rt)[(old["metadata"].get("namespace", ""), name)] = new
        self._index(rt, new, add=True)
        self._emit("MODIFIED", rt, new, old)
        return new

    def replace(self, rt: ResourceType, namespace: str | None, name: str, body: dict[str, Any],
                subresource: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        with self._lock:
            old = self.get(rt, namespace, name)
            return self._write(rt, old, copy.deepcopy(body), subresource, require_rv=not rt.builtin, dry_run=dry_run)

    def patch(self, rt: ResourceType, namespace: str | None, name: str, content_type: str, body: Any,
              subresource: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        with self._lock:
            old = self.get(rt, namespace, name)
            new = apply_patch(content_type, old, body)
            return self._write(rt, old, new, subresource, require_rv=False, dry_run=dry_run)

    def mutate(self, rt: ResourceType, namespace: str | None, name: str,
               fn: Callable[[dict[str, Any]], None], subresource: str | None = None) -> dict[str, Any]:
        """Read-modify-write atomically (in-process writers such as the kubelet): no conflicts to retry."""
        with self._lock:
            old = self.get(rt, namespace, name)
            new = copy.deepcopy(old)
            fn(new)
            return self._write(rt, old, new, subresource, require_rv=False, dry_run=False)

    def bind(self, namespace: str, name: str, node: str) -> dict[str, Any]:
        """``pods/binding``: the only way ``spec.nodeName`` is set on an existing Pod."""
        rt = self.type_for("", "pods")
        with self._lock:
            old = self.get(rt, namespace, name)
            defaults.check_binding(old, node)
            new = copy.deepcopy(old)
            new["spec"]["nodeName"] = node
            new["metadata"]["resourceVersion"] = str(self._rv + 1)
            self._rv += 1
            self._bucket(rt)[(namespace, name)] = new
            self._emit("MODIFIED", rt, new, old)
            return new

    def delete(self, rt: ResourceType, namespace: str | None, name: str, options: dict[str, Any] | None = None,
               dry_run: bool = False) -> dict[str, Any]:
        """Remove now (no finalizers); namespaces go Terminating and are emptied by the controller."""
        options = options or {}
        with self._lock:
            old = self.get(rt, namespace, name)
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
                raise conflict(rt.plural, name, f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                                                f"object meta: {old['metadata']['uid']}", rt.group)
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise conflict(rt.plural, name, f"Precondition failed: ResourceVersion in precondition: "
                                                f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                                f"{old['metadata']['resourceVersion']}", rt.group)
            if dry_run:
                return old
            policy = options.get("propagationPolicy") or "Background"
            if rt.kind == "Namespace" and not rt.group:
                if old["metadata"].get("deletionTimestamp"):
                    return old
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = now_rfc3339()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                new["status"] = {"phase": "Terminating"}
                self._rv += 1
                new["metadata"]["resourceVersion"] = str(self._rv)
                self._bucket(rt)[("", name)] = new
                self._emit("MODIFIED", rt, new, old)
                for fn in self._delete_listeners:
                    fn(new, "Namespace")
                return new
            uid = old["metadata"]["uid"]
            if policy == "Foreground":
                for dep_rt, dep in self.dependents_of(uid):
                    self.delete(dep_rt, dep["metadata"].get("namespace"), dep["metadata"]["name"], options)
            elif policy == "Orphan":
                # Like the orphan finalizer: references are stripped before the owner goes.
                for dep_rt, dep in self.dependents_of(uid):
                    self.mutate(dep_rt, dep["metadata"].get("namespace"), dep["metadata"]["name"],
                                lambda o: drop_owner_reference(o, uid))
            return self._remove(rt, old, options, policy)

    def _remove(self, rt: ResourceType, old: dict[str, Any], options: dict[str, Any], policy: str) -> dict[str, Any]:
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            grace = (old.get("spec") or {}).get("terminationGracePeriodSeconds", 0) if rt.kind == "Pod" else 0
        gone = copy.deepcopy(old)
        self._rv += 1
        gone["metadata"]["resourceVersion"] = str(self._rv)
        gone["metadata"]["deletionTimestamp"] = now_rfc3339()
        gone["metadata"]["deletionGracePeriodSeconds"] = int(grace)
        del self._bucket(rt)[(old["metadata"].get("namespace", ""), old["metadata"]["name"])]
        self._index(rt, old, add=False)
        self._emit("DELETED", rt, gone, old)
        for fn in self._delete_listeners:
            fn(gone, policy)
        return gone

    def finish_namespace(self, name: str) -> None:
        """Called by the namespace controller once the namespace is empty."""
        rt = self.type_for("", "namespaces")
        with self._lock:
            old = self._bucket(rt).get(("", name))
            if old is not None:
                self._remove(rt, old, {}, "Background")

    # ---------------------------------------------------------------- watch
    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._cond.notify_all()

    def watch(self, rt: ResourceType, namespace: str | None, match: Matcher, resource_version: str | None,
              timeout_s: float | None, bookmarks: bool = False, bookmark_interval_s: float = 5.0,
              send_initial_events: bool = False, alive: Callable[[], bool] | None = None,
              stop: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """Yield watch events (``{"type", "object"}``) until timeout, close, ``stop`` or ``alive()`` is False.

        No resourceVersion (or ``"0"``) starts with synthetic ADDED events for the current
        state, like the apiserver; an explicit one replays history after it, or sends an
        ERROR event carrying a 410 Expired Status if that part of history was dropped.
        """
        deadline = time.monotonic() + timeout_s if timeout_s else None
        initial: list[dict[str, Any]] = []
        too_old: dict[str, Any] | None = None
        with self._lock:
            if resource_version in (None, "", "0") or send_initial_events:
                initial = [o for o in self._bucket(rt).values()
                           if (not namespace or o["metadata"].get("namespace") == namespace) and match(o)]
                initial.sort(key=lambda o: int(o["metadata"]["resourceVersion"]))
                last = self._rv
            else:
                try:
                    last = int(str(resource_version))
                except ValueError:
                    raise bad_request(f"invalid resource version {resource_version!r}") from None
                if last < self._compacted_rv:
                    too_old = self._expired_event(last)
        if too_old is not None:
            yield too_old
            return
        for obj in initial:
            yield {"type": "ADDED", "object": obj}
        if send_initial_events and bookmarks:
            yield self._bookmark(rt, last, initial_end=True)
        last_sent = time.monotonic()
        while True:
            changes: list[Change] = []
            with self._cond:
                while self._rv <= last:
                    if self._closed or (stop is not None and stop.is_set()):
                        return
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        return
                    if bookmarks and now - last_sent >= bookmark_interval_s:
                        break
                    wait = 1.0
                    if deadline is not None:
                        wait = min(wait, deadline - now)
                    if bookmarks:
                        wait = min(wait, bookmark_interval_s - (now - last_sent))
                    self._cond.wait(max(wait, 0.001))
                    if alive is not None and self._rv <= last and not alive():
                        return
                if self._rv > last:
                    if last < self._compacted_rv:
                        expired_event = self._expired_event(last)
                        changes = []
                    else:
                        expired_event = None
                        for change in reversed(self._history):
                            if change.rv <= last:
                                break
                            changes.append(change)
                        changes.reverse()
                    last = self._rv
                else:
                    expired_event = None
            if expired_event is not None:
                yield expired_event
                return
            sent = False
            for change in changes:
                event = self._filter(rt, namespace, match, change)
                if event is not None:
                    sent = True
                    yield event
            if bookmarks and not sent and time.monotonic() - last_sent >= bookmark_interval_s:
                sent = True
                yield self._bookmark(rt, last)
            if sent:
                last_sent = time.monotonic()

    def _expired_event(self, rv: int) -> dict[str, Any]:
        err = expired(f"too old resource version: {rv} ({self._compacted_rv + 1})")
        return {"type": "ERROR", "object": err.status_body()}

    @staticmethod
    def _bookmark(rt: ResourceType, rv: int, initial_end: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}}

    @staticmethod
    def _filter(rt: ResourceType, namespace: str | None, match: Matcher, change: Change) -> dict[str, Any] | None:
        if change.key != rt.key or (namespace and rt.namespaced and change.namespace != namespace):
            return None
        now_ok = match(change.obj)
        if change.type == "MODIFIED":
            was_ok = change.old is not None and match(change.old)
            if now_ok and was_ok:
                return {"type": "MODIFIED", "object": change.obj}
            if now_ok:
                return {"type": "ADDED", "object": change.obj}
            if was_ok:
                return {"type": "DELETED", "object": change.obj}
            return None
        return {"type": change.type, "object": change.obj} if now_ok else None
