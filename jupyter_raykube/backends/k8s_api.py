"""Calls to the Kubernetes API, as the backend makes them: off the event loop (a worker thread
per call, the official sync client), retried with exponential backoff while the API server is
unavailable (5xx, 429 with its Retry-After, lost connections), idempotent creates (a 409 for
our own earlier attempt whose answer was lost is success), and every refusal turned into an
error that says which permission or quota to change."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import anyio
import urllib3
from kubernetes.client.exceptions import ApiException

from ..errors import BackendError
from .k8s_objects import LABEL_CLUSTER, LABEL_CLUSTER_ID, LABEL_GROUP, LABEL_NODE_TYPE

T = TypeVar("T")


class CallSettings(Protocol):
    """What the calls read from their backend, live (a test may change a timeout)."""

    namespace: str
    retry_timeout: float
    request_timeout: float
    log: Any


class PermissionDenied(BackendError):
    """The API server refused a call (403): the service account lacks a permission."""


class QuotaExceeded(BackendError):
    """The namespace's ResourceQuota refused a create (403 "exceeded quota"): retrying will not
    help until something in the namespace is deleted or the quota raised."""


@dataclass(frozen=True)
class Call:
    """What an API call does, in RBAC terms (for error messages)."""

    verb: str
    resource: str
    name: str = ""

    def describe(self, namespace: str) -> str:
        target = f"{self.resource}/{self.name}" if self.name else self.resource
        return f"{self.verb} {target} in namespace {namespace}"


class NameTaken(BackendError):
    """An object of that name exists and is not ours."""


class KubeCalls:
    """The API calls of one backend, in its namespace."""

    def __init__(self, owner: CallSettings) -> None:
        self.owner = owner

    async def call(self, call: Call, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One API call in a worker thread, retried with exponential backoff while the server is
        unavailable. A 403 becomes PermissionDenied; other errors are raised as they are."""
        deadline = time.monotonic() + self.owner.retry_timeout
        delay = 0.25
        while True:
            try:
                return await anyio.to_thread.run_sync(
                    partial(fn, *args, _request_timeout=self.owner.request_timeout, **kwargs))
            except ApiException as exc:
                if exc.status == 403 or exc.status == 401:
                    raise self.failed(call, exc) from exc
                if not (exc.status == 429 or (exc.status or 0) >= 500):
                    raise
                wait, why = max(delay, _retry_after(exc)), f"{exc.status} {exc.reason}"
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                wait, why = delay, f"{type(exc).__name__}: {exc}"
            if time.monotonic() + wait > deadline:
                raise BackendError(f"the Kubernetes API server did not answer {call.describe(self.owner.namespace)} "
                                   f"for {self.owner.retry_timeout:.0f} s (last: {why})")
            self.owner.log.debug("retrying %s in %.2f s: %s", call.describe(self.owner.namespace), wait, why)
            await anyio.sleep(wait)
            delay = min(delay * 2, 8.0)

    async def create(self, call: Call, create: Callable[..., T], read: Callable[..., T], body: Any) -> T:
        """Create `body`; a 409 for an object that carries our labels (our own earlier attempt,
        whose response was lost) is success, one for somebody else's object is `_NameTaken`."""
        deadline = time.monotonic() + self.owner.retry_timeout
        name = body.metadata.name
        while True:
            try:
                return await self.call(call, create, self.owner.namespace, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise self.failed(call, exc) from exc
            try:
                existing = await self.call(Call("get", call.resource, name), read, name, self.owner.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise self.failed(Call("get", call.resource, name), exc) from exc
                if time.monotonic() > deadline:  # conflicts for an object that is not there
                    raise BackendError(f"{call.describe(self.owner.namespace)} kept failing with 409 Conflict") from exc
                await anyio.sleep(0.2)
                continue
            if _same_node(existing, body):
                self.owner.log.debug("%s: already created by an earlier attempt", call.describe(self.owner.namespace))
                return existing
            raise NameTaken(f"{call.resource}/{name} exists and belongs to another cluster")

    async def delete(self, call: Call, delete: Callable[..., Any]) -> Any:
        """Delete by name; already gone (404) is fine."""
        try:
            return await self.call(call, delete, call.name, self.owner.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self.failed(call, exc) from exc

    async def list(self, call: Call, list_fn: Callable[..., Any], selector: str) -> list[Any]:
        try:
            listed = await self.call(call, list_fn, self.owner.namespace, label_selector=selector)
        except ApiException as exc:
            raise self.failed(call, exc) from exc
        return list(listed.items or [])

    def describe(self, call: Call, exc: BaseException) -> str:
        if isinstance(exc, ApiException):
            if _over_quota(exc):
                return f"the namespace's ResourceQuota refused to {call.describe(self.owner.namespace)}: {status_message(exc)}"
            if exc.status == 403:
                return (f"permission denied: the service account may not {call.describe(self.owner.namespace)} "
                        f"({status_message(exc)}). Grant it the Role in deploy/rbac.yaml "
                        f"(verb {call.verb!r} on {call.resource.split('/')[0]!r}"
                        + (f", subresource {call.resource.split('/')[1]!r}" if "/" in call.resource else "") + ")")
            if exc.status == 401:
                return f"the API server rejected our credentials (401) for {call.describe(self.owner.namespace)}"
            return f"{call.describe(self.owner.namespace)} failed: {exc.status} {status_message(exc)}"
        return f"{call.describe(self.owner.namespace)} failed: {type(exc).__name__}: {exc}"

    def failed(self, call: Call, exc: ApiException) -> BackendError:
        kind = QuotaExceeded if _over_quota(exc) else PermissionDenied if exc.status == 403 else BackendError
        return kind(self.describe(call, exc))


def _same_node(existing: Any, wanted: Any) -> bool:
    mine, theirs = _labels_of(wanted), _labels_of(existing)
    return all(theirs.get(k) == mine.get(k) for k in (LABEL_CLUSTER, LABEL_CLUSTER_ID, LABEL_GROUP, LABEL_NODE_TYPE))


def _labels_of(obj: Any) -> dict[str, str]:
    return dict(obj.metadata.labels or {})


def _retry_after(exc: ApiException) -> float:
    value = (exc.headers or {}).get("Retry-After") if exc.headers else None
    try:
        return min(float(value), 60.0) if value is not None else 0.0
    except ValueError:
        return 0.0


def _over_quota(exc: ApiException) -> bool:
    """A 403 from the ResourceQuota admission plugin, not from RBAC: both are "Forbidden"."""
    return exc.status == 403 and "exceeded quota" in status_message(exc)


def status_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(exc.reason or exc.status)
