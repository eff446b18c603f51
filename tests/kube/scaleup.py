"""A node pool that scales up from zero the way cluster-autoscaler does, for slow-node tests.

cluster-autoscaler watches for Pods the scheduler marked ``Unschedulable``; when a node group
could hold one, it posts a ``TriggeredScaleUp`` Event on that Pod ("pod triggered scale-up:
[{gpu-pool 0->1 (max: 2)}]") and the cloud brings the nodes up minutes later. Here the pool's
Nodes are registered ``appear_after_s`` after the first such Pod; the real kube-scheduler then
binds the waiting Pod to them.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any, Callable, Mapping

from kubernetes import client
from kubernetes.utils import parse_quantity

from .nodeapi import create_event
from .nodes import NodePool


def _requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    total: dict[str, Decimal] = {}
    for container in pod["spec"].get("containers") or []:
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, value in wanted.items():
            total[name] = total.get(name, Decimal(0)) + Decimal(parse_quantity(value))
    return total


def _tolerates(pod: Mapping[str, Any], taint: Mapping[str, str]) -> bool:
    for tol in pod["spec"].get("tolerations") or []:
        if tol.get("effect") and tol["effect"] != taint["effect"]:
            continue
        if tol.get("operator") == "Exists" and tol.get("key") in (None, "", taint["key"]):
            return True
        if tol.get("key") == taint["key"] and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def fits(pool: NodePool, pod: Mapping[str, Any]) -> bool:
    """Whether one empty node of ``pool`` could hold ``pod`` (the autoscaler's simulation, simplified)."""
    labels = pool.node_labels(pool.node_names()[0])
    if any(labels.get(k) != v for k, v in (pod["spec"].get("nodeSelector") or {}).items()):
        return False
    if not all(_tolerates(pod, taint) for taint in pool.taints()):
        return False
    capacity = {k: Decimal(parse_quantity(v)) for k, v in pool.capacity().items()}
    return all(amount <= capacity.get(name, Decimal(0)) for name, amount in _requests(pod).items())


def _unschedulable(pod: Mapping[str, Any]) -> bool:
    if (pod.get("spec") or {}).get("nodeName"):
        return False
    return any(c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
               for c in (pod.get("status") or {}).get("conditions") or [])


class DelayedPool:
    """Watches for Pods only ``pool`` could hold; posts ``TriggeredScaleUp`` on each and calls
    ``scale_up(pool)`` ``pool.appear_after_s`` after the first."""

    def __init__(self, api: client.ApiClient, pool: NodePool, scale_up: Callable[[NodePool], None],
                 poll_s: float = 0.5) -> None:
        assert pool.appear_after_s is not None
        self.pool = pool
        self.core = client.CoreV1Api(api)
        self.scale_up = scale_up
        self.poll_s = poll_s
        self.triggered_at: float | None = None
        self.appeared = threading.Event()
        self.errors: list[str] = []
        self._noticed: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"autoscaler-{pool.name}", daemon=True)

    def start(self) -> "DelayedPool":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def message(self) -> str:
        top = self.pool.max_count or self.pool.count
        return f"pod triggered scale-up: [{{{self.pool.name} 0->{self.pool.count} (max: {top})}}]"

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._step()
            except Exception as exc:  # reported by the kubelet fixture
                self.errors.append(f"autoscaler {self.pool.name}: {type(exc).__name__}: {exc}")
            if self.appeared.is_set():
                return

    def _step(self) -> None:
        pods = self.core.api_client.sanitize_for_serialization(
            self.core.list_pod_for_all_namespaces(field_selector="status.phase=Pending"))["items"]
        for pod in pods:
            uid = pod["metadata"]["uid"]
            if uid in self._noticed or not _unschedulable(pod) or not fits(self.pool, pod):
                continue
            self._noticed.add(uid)
            create_event(self.core, pod, "TriggeredScaleUp", self.message(), warning=False,
                         component="cluster-autoscaler")
            if self.triggered_at is None:
                self.triggered_at = time.monotonic()
        if self.triggered_at is not None and time.monotonic() - self.triggered_at >= float(self.pool.appear_after_s or 0):
            self.scale_up(self.pool)
            self.appeared.set()
