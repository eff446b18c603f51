"""Why a Pending Pod waits, from its Events: the newest Warning (a failed mount, a refused
image) and cluster-autoscaler's or Karpenter's TriggeredScaleUp (a node is being added, so the
Pod is not late yet). Events are listed sparingly: once a Pod is old enough to be worth
explaining, then at most once per interval per Pod."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import anyio
import urllib3
from kubernetes.client import V1Pod
from kubernetes.client.exceptions import ApiException

from .k8s_api import Call
from .k8s_status import age_of, event_time


class PodEvents:
    """The Event reads of one backend (its client, namespace and intervals, read live)."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self._read: dict[str, tuple[float, Any]] = {}  # "uid/selector" -> (read at, newest Event)
        self._readable = True  # False once the Role turned out to lack events/list

    async def warning(self, pod: V1Pod) -> str:
        """The newest Warning Event of a Pending Pod that says nothing else."""
        event = await self.newest(pod, "type=Warning")
        return f"{event.reason}: {event.message}" if event is not None else ""

    async def scale_up(self, pod: V1Pod) -> str:
        """What cluster-autoscaler said when it started adding a node for this unschedulable
        Pod (its TriggeredScaleUp Event), unless that was over `scale_up_timeout_s` ago."""
        event = await self.newest(pod, "reason=TriggeredScaleUp")
        if event is None or time.time() - event_time(event) > self.owner.scale_up_timeout_s:
            return ""
        return str(event.message or "")

    async def newest(self, pod: V1Pod, selector: str) -> Any:
        """The newest Event of `pod` matching the field `selector`, read once the Pod is
        `events_after_s` old and at most every `events_after_s` per Pod and selector."""
        uid = pod.metadata.uid
        if not self._readable or age_of(pod) < self.owner.events_after_s:
            return None
        key = f"{uid}/{selector}"
        read_at, newest = self._read.get(key, (-1e9, None))
        if time.monotonic() - read_at < self.owner.events_after_s:
            return newest
        selector = f"involvedObject.name={pod.metadata.name},involvedObject.uid={uid},{selector}"
        try:
            events = await anyio.to_thread.run_sync(partial(
                self.owner.core.list_namespaced_event, self.owner.namespace, field_selector=selector,
                _request_timeout=self.owner.request_timeout))
        except ApiException as exc:
            if exc.status == 403:
                self._readable = False
                self.owner.log.warning("Not reading Pod Events: %s", self.owner.api.describe(Call("list", "events"), exc))
            return newest
        except (urllib3.exceptions.HTTPError, OSError):
            return newest
        newest = max(events.items or [], key=event_time, default=None)
        self._read = {k: v for k, v in self._read.items() if time.monotonic() - v[0] < 600}
        self._read[key] = (time.monotonic(), newest)
        return newest
