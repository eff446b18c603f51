"""The phases of a Pod's start and which of them are failures (k8s_phases.py), on Pod objects
as the apiserver returns them. The same rules against the real control plane are in
test_k8s_start_phases.py (a pool that scales up late, an image that cannot be pulled)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest
from kubernetes.client import ApiClient, V1Pod

from jupyter_raykube.backends.k8s_phases import ScaleUpEvents, StartTimeouts, start_phase

T0 = 1_800_000_000.0
UNSCHEDULABLE = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
TRIGGERED = "pod triggered scale-up: [{gpu-pool 0->1 (max: 2)}]"


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(*, node: str | None = None, phase: str = "Pending", scheduled: str | None = None, at: float = T0,
        waiting: tuple[str, str] | None = None, terminated: dict[str, Any] | None = None) -> V1Pod:
    """A Pod as read from the apiserver: created at T0, its PodScheduled condition since `at`."""
    status: dict[str, Any] = {"phase": phase}
    if scheduled == "False":
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": UNSCHEDULABLE, "lastTransitionTime": _stamp(at)}]
    elif scheduled == "True":
        status["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": _stamp(at)}]
    state: dict[str, Any] = {}
    if waiting:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    elif terminated:
        state = {"terminated": terminated}
    elif phase == "Running":
        state = {"running": {"startedAt": _stamp(at)}}
    if state:
        status["containerStatuses"] = [{"name": "ray-worker", "image": "rayproject/ray:2.60.0-py311-gpu",
                                        "imageID": "", "ready": False, "restartCount": 0, "state": state}]
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "c-gpu-abcde", "uid": "u1", "creationTimestamp": _stamp(T0)},
            "spec": {"nodeName": node, "containers": [{"name": "ray-worker", "image": "rayproject/ray:2.60.0-py311-gpu"}]},
            "status": status}
    return _deserialize(body)


def _deserialize(body: dict[str, Any]) -> V1Pod:
    """Through the client's own decoding, as a Pod read from the apiserver would be."""
    return ApiClient().deserialize(json.dumps(body), "V1Pod", "application/json")


FAST = StartTimeouts(unschedulable_s=30, node_s=300, image_pull_s=600)


def phase_of(p: V1Pod, now: float, events: ScaleUpEvents = ScaleUpEvents()) -> tuple[str, str, bool, bool]:
    start = start_phase(p, now, events, FAST)
    return start.step, start.message, start.provisioning, start.failed


def test_waiting_for_a_node_is_slow_until_no_scale_up_is_announced() -> None:
    unschedulable = pod(scheduled="False")
    assert phase_of(unschedulable, T0 + 29) == (
        "waiting for a node", f"waiting for a node: Unschedulable: {UNSCHEDULABLE}", True, False)
    assert phase_of(unschedulable, T0 + 31) == (
        "waiting for a node", f"Unschedulable: {UNSCHEDULABLE} (no scale-up within 30 s)", True, True)
    assert phase_of(pod(), T0 + 3600)[:4] == ("waiting for a node", "waiting for a node", True, False)  # not decided


def test_a_triggered_scale_up_waits_for_its_node_up_to_node_s() -> None:
    unschedulable = pod(scheduled="False")
    events = ScaleUpEvents(triggered=(T0 + 10, TRIGGERED))
    assert phase_of(unschedulable, T0 + 250, events) == (
        "waiting for a node (scale-up triggered)",
        f"waiting for a node (scale-up triggered) 240 s ago: {TRIGGERED}; Unschedulable: {UNSCHEDULABLE}", True, False)
    step, message, _, failed = phase_of(unschedulable, T0 + 311, events)
    assert failed and message.startswith(f"no node 300 s after a scale-up was triggered (TriggeredScaleUp: {TRIGGERED})")


def test_not_trigger_scale_up_fails_at_once_unless_a_newer_scale_up_was_triggered() -> None:
    unschedulable = pod(scheduled="False")
    refused = (T0 + 5, "pod didn't trigger scale-up: 1 max node group size reached")
    step, message, _, failed = phase_of(unschedulable, T0 + 6, ScaleUpEvents(not_triggered=refused))
    assert failed and message == (f"no node can be added for it (NotTriggerScaleUp: {refused[1]}); "
                                  f"Unschedulable: {UNSCHEDULABLE}")
    later = ScaleUpEvents(not_triggered=refused, triggered=(T0 + 20, TRIGGERED))
    assert phase_of(unschedulable, T0 + 21, later)[3] is False


