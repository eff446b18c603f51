"""The namespace's ResourceQuota `raykube` (written by the JupyterHub hook from the admin's
policy), read for display: what the user's Pods use of it and the most it allows.

It is read by name (`get resourcequotas/raykube`: no list, no watch), at most once every
`max_age_s` whatever the number of clusters and widgets asking, and in one attempt: the
autoscaler round that asks must not wait out the API client's retries for a figure that is
only shown. A namespace without that quota, or a Role from before this read (403), shows no
quota; the 403 is logged once (a warning: the admin's Role is older than this server).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Protocol

import anyio
import urllib3
from kubernetes.client import CoreV1Api, V1ResourceQuota
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from ..policy import QUOTA_NAME
from .base import Quota, QuotaUse
from .k8s_api import status_message

QUOTA_MAX_AGE_S = 5.0  # how stale the shown quota may be; one read per this many seconds


class QuotaSettings(Protocol):
    """What the reader uses of its backend, live."""

    namespace: str
    request_timeout: float
    core: CoreV1Api
    log: Any


class NamespaceQuota:
    """The last read of the namespace's quota, refreshed when older than `max_age_s`."""

    def __init__(self, owner: QuotaSettings, max_age_s: float = QUOTA_MAX_AGE_S) -> None:
        self.owner = owner
        self.max_age_s = max_age_s
        self._quota: Quota | None = None
        self._read_at = float("-inf")  # monotonic
        self._reading = False
        self._refusal_logged = False

    async def get(self) -> Quota | None:
        """The quota as last read; read again first when that is older than `max_age_s` (a
        caller arriving while a read is in flight gets the previous value)."""
        if self._reading or time.monotonic() - self._read_at < self.max_age_s:
            return self._quota
        self._reading = True
        try:
            self._quota = await self._read()
        finally:
            self._reading = False
            self._read_at = time.monotonic()
        return self._quota

    async def _read(self) -> Quota | None:
        namespace = self.owner.namespace
        read = partial(self.owner.core.read_namespaced_resource_quota, QUOTA_NAME, namespace,
                       _request_timeout=self.owner.request_timeout)
        try:
            return quota_of(await anyio.to_thread.run_sync(read))
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                if not self._refusal_logged:
                    self._refusal_logged = True
                    self.owner.log.warning(
                        "Not showing the ResourceQuota %s of namespace %s: the service account may not get "
                        "resourcequotas there (%s). Grant the Role in deploy/rbac.yaml.",
                        QUOTA_NAME, namespace, status_message(exc))
                return None
            self.owner.log.debug("reading ResourceQuota %s/%s failed: %s %s", namespace, QUOTA_NAME, exc.status,
                                 status_message(exc))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self.owner.log.debug("reading ResourceQuota %s/%s failed: %s", namespace, QUOTA_NAME, exc)
        return self._quota  # a failed read keeps what was shown


def quota_of(quota: V1ResourceQuota) -> Quota:
    """What the apiserver has counted (`status`): its `hard` is the enforced one; before the
    quota controller's first count, the `spec` with nothing used."""
    status = quota.status
    hard = (status.hard if status is not None and status.hard else None) or quota.spec.hard or {}
    used = (status.used if status is not None else None) or {}
    return Quota(name=quota.metadata.name, namespace=quota.metadata.namespace,
                 resources=tuple(QuotaUse(resource=key, used=float(parse_quantity(used.get(key, "0"))),
                                          hard=float(parse_quantity(value)))
                                 for key, value in sorted(hard.items())))
