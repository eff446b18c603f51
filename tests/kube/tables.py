"""Server-side printing (``meta.k8s.io/v1 Table``) for kubectl's human-readable output.

``kubectl get pods`` asks for ``application/json;as=Table``; the columns below are the ones
kube-apiserver prints, so a developer debugging a test with kubectl sees familiar output.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from .resources import ResourceType


def human_duration(seconds: float) -> str:
    """kubectl's ``duration.HumanDuration`` (``12s``, ``3m4s``, ``2h``, ``5d``)."""
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    hours = s // 3600
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    return f"{days}d{hours % 24}h" if days < 8 and hours % 24 else f"{days}d"


def _age(obj: dict[str, Any]) -> str:
    created = obj["metadata"].get("creationTimestamp")
    if not created:
        return "<unknown>"
    then = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return human_duration((datetime.now(timezone.utc) - then).total_seconds())


def _pod_status(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated"):
            reason = state["terminated"].get("reason") or f"ExitCode:{state['terminated'].get('exitCode')}"
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    return reason


def _pod_cells(pod: dict[str, Any]) -> list[Any]:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for cs in statuses if cs.get("ready"))
    restarts = sum(int(cs.get("restartCount") or 0) for cs in statuses)
    total = len(pod["spec"].get("containers") or [])
    return [f"{ready}/{total}", _pod_status(pod), restarts, _age(pod), status.get("podIP") or "<none>",
            pod["spec"].get("nodeName") or "<none>"]


def _service_cells(svc: dict[str, Any]) -> list[Any]:
    spec = svc.get("spec") or {}
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []) or "<none>"
    selector = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items()) or "<none>"
    return [spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>", "<none>", ports, _age(svc), selector]


def _event_cells(ev: dict[str, Any]) -> list[Any]:
    inv = ev.get("involvedObject") or {}
    return [ev.get("lastTimestamp") or "<unknown>", ev.get("type", ""), ev.get("reason", ""),
            f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}", ev.get("message", "")]


_COLUMNS: dict[str, tuple[list[tuple[str, str, int]], Callable[[dict[str, Any]], list[Any]]]] = {
    "Pod": ([("Ready", "string", 0), ("Status", "string", 0), ("Restarts", "integer", 0), ("Age", "string", 0),
             ("IP", "string", 1), ("Node", "string", 1)], _pod_cells),
    "Service": ([("Type", "string", 0), ("Cluster-IP", "string", 0), ("External-IP", "string", 0),
                 ("Port(s)", "string", 0), ("Age", "string", 0), ("Selector", "string", 1)], _service_cells),
    "Secret": ([("Type", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)],
               lambda o: [o.get("type", ""), len(o.get("data") or {}), _age(o)]),
    "Namespace": ([("Status", "string", 0), ("Age", "string", 0)],
                  lambda o: [(o.get("status") or {}).get("phase", ""), _age(o)]),
    "Event": ([("Last Seen", "string", 0), ("Type", "string", 0), ("Reason", "string", 0),
               ("Object", "string", 0), ("Message", "string", 0)], _event_cells),
}


def table(rt: ResourceType, items: list[dict[str, Any]], resource_version: str, cont: str | None) -> dict[str, Any]:
    columns, cells = _COLUMNS.get(rt.kind, ([("Age", "string", 0)], lambda o: [_age(o)]))
    defs = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
    defs += [{"name": n, "type": t, "format": "", "description": n, "priority": p} for n, t, p in columns]
    rows = [{"cells": [o["metadata"]["name"], *cells(o)],
             "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}}
            for o in items]
    meta: dict[str, Any] = {"resourceVersion": resource_version}
    if cont:
        meta["continue"] = cont
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows}
