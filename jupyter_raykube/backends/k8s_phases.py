"""Where a Ray node's Pod is in its start, and whether it is slow or has failed.

On a real cluster a node can take many minutes to be ready: a node pool scales up from zero
(cluster-autoscaler, Karpenter), then a multi-GB Ray image is pulled. Neither is a failure.
So a start is told in phases, each with its own timeout (`StartTimeouts`, per group):

* waiting for a node: the scheduler found no room. With a `TriggeredScaleUp` Event a node is
  on its way (up to `node_s`); with `NotTriggerScaleUp`, or no scale-up announced within
  `unschedulable_s`, none is coming: a failure.
* pulling image: bound to a node, its container not started yet (up to `image_pull_s`).
  `ErrImagePull`/`ImagePullBackOff` and container config errors are failures at once.
* starting Ray: the container runs; the autoscaler's join timeout applies from here.
* an exit before Ray joined, or OOMKilled: a failure (no restart loop of a crashing Pod).

`start_phase()` is pure (the Pod, the time, the Pod's relevant Events in): the backend reads,
this module decides.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from kubernetes.client import V1Pod

from .k8s_status import creation_time, pod_state

WAITING_FOR_NODE = "waiting for a node"
SCALE_UP_TRIGGERED = "waiting for a node (scale-up triggered)"
PULLING_IMAGE = "pulling image"
STARTING_RAY = "starting Ray"

# Waiting reasons the kubelet keeps repeating without progress: the Pod will not start.
IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
FAILED_WAITING_REASONS = IMAGE_REASONS | {"CreateContainerConfigError", "CreateContainerError"}


@dataclass(frozen=True)
class StartTimeouts:
    """Seconds a node may spend in each phase of its start, after Ray's own autoscaler
    (`InstanceReconcileConfig`: 10 min for an instance to be allocated, 30 min to install)."""

    unschedulable_s: float = 120.0  # no room and no scale-up announced (cluster-autoscaler scans every 10 s)
    node_s: float = 900.0  # a triggered scale-up (cluster-autoscaler's max-node-provision-time)
    image_pull_s: float = 1800.0  # scheduled, container not started yet (GPU images are many GB)

    @classmethod
    def for_group(cls, config: Mapping[str, Mapping[str, float]], group: str) -> "StartTimeouts":
        """The defaults, overridden by `config["*"]`, then by `config[group]`."""
        values = {k: float(v) for layer in (config.get("*", {}), config.get(group, {})) for k, v in layer.items()}
        return cls(**values)

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> None:
        """ValueError naming the entry, its value and what is allowed."""
        allowed = tuple(f.name for f in fields(cls))
        for group, layer in config.items():
            if not isinstance(layer, Mapping):
                raise ValueError(f"start_timeouts[{group!r}] = {layer!r}: a dict of {', '.join(allowed)}")
            for key, value in layer.items():
                if key not in allowed:
                    raise ValueError(f"start_timeouts[{group!r}][{key!r}]: unknown phase; allowed: {', '.join(allowed)}")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ValueError(f"start_timeouts[{group!r}][{key!r}] = {value!r}: a number of seconds > 0")


@dataclass(frozen=True)
class ScaleUpEvents:
    """What cluster-autoscaler (or Karpenter) last said about this Pod: (epoch seconds, message)."""

    triggered: tuple[float, str] | None = None  # TriggeredScaleUp: a node is being added
    not_triggered: tuple[float, str] | None = None  # NotTriggerScaleUp: no node group could take it
    warning: str = ""  # the newest Warning Event, "Reason: message"


@dataclass(frozen=True)
class StartPhase:
    step: str  # one of the phase names above; "" when running or exited
    message: str  # what a user sees: the phase, how long so far, the platform's own words
    provisioning: bool  # still without a started container: the autoscaler's join clock waits
    failed: bool  # a real failure: remove the Pod and back its group off


def start_phase(pod: V1Pod, now: float, events: ScaleUpEvents, timeouts: StartTimeouts) -> StartPhase:
    """The start phase of a (not deleted) Pod at `now`; see the module docstring."""
    phase, why = pod_state(pod)
    if phase == "exited":
        return StartPhase("", why, provisioning=False, failed=_crashed(pod))
    if phase == "running":
        return StartPhase(STARTING_RAY, why, provisioning=False, failed=False)
    scheduled = _condition(pod, "PodScheduled")
    if not (pod.spec is not None and pod.spec.node_name):
        return _waiting_for_node(pod, now, why, scheduled, events, timeouts)
    reason = _waiting_reason(pod)
    image = pod.spec.containers[0].image
    if reason in FAILED_WAITING_REASONS:
        pulling = reason in IMAGE_REASONS
        return StartPhase(PULLING_IMAGE, f"cannot pull image {image}: {why}" if pulling else why,
                          provisioning=True, failed=True)
    since = _stamp(scheduled, "last_transition_time") or creation_time(pod)
    detail = why or events.warning
    if now - since > timeouts.image_pull_s:
        return StartPhase(PULLING_IMAGE, f"image {image} was not pulled within {timeouts.image_pull_s:.0f} s"
                          + (f": {detail}" if detail else ""), provisioning=True, failed=True)
    message = f"pulling image {image} ({now - since:.0f} s so far)" + (f"; {detail}" if detail else "")
    return StartPhase(PULLING_IMAGE, message, provisioning=True, failed=False)


def _waiting_for_node(pod: V1Pod, now: float, why: str, scheduled: Any, events: ScaleUpEvents,
                      timeouts: StartTimeouts) -> StartPhase:
    if scheduled is None or scheduled.status != "False":
        return StartPhase(WAITING_FOR_NODE, WAITING_FOR_NODE + (f": {why}" if why else ""), True, False)
    triggered, not_triggered = events.triggered, events.not_triggered
    if not_triggered is not None and (triggered is None or not_triggered[0] >= triggered[0]):
        return StartPhase(WAITING_FOR_NODE, f"no node can be added for it (NotTriggerScaleUp: {not_triggered[1]}); "
                                            f"{why}", provisioning=True, failed=True)
    if triggered is not None:
        waited = now - triggered[0]
        if waited > timeouts.node_s:
            return StartPhase(SCALE_UP_TRIGGERED, f"no node {timeouts.node_s:.0f} s after a scale-up was triggered "
                                                  f"(TriggeredScaleUp: {triggered[1]}); {why}", True, True)
        return StartPhase(SCALE_UP_TRIGGERED, f"{SCALE_UP_TRIGGERED} {waited:.0f} s ago: {triggered[1]}; {why}",
                          provisioning=True, failed=False)
    since = _stamp(scheduled, "last_transition_time") or creation_time(pod)
    if now - since > timeouts.unschedulable_s:
        return StartPhase(WAITING_FOR_NODE, f"{why} (no scale-up within {timeouts.unschedulable_s:.0f} s)",
                          provisioning=True, failed=True)
    return StartPhase(WAITING_FOR_NODE, f"{WAITING_FOR_NODE}: {why}", provisioning=True, failed=False)


def _crashed(pod: V1Pod) -> bool:
    """Exited with an error or killed for memory (Pods here never restart: a retry would loop)."""
    for status in (pod.status.container_statuses if pod.status is not None else None) or []:
        term = status.state.terminated if status.state is not None else None
        if term is not None and (term.reason == "OOMKilled" or term.exit_code):
            return True
    return False


def _waiting_reason(pod: V1Pod) -> str:
    for status in (pod.status.container_statuses if pod.status is not None else None) or []:
        if status.state is not None and status.state.waiting is not None:
            return str(status.state.waiting.reason or "")
    return ""


def _condition(pod: V1Pod, kind: str) -> Any:
    conditions = (pod.status.conditions if pod.status is not None else None) or []
    return next((c for c in conditions if c.type == kind), None)


def _stamp(obj: Any, attr: str) -> float | None:
    value = getattr(obj, attr, None) if obj is not None else None
    return value.timestamp() if value is not None else None
