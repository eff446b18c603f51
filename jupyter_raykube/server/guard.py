"""The rules every route of the extension applies before it does anything, in one place:
who may call (the clusters' owner), what a cluster name in a URL may be, what a body may be,
and how an error looks (a JSON `message`; never a traceback, a server path or a 500 for bad
input). The REST handlers and the dashboard proxy (HTTP and websocket) all mix this in, so no
route can forget a rule.
"""

from __future__ import annotations

import json
from typing import Any

from tornado import web

from ..manager import ClusterManager
from ..spec import SpecError, check_cluster_name

MAX_BODY_BYTES = 64 * 1024  # a cluster request is a few hundred bytes; nothing needs more


class BodyError(Exception):
    """The body is not what the endpoint takes (too large, not JSON)."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_body(body: bytes) -> Any:
    """Strict JSON: no NaN/Infinity (the snapshot must stay valid JSON), no nesting deep
    enough to exhaust the parser, no integer too long to convert, no megabyte bodies."""
    if len(body) > MAX_BODY_BYTES:
        raise BodyError(f"the request body is {len(body)} bytes; at most {MAX_BODY_BYTES} are allowed")
    try:
        return json.loads(body or b"null", parse_constant=_refuse_constant)
    except RecursionError:
        raise BodyError("the request body is nested too deeply") from None
    except UnicodeDecodeError:
        raise BodyError("the request body is not UTF-8 text") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers over Python's digit limit
        raise BodyError(f"the request body is not valid JSON: {str(exc)[:120]}") from None


class OwnerGuard:
    """Mixed into every handler of the extension (before tornado's RequestHandler)."""

    settings: dict[str, Any]
    current_user: Any
    log: Any

    @property
    def manager(self) -> ClusterManager:
        return self.settings["raykube_manager"]

    def check_caller(self) -> None:
        """Under JupyterHub (or with `restrict_to_owner`), only the clusters' owner may use
        them, through any route; an admin who can reach this server is still not that user."""
        if not self.settings.get("raykube_restrict_to_owner"):
            return
        owner = self.manager.owner
        caller = getattr(self.current_user, "username", None)
        if caller != owner:
            raise web.HTTPError(403, f"these Ray clusters belong to {owner!r}; "
                                     f"{caller!r} may not see, use or change them")

    @staticmethod
    def check_name(name: str) -> None:
        """A cluster name from a URL, checked like a new cluster's (400 names what is allowed)."""
        try:
            check_cluster_name(name)
        except SpecError as exc:
            raise web.HTTPError(400, str(exc)) from None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """`{"message": ...}` for every error, as Jupyter's API handlers answer, but never a
        traceback: an unexpected exception is logged here and answered in one line."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "internal error in the Ray clusters extension; the server log has the details"
        else:
            message = self._reason or "request refused"  # type: ignore[attr-defined]
        self.set_header("Content-Type", "application/json")  # type: ignore[attr-defined]
        self.finish(json.dumps({"message": message, "reason": None}))  # type: ignore[attr-defined]
