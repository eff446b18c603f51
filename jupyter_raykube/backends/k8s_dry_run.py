"""Would the API server admit a group's Pods? Asked with a dry-run create (nothing is stored)
when a request sets a group's `scheduling`, so a misspelt affinity, a PriorityClass or
RuntimeClass that does not exist, or a Pod Security violation is a 400 naming the field before
the cluster is created, instead of a group that fails at its first scale-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubernetes.client.exceptions import ApiException

from ..errors import SpecError
from ..spec import ClusterSpec
from . import k8s_objects as objects
from .k8s_api import Call, PermissionDenied, QuotaExceeded, status_message

if TYPE_CHECKING:
    from .kubernetes import KubernetesBackend


async def check_groups_admitted(backend: KubernetesBackend, spec: ClusterSpec) -> None:
    """One dry-run Pod per group with a user `scheduling` request: Kubernetes validates the
    whole Pod and runs admission (Priority, RuntimeClass, PodSecurity). A quota that is full
    now is not a reason to refuse: it may have room when the group scales up."""
    meta = backend.dry_run_meta(spec)
    for group in spec.groups:
        if not group.scheduling:
            continue
        name = objects.worker_pod_name(spec.name, group.name, "check")
        pod = objects.make_worker_pod(meta, spec, group.name, name, backend.worker_size(spec, group),
                                      backend.pod_settings(spec, group))
        where = f"groups.{group.name}.scheduling"
        try:
            await backend.api.call(Call("create", "pods", name), backend.core.create_namespaced_pod,
                                   backend.namespace, pod, dry_run="All")
        except QuotaExceeded:
            continue
        except PermissionDenied as exc:
            cause = exc.__cause__
            if not isinstance(cause, ApiException) or "cannot create resource" in status_message(cause):
                raise  # RBAC: the server's own permissions, not the request
            raise SpecError(where, dict(group.scheduling), f"what the cluster admits; it said: "
                            f"{_short(status_message(cause))}") from None
        except ApiException as exc:
            if exc.status not in (400, 422):
                raise backend.api.failed(Call("create", "pods", name), exc) from exc
            raise SpecError(where, dict(group.scheduling), f"a Pod spec Kubernetes accepts; it said: "
                            f"{_short(status_message(exc))}") from None


def _short(message: str) -> str:
    return message if len(message) <= 300 else message[:297] + "..."
