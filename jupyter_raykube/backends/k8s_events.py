"""Why a Pending Pod waits, from its Events: the newest Warning (a failed mount, a refused
image) and what the node autoscaler said about it. A node is being added, so the Pod is slow,
not failed: cluster-autoscaler's `TriggeredScaleUp`, Karpenter's `Nominated` (`NominatePod`
before v1). No node is coming: cluster-autoscaler's `NotTriggerScaleUp`. A Pod's
Events are listed sparingly: once it is old enough to be worth explaining, then at most once
per interval, in one call."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import anyio
import urllib3
from kubernetes.client import V1Pod
from kubernetes.client.exceptions import ApiException

from .k8s_api import Call
from .k8s_phases import ScaleUpEvents
from .k8s_status import age_of, event_time

TRIGGERED_SCALE_UP = ("TriggeredScaleUp", "Nominated", "NominatePod")  # cluster-autoscaler, Karpenter
NOT_TRIGGERED_SCALE_UP = ("NotTriggerScaleUp",)


def scale_up_events(events: list[Any]) -> ScaleUpEvents:
    """The newest "a node is coming" and "no node is coming" verdicts and the newest Warning."""

    def newest(reasons: tuple[str, ...]) -> tuple[float, str] | None:
        found = max((e for e in events if e.reason in reasons), key=event_time, default=None)
        return (event_time(found), str(found.message or "")) if found is not None else None

    warning = max((e for e in events if e.type == "Warning"), key=event_time, default=None)
    return ScaleUpEvents(triggered=newest(TRIGGERED_SCALE_UP), not_triggered=newest(NOT_TRIGGERED_SCALE_UP),
                         warning=f"{warning.reason}: {warning.message}" if warning is not None else "")


class PodEvents:
    """The Event reads of one backend (its client, namespace and interval, read live)."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self._read: dict[str, tuple[float, list[Any]]] = {}  # Pod uid -> (read at, its Events)
        self._readable = True  # False once the Role turned out to lack events/list

    async def of(self, pod: V1Pod) -> ScaleUpEvents:
        """The newest scale-up verdicts and Warning of `pod`, from its (cached) Events."""
        return scale_up_events(await self._events(pod))

    async def _events(self, pod: V1Pod) -> list[Any]:
        """`pod`'s Events, read once the Pod is `events_after_s` old and at most every
        `events_after_s` per Pod."""
        uid = pod.metadata.uid
        if not self._readable or age_of(pod) < self.owner.events_after_s:
            return []
        read_at, known = self._read.get(uid, (-1e9, []))
        if time.monotonic() - read_at < self.owner.events_after_s:
            return known
        selector = f"involvedObject.name={pod.metadata.name},involvedObject.uid={uid}"
        try:
            listed = await anyio.to_thread.run_sync(partial(
                self.owner.core.list_namespaced_event, self.owner.namespace, field_selector=selector,
                _request_timeout=self.owner.request_timeout))
        except ApiException as exc:
            if exc.status == 403:
                self._readable = False
                self.owner.log.warning("Not reading Pod Events: %s", self.owner.api.describe(Call("list", "events"), exc))
            return known
        except (urllib3.exceptions.HTTPError, OSError):
            return known
        self._read = {k: v for k, v in self._read.items() if time.monotonic() - v[0] < 600}
        self._read[uid] = (time.monotonic(), list(listed.items or []))
        return self._read[uid][1]
