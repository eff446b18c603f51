"""REST handlers: parse, authorize, delegate to the manager, serialize. Nothing else.

Every error a client can cause maps to a 4xx with `{"message": ...}` through one table;
a 5xx means a bug or an unavailable backend, never bad input.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from ..errors import (BackendError, ClusterExistsError, ClusterNotFound, ClusterNotRunning, NotOwnedError,
                      PolicyError, SpecError)
from .guard import BodyError, OwnerGuard, parse_json_body

AUTH_RESOURCE = "raykube"

_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (BodyError, 400), (SpecError, 400), (PolicyError, 403), (ClusterNotFound, 404),
    (ClusterExistsError, 409), (NotOwnedError, 409), (ClusterNotRunning, 409), (BackendError, 503),
)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def mapped_errors(method: F) -> F:
    """Check the caller and the URL's cluster name, then turn domain errors into HTTP errors
    with the exception's message."""

    @wraps(method)
    async def wrapper(self: RayKubeHandler, *args: Any, **kwargs: Any) -> Any:
        self.check_caller()
        if "name" in kwargs:
            self.check_name(kwargs["name"])
        try:
            return await method(self, *args, **kwargs)
        except Exception as exc:
            for kind, status in _STATUS:
                if isinstance(exc, kind):
                    raise web.HTTPError(status, str(exc)) from None
            raise

    return wrapper  # type: ignore[return-value]


class RayKubeHandler(OwnerGuard, APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def _track_activity(self) -> bool:  # type: ignore[override]
        """Only changes count as the user's activity. Reads (the list, a snapshot, events, GET /)
        are what the widget and the sidebar poll every second, and counting them would keep an
        idle server from ever being culled; jupyter_server's own status handlers opt out too."""
        return self.request.method not in ("GET", "HEAD", "OPTIONS")

    def json_body(self) -> Any:
        return parse_json_body(self.request.body)

    def reply(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(payload, allow_nan=False))


class InfoHandler(RayKubeHandler):
    @web.authenticated
    @authorized
    @mapped_errors
    async def get(self) -> None:
        """Who owns the clusters, and what a new one gets: `defaults` is a whole request
        (with the next free name) that a form pre-fills and POST takes back as it is."""
        self.reply({"owner": self.manager.owner, "backend": self.manager.backend.name,
                    "max_clusters": self.manager.max_clusters,
                    "defaults": await self.manager.default_request()})


class ClustersHandler(RayKubeHandler):
    @web.authenticated
    @authorized
    @mapped_errors
    async def get(self) -> None:
        clusters = await self.manager.list()
        self.reply({"clusters": [c.snapshot() for c in clusters]})

    @web.authenticated
    @authorized
    @mapped_errors
    async def post(self) -> None:
        cluster = await self.manager.start(self.json_body())  # no "name": the manager picks one
        self.reply(cluster.snapshot(), status=202)


class ClusterHandler(RayKubeHandler):
    @web.authenticated
    @authorized
    @mapped_errors
    async def get(self, name: str) -> None:
        cluster = await self.manager.refresh(await self.manager.get(name))
        self.reply(cluster.snapshot())

    @web.authenticated
    @authorized
    @mapped_errors
    async def patch(self, name: str) -> None:
        body = self.json_body()
        groups = body.get("groups") if isinstance(body, dict) else None
        if not isinstance(groups, dict) or not groups or set(body) - {"groups"}:
            raise SpecError("groups", groups, 'an object of group -> {"min": N, "max": N}, '
                                              'e.g. {"groups": {"cpu": {"min": 0, "max": 4}}}')
        for group_name, change in groups.items():
            if not isinstance(change, dict) or not change or set(change) - {"min", "max"}:
                raise SpecError(f"groups.{group_name}", change, 'an object with "min" and/or "max"')
        cluster = await self.manager.change_groups(name, groups)
        self.reply(cluster.snapshot())

    @web.authenticated
    @authorized
    @mapped_errors
    async def delete(self, name: str) -> None:
        await self.manager.stop(name)
        self.set_status(204)
        self.finish()


class ClusterEventsHandler(RayKubeHandler):
    @web.authenticated
    @authorized
    @mapped_errors
    async def get(self, name: str) -> None:
        """All events, or with `?after=ID` those newer than ID; `&wait=S` holds the answer up
        to S seconds until one arrives (how a kernel follows decisions without polling)."""
        after = query_int(self, "after", 0, 2**53)
        wait = query_int(self, "wait", 0, EVENTS_WAIT_MAX_S)
        cluster = await self.manager.get(name)
        if after is None:
            self.reply({"events": cluster.events.to_json()})
            return
        events = await cluster.events.wait_after(after, wait or 0)
        self.reply({"events": [e.to_json() for e in events]})


EVENTS_WAIT_MAX_S = 60


def query_int(handler: RayKubeHandler, field: str, low: int, high: int) -> int | None:
    """An optional whole-number query argument in [low, high]; anything else is a 400."""
    raw = handler.get_query_argument(field, None)
    if raw is None:
        return None
    if not raw.isdigit() or not low <= int(raw[:20]) <= high:
        raise SpecError(field, raw, f"a whole number from {low} to {high}")
    return int(raw)
