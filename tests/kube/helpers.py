"""Small manifest builders and a polling helper shared by the Kubernetes tests."""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def wait_until(fn: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.05, what: str = "") -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: T = fn()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or fn}; last value {last!r}")
        time.sleep(interval_s)
        last = fn()
    return last


def pod(name: str | None = None, labels: dict[str, str] | None = None, command: list[str] | None = None,
        image: str = "python:3.11", restart_policy: str = "Never", generate_name: str | None = None,
        **container: Any) -> dict[str, Any]:
    """A minimal valid Pod manifest (one container named ``main``)."""
    meta: dict[str, Any] = {"labels": labels or {}}
    if name:
        meta["name"] = name
    if generate_name:
        meta["generateName"] = generate_name
    c: dict[str, Any] = {"name": "main", "image": image, **container}
    if command is not None:
        c["command"] = command
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"restartPolicy": restart_policy, "containers": [c]}}


def restricted(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` (a Pod) made to pass Pod Security "restricted": non-root, no privilege
    escalation, no capabilities, the runtime's default seccomp profile."""
    spec = manifest["spec"]
    spec["securityContext"] = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
    for container in spec["containers"]:
        container["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return manifest


def service(name: str, selector: dict[str, str], port: int, target_port: int | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": selector, "ports": [{"port": port, "targetPort": target_port or port}]}}

