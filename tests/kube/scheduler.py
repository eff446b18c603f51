"""The scheduling decision for the process kubelet's single node.

A Pod fits when no test-installed rule refuses it, its ``nodeSelector`` matches the node's
labels, and its resource requests fit the node's allocatable minus what bound, unfinished
Pods request. Refusals carry kube-scheduler's wording ("0/1 nodes are available: 1
Insufficient nvidia.com/gpu.") because backends show that text to users and autoscalers key
on it.

Allocatable semantics: ``None`` means an unlimited node (no resource checks). With a mapping,
standard resources left out (cpu, memory, ...) are unlimited, while extended resources left
out (names with a ``/``, such as ``nvidia.com/gpu``) are absent, as on a real node without
that device plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping

from kubernetes.utils import parse_quantity

NO_MATCH = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."


@dataclass
class Rule:
    """A test's reason to refuse Pods: ``predicate(pod) -> True`` means unschedulable."""

    predicate: Callable[[Mapping[str, Any]], bool]
    message: str


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """Effective requests: sum over containers (requests, defaulting to limits), max with init containers."""
    spec = pod.get("spec") or {}
    total: dict[str, Decimal] = {}
    for c in spec.get("containers") or []:
        res = c.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        for name, value in merged.items():
            total[name] = total.get(name, Decimal(0)) + parse_quantity(value)
    for c in spec.get("initContainers") or []:
        res = c.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        for name, value in merged.items():
            total[name] = max(total.get(name, Decimal(0)), parse_quantity(value))
    return total


def _fmt(names: list[str]) -> str:
    return ", ".join(f"1 Insufficient {n}" for n in sorted(names))


def unschedulable_reason(pod: Mapping[str, Any], rules: Iterable[Rule], node_labels: Mapping[str, str],
                         allocatable: Mapping[str, Any] | None, bound: Iterable[Mapping[str, Any]]) -> str | None:
    """None if the Pod fits the node, else the FailedScheduling message."""
    for rule in rules:
        if rule.predicate(pod):
            return rule.message
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    if any(node_labels.get(k) != v for k, v in selector.items()):
        return NO_MATCH
    if allocatable is None:
        return None
    capacity = {k: parse_quantity(v) for k, v in allocatable.items()}
    used: dict[str, Decimal] = {}
    for other in bound:
        for name, value in pod_requests(other).items():
            used[name] = used.get(name, Decimal(0)) + value
    short = []
    for name, want in pod_requests(pod).items():
        if want <= 0:
            continue
        if name in capacity:
            if used.get(name, Decimal(0)) + want > capacity[name]:
                short.append(name)
        elif "/" in name:
            short.append(name)
    if short:
        return f"0/1 nodes are available: {_fmt(short)}."
    return None