def test_pulling_counts_from_scheduling_and_pull_errors_fail_at_once() -> None:
    bound = pod(node="gpu-0", scheduled="True", at=T0 + 100, waiting=("ContainerCreating", ""))
    assert phase_of(bound, T0 + 160) == (
        "pulling image", "pulling image rayproject/ray:2.60.0-py311-gpu (60 s so far)", True, False)
    slow = phase_of(bound, T0 + 701)
    assert slow[3] and slow[1] == "image rayproject/ray:2.60.0-py311-gpu was not pulled within 600 s"
    warned = phase_of(bound, T0 + 160, ScaleUpEvents(warning="FailedMount: volume data not found"))
    assert warned[1].endswith("(60 s so far); FailedMount: volume data not found") and not warned[3]
    for reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
        failing = pod(node="gpu-0", scheduled="True", waiting=(reason, "not found"))
        assert phase_of(failing, T0 + 1) == (
            "pulling image", f"cannot pull image rayproject/ray:2.60.0-py311-gpu: {reason}: not found", True, True)
    config = pod(node="gpu-0", scheduled="True", waiting=("CreateContainerConfigError", 'secret "t" not found'))
    assert phase_of(config, T0 + 1) == ("pulling image", 'CreateContainerConfigError: secret "t" not found', True, True)


def test_running_starts_ray_and_exits_fail_only_on_errors() -> None:
    assert phase_of(pod(node="n", phase="Running", scheduled="True"), T0 + 1) == ("starting Ray", "", False, False)
    oom = pod(node="n", phase="Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})
    assert phase_of(oom, T0 + 1) == ("", "container exited with code 137 (OOMKilled)", False, True)
    crash = pod(node="n", phase="Failed", terminated={"exitCode": 1, "reason": "Error"})
    assert phase_of(crash, T0 + 1)[3] is True
    done = pod(node="n", phase="Succeeded", terminated={"exitCode": 0, "reason": "Completed"})
    assert phase_of(done, T0 + 1)[3] is False


def test_timeouts_are_set_per_group_over_star_over_the_defaults() -> None:
    config = {"*": {"node_s": 1200}, "gpu": {"image_pull_s": 3600}}
    assert StartTimeouts.for_group(config, "gpu") == StartTimeouts(unschedulable_s=120, node_s=1200, image_pull_s=3600)
    assert StartTimeouts.for_group(config, "cpu") == StartTimeouts(unschedulable_s=120, node_s=1200, image_pull_s=1800)
    with pytest.raises(ValueError, match=r"^start_timeouts\['gpu'\]\['pull_s'\]: unknown phase; allowed: "
                                         r"unschedulable_s, node_s, image_pull_s$"):
        StartTimeouts.check({"gpu": {"pull_s": 10}})
    with pytest.raises(ValueError, match=r"start_timeouts\['\*'\]\['node_s'\] = -1: a number of seconds > 0"):
        StartTimeouts.check({"*": {"node_s": -1}})


def test_scale_up_verdicts_come_from_cluster_autoscaler_and_karpenter_events() -> None:
    from datetime import datetime, timezone

    from kubernetes.client import CoreV1Event, V1ObjectMeta, V1ObjectReference

    from jupyter_raykube.backends.k8s_events import scale_up_events

    def event(reason: str, message: str, at: int, kind: str = "Normal") -> CoreV1Event:
        return CoreV1Event(metadata=V1ObjectMeta(name=f"e{at}"), involved_object=V1ObjectReference(), reason=reason,
                       message=message, type=kind, last_timestamp=datetime.fromtimestamp(at, tz=timezone.utc))

    karpenter = scale_up_events([event("FailedScheduling", "0/2 nodes are available", 10, "Warning"),
                                 event("Nominated", "Pod should schedule on: nodeclaim/gpu-x7k2p", 12)])
    assert karpenter.triggered == (12.0, "Pod should schedule on: nodeclaim/gpu-x7k2p")
    assert karpenter.not_triggered is None and karpenter.warning == "FailedScheduling: 0/2 nodes are available"
    autoscaler = scale_up_events([event("TriggeredScaleUp", "pod triggered scale-up: [{gpu 0->1}]", 5),
                                  event("TriggeredScaleUp", "pod triggered scale-up: [{gpu 1->2}]", 9),
                                  event("NotTriggerScaleUp", "pod didn't trigger scale-up", 7)])
    assert autoscaler.triggered == (9.0, "pod triggered scale-up: [{gpu 1->2}]")
    assert autoscaler.not_triggered == (7.0, "pod didn't trigger scale-up") and autoscaler.warning == ""
