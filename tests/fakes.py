"""Backends injected through `c.RayKube.backend_class` (config, never patching)."""

from __future__ import annotations

from jupyter_raykube.backends.base import BackendError
from jupyter_raykube.backends.local import LocalBackend
from jupyter_raykube.spec import ClusterSpec


class RefusingBackend(LocalBackend):
    """Refuses every start, as a backend without capacity would: lets fuzzing post valid
    bodies without starting Ray processes (each ends as a `failed` cluster)."""

    async def create_cluster(self, spec: ClusterSpec, **kwargs: object):  # type: ignore[override]
        raise BackendError("this test backend starts nothing")
