"""Every error a user of jupyter_raykube can meet, in one vocabulary shared by the backends, the
manager and the front-ends. The REST API maps each to one HTTP status (400, 403, 404, 409, 503);
the magic shows its message as is. Messages are for people: they name what was wrong, and never
carry a traceback, a server path or a client's whole (possibly huge) value."""

from __future__ import annotations

import reprlib
from typing import Any

_ECHO_MAX = 60  # how much of a bad value (or a field name a client made up) an error repeats
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _ECHO_MAX
_REPR.maxlevel = 2


def echo(value: Any) -> str:
    """A short, safe repr of a client's value for an error message: cut to a prefix, and never
    the full text of a huge number (Python refuses to print ints of over 4,300 digits)."""
    try:
        text = _REPR.repr(value)
    except ValueError:
        text = "<a number too long to print>"
    return text if len(text) <= _ECHO_MAX else text[:_ECHO_MAX - 1] + "…"


class SpecError(ValueError):
    """Bad input, named: the field, the value given and what is allowed (REST: 400)."""

    def __init__(self, field_name: str, value: Any, allowed: str) -> None:
        self.field = field_name if len(field_name) <= 2 * _ECHO_MAX else field_name[:2 * _ECHO_MAX - 1] + "…"
        self.value = value
        self.allowed = allowed
        super().__init__(f"{self.field}={echo(value)} is not allowed: {allowed}")


class BackendError(RuntimeError):
    """The backend could not do what was asked: a start failed, a permission is missing, the
    backend is unreachable (REST: 503 unless a subclass says otherwise)."""


class ClusterNotFound(LookupError):
    """No cluster of that name exists (REST: 404)."""


class ClusterNotRunning(RuntimeError):
    """The cluster exists but is not running (starting, stopping, failed): its dashboard, jobs
    and logs cannot be reached (REST: 409)."""


class ClusterExistsError(BackendError):
    """A cluster with that name already exists, here or in another process (REST: 409)."""


class NotOwnedError(BackendError):
    """The cluster is autoscaled by another process; change it there (REST: 409)."""


class StartError(BackendError):
    """The cluster did not come up; everything it started has been removed."""


class RayVersionMismatch(BackendError):
    """The cluster's image runs another Ray (or Python) version than the driver."""


class PolicyError(BackendError):
    """A limit set by the administrator would be exceeded (REST: 403)."""
