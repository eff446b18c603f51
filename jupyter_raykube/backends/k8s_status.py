"""Reading Pods and Events: what phase a Ray node's Pod is in and why, in words a user can act
on (the scheduler's Unschedulable message, image pull errors, exit codes, OOMKilled), and the
small facts the backend reads off API objects."""

from __future__ import annotations

import base64
import time
from typing import Any

from kubernetes.client import V1Pod

from . import k8s_objects as objects
from .base import NodePhase
from .k8s_objects import LABEL_CLUSTER, LABEL_CLUSTER_ID


def pod_state(pod: V1Pod) -> tuple[NodePhase, str]:
    """(phase, why): Pending -> pending, Running -> running, Succeeded/Failed -> exited; the
    message names what a user can act on: Unschedulable and its reason, image pull and
    config errors, exit codes and OOMKilled, evictions."""
    status = pod.status
    if status is None:
        return "pending", ""
    phase: NodePhase = {"Running": "running", "Succeeded": "exited", "Failed": "exited"}.get(
        status.phase or "", "pending")  # type: ignore[assignment]
    parts = []
    if status.reason:  # Evicted, DeadlineExceeded, NodeLost, ...
        parts.append(f"{status.reason}: {status.message}" if status.message else status.reason)
    for cond in status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False":
            parts.append(f"{cond.reason or 'Unschedulable'}: {cond.message}" if cond.message else cond.reason or "")
    for container in status.container_statuses or []:
        state = container.state
        if state is None:
            continue
        if state.waiting is not None and state.waiting.reason:
            waiting = state.waiting
            if waiting.message or waiting.reason not in ("ContainerCreating", "PodInitializing"):
                parts.append(f"{waiting.reason}: {waiting.message}" if waiting.message else waiting.reason)
        elif state.terminated is not None:
            term = state.terminated
            text = f"container exited with code {term.exit_code}"
            if term.reason:
                text += f" ({term.reason})"
            if term.message:
                text += f": {term.message.strip()[-300:]}"
            parts.append(text)
    return phase, "; ".join(p for p in parts if p)


def labels_of(obj: Any) -> dict[str, str]:
    return dict(obj.metadata.labels or {})


def belongs(pod: V1Pod, cluster: str, cluster_id: str) -> bool:
    labels = labels_of(pod)
    return labels.get(LABEL_CLUSTER) == cluster and labels.get(LABEL_CLUSTER_ID) == cluster_id



def creation_time(obj: Any) -> float:
    stamp = obj.metadata.creation_timestamp
    return stamp.timestamp() if stamp is not None else time.time()


def age_of(obj: Any) -> float:
    return time.time() - creation_time(obj)


def token_of(secret: Any) -> str | None:
    data = (secret.data or {}).get(objects.TOKEN_KEY)
    return base64.b64decode(data).decode() if data else None


def event_time(event: Any) -> float:
    for stamp in (event.last_timestamp, event.event_time, event.metadata.creation_timestamp):
        if stamp is not None:
            return stamp.timestamp()
    return 0.0
