"""Per-kind defaulting and update rules, as the apiserver's registry strategies apply them.

A backend reads back what it wrote; if the emulator did not default ``restartPolicy``,
``clusterIP`` or container ``terminationMessagePath`` like a real server, code comparing
"wanted" with "stored" would pass here and churn on a cluster. Likewise Pods are mostly
immutable and a Service keeps its ClusterIP: code that tries otherwise must fail here too.
"""

from __future__ import annotations

import base64
import copy
from typing import Any, Callable

from kubernetes.utils import parse_quantity

from .errors import ApiError, FieldCause, invalid
from .resources import ResourceType

POD_MUTABLE_SPEC = ("activeDeadlineSeconds", "tolerations", "schedulingGates", "terminationGracePeriodSeconds")


def _image_pull_policy(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    if "@" in name:
        return "IfNotPresent"
    tag = name.split(":", 1)[1] if ":" in name else ""
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _is_quantity(value: Any) -> bool:
    try:
        parse_quantity(value)
    except (ValueError, TypeError):
        return False
    return True


def _default_probe(probe: dict[str, Any] | None) -> None:
    if not probe:
        return
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    if probe.get("httpGet") is not None:
        probe["httpGet"].setdefault("path", "/")
        probe["httpGet"].setdefault("scheme", "HTTP")


def _default_container(c: dict[str, Any]) -> None:
    c.setdefault("imagePullPolicy", _image_pull_policy(str(c.get("image", ""))))
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    resources = c.setdefault("resources", {})
    if resources.get("limits"):
        requests = resources.setdefault("requests", {})
        for name, value in resources["limits"].items():
            if _is_quantity(value):  # a bad limit is reported once, under limits
                requests.setdefault(name, value)
    for port in c.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        _default_probe(c.get(probe))


def qos_class(spec: dict[str, Any]) -> str:
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    for r in resources:
        limits, requests = r.get("limits") or {}, r.get("requests") or {}
        for name in ("cpu", "memory"):
            if name not in limits or str(requests.get(name, limits[name])) != str(limits[name]):
                return "Burstable"
    return "Guaranteed"


def _default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    for section in ("initContainers", "containers"):
        for c in spec.get(section) or []:
            _default_container(c)


def default_pod(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    _default_pod_spec(spec)
    obj["status"] = {"phase": "Pending", "qosClass": qos_class(spec)}


def default_service(obj: dict[str, Any], allocate_ip: Callable[[], str]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        if not spec.get("clusterIP"):
            spec["clusterIP"] = allocate_ip()
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    obj["status"] = {"loadBalancer": {}}


def default_secret(obj: dict[str, Any]) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def default_namespace(obj: dict[str, Any]) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj["status"] = {"phase": "Active"}
    obj.setdefault("metadata", {}).setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]


def apply_create_defaults(rt: ResourceType, obj: dict[str, Any], allocate_ip: Callable[[], str]) -> None:
    """Mutate ``obj`` (a fresh copy) the way the kind's registry strategy does on create."""
    if not rt.builtin or rt.group:
        return
    if rt.kind == "Pod":
        default_pod(obj)
    elif rt.kind == "Service":
        default_service(obj, allocate_ip)
    elif rt.kind == "Secret":
        default_secret(obj)
    elif rt.kind == "Namespace":
        default_namespace(obj)


def _mask_pod_spec(spec: dict[str, Any]) -> dict[str, Any]:
    masked = copy.deepcopy(spec)
    for key in POD_MUTABLE_SPEC:
        masked.pop(key, None)
    for section in ("initContainers", "containers"):
        for c in masked.get(section) or []:
            c.pop("image", None)
    return masked


def check_update(rt: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Immutability rules of the kind; raises a 422 like the apiserver. May fill kept fields."""
    name = old["metadata"]["name"]
    if rt.kind == "Pod" and not rt.group:
        _default_pod_spec(new.setdefault("spec", {}))
        if _mask_pod_spec(old.get("spec") or {}) != _mask_pod_spec(new.get("spec") or {}):
            raise invalid("Pod", name, [FieldCause(
                "spec", "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
                "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions "
                "to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it "
                "was previously negative)", "FieldValueForbidden")])
    elif rt.kind == "Service" and not rt.group:
        spec = new.setdefault("spec", {})
        old_spec = old.get("spec") or {}
        if not spec.get("clusterIP") and old_spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]
            spec.setdefault("clusterIPs", old_spec.get("clusterIPs"))
        if spec.get("clusterIP") != old_spec.get("clusterIP"):
            raise invalid("Service", name, [FieldCause(
                "spec.clusterIPs[0]", f'Invalid value: ["{spec.get("clusterIP")}"]: may not change once set')])
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    elif rt.kind == "Secret" and not rt.group:
        default_secret(new)
        if old.get("immutable") and (new.get("data") != old.get("data") or not new.get("immutable")):
            raise invalid("Secret", name, [FieldCause("data", "Forbidden: field is immutable when `immutable` is set",
                                                      "FieldValueForbidden")])
        if new.get("type") != old.get("type"):
            raise invalid("Secret", name, [FieldCause("type", f'Invalid value: "{new.get("type")}": field is '
                                                              "immutable", "FieldValueInvalid")])


def check_binding(pod: dict[str, Any], node: str) -> None:
    current = (pod.get("spec") or {}).get("nodeName")
    if current:
        raise ApiError(409, f'pod {pod["metadata"]["name"]} is already assigned to node "{current}"', "Conflict",
                       name=pod["metadata"]["name"], kind="pods")
    if not node:
        raise invalid("Binding", pod["metadata"]["name"], [FieldCause("target.name", "Required value",
                                                                      "FieldValueRequired")])
