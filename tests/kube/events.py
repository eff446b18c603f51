"""Writing core/v1 Events about Pods, the way the scheduler and kubelet report what they did.

Backends surface these to users ("FailedScheduling: 0/1 nodes are available: 1 Insufficient
nvidia.com/gpu."), so the emulated components write them with the real reasons and sources.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from .errors import ApiError
from .store import Store, now_rfc3339


def record_event(store: Store, pod: Mapping[str, Any], reason: str, message: str, *, warning: bool = False,
                 component: str = "kubelet", host: str = "") -> None:
    """Create an Event for ``pod``; silently skipped if the namespace is gone or terminating."""
    meta = pod["metadata"]
    stamp = now_rfc3339()
    event: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "namespace": meta["namespace"],
                           "uid": meta["uid"], "resourceVersion": meta.get("resourceVersion", "")},
        "reason": reason,
        "message": message,
        "type": "Warning" if warning else "Normal",
        "source": {"component": component, **({"host": host} if host else {})},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "reportingComponent": component,
        "reportingInstance": host or component,
    }
    try:
        store.create(store.type_for("", "events"), meta["namespace"], event)
    except ApiError:
        pass  # the namespace is gone or terminating: nobody can read the Event anyway
