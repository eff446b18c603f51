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

from ..backends.base import BackendError, ClusterNotFound
from ..manager import ClusterExistsError, ClusterManager, NotOwnedError
from ..policy import PolicyError
from ..spec import SpecError

AUTH_RESOURCE = "raykube"


class NotYours(Exception):
    """The caller is not the user this server's clusters belong to."""


_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (SpecError, 400), (PolicyError, 403), (NotYours, 403), (ClusterNotFound, 404),
    (ClusterExistsError, 409), (NotOwnedError, 409), (BackendError, 503),
)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class _BadRequest(Exception):
    """The body is not what the endpoint takes (not JSON, wrong types)."""


def mapped_errors(method: F) -> F:
    """Turn domain errors into HTTP errors with the exception's message."""

    @wraps(method)
    async def wrapper(self: RayKubeHandler, *args: Any, **kwargs: Any) -> Any:
        try:
            self.check_caller()
            return await method(self, *args, **kwargs)
        except _BadRequest as exc:
            raise web.HTTPError(400, str(exc)) from None
        except Exception as exc:
            for kind, status in _STATUS:
                if isinstance(exc, kind):
                    raise web.HTTPError(status, str(exc)) from None
            raise

    return wrapper  # type: ignore[return-value]


class RayKubeHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def manager(self) -> ClusterManager:
        return self.settings["raykube_manager"]

    def check_caller(self) -> None:
        """Under JupyterHub (or with `restrict_to_owner`), only the clusters' owner may use
        the API; an admin who can reach this server is still not that user."""
        owner = self.manager.owner
        caller = getattr(self.current_user, "username", None)
        if self.settings.get("raykube_restrict_to_owner") and caller != owner:
            raise NotYours(f"these Ray clusters belong to {owner!r}; {caller!r} may not see or change them")

    def json_body(self) -> Any:
        try:
            return json.loads(self.request.body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _BadRequest(f"the request body is not valid JSON: {exc}") from None

    def reply(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(payload))


class InfoHandler(RayKubeHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"owner": self.manager.owner, "backend": self.manager.backend.name,
                    "max_clusters": self.manager.max_clusters})


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
        spec = self.manager.spec_from_request(self.json_body())
        cluster = await self.manager.start(spec)
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
        cluster = await self.manager.get(name)
        for group_name, change in groups.items():
            current = cluster.spec.group(group_name)
            if not isinstance(change, dict) or set(change) - {"min", "max"}:
                raise SpecError(f"groups.{group_name}", change, 'an object with "min" and/or "max"')
            low, high = change.get("min", current.min), change.get("max", current.max)
            for field, value in (("min", low), ("max", high)):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise SpecError(f"groups.{group_name}.{field}", value, "a whole number")
            await self.manager.scale(name, group_name, low, high)
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
        cluster = await self.manager.get(name)
        self.reply({"events": cluster.events.to_json()})
