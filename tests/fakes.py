"""Classes injected through configuration (`c.ClusterManager.backend_class`,
`c.ServerApp.identity_provider_class`), never by patching."""

from __future__ import annotations

from jupyter_core.utils import ensure_async
from jupyter_server.auth.identity import IdentityProvider, User
from tornado import web

from jupyter_raykube.backends.base import BackendError
from jupyter_raykube.backends.local import LocalBackend
from jupyter_raykube.spec import ClusterSpec


class RefusingBackend(LocalBackend):
    """Refuses every start, as a backend without capacity would: lets fuzzing post valid
    bodies without starting Ray processes (each ends as a `failed` cluster)."""

    async def create_cluster(self, spec: ClusterSpec, **kwargs: object):  # type: ignore[override]
        raise BackendError("this test backend starts nothing")


class HeaderIdentityProvider(IdentityProvider):
    """Token-authenticated callers act as the user named in `X-Test-User`, as a JupyterHub
    single-user server sees named Hub users (the default provider's users are anonymous)."""

    async def get_user(self, handler: web.RequestHandler) -> User | None:  # type: ignore[override]
        user = await ensure_async(super().get_user(handler))
        name = handler.request.headers.get("X-Test-User")
        return User(username=name) if user is not None and name else user
