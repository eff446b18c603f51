"""The apiserver's own validation rules that the JSON schemas cannot express.

``kubernetes-validate`` checks structure and types; a real apiserver also rejects bad names,
bad label syntax, quantities such as ``"5 cores"``, port names over 15 characters, a limit
below its request, extended resources (``nvidia.com/gpu``) with fractional values, two unnamed
Service ports, mounts of undeclared volumes, and so on. Those are exactly the mistakes a backend
makes when it builds manifests from user input, so the emulator rejects them too, with the
apiserver's field paths and messages. Quantities are parsed with the official client's
``kubernetes.utils.parse_quantity`` and must also match the apiserver's quantity grammar.
"""

from __future__ import annotations

import base64
import binascii
import re
from decimal import Decimal
from typing import Any, Iterable, Mapping

from kubernetes.utils import parse_quantity

from .errors import FieldCause
from .resources import ResourceType
from .schema import schema_errors

DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + r"(\." + DNS1123_LABEL + r")*"
_LABEL_RE = re.compile(DNS1123_LABEL)
_SUBDOMAIN_RE = re.compile(DNS1123_SUBDOMAIN)
_QUALIFIED_NAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_QUANTITY_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?\d+)?")
_CONFIG_KEY_RE = re.compile(r"[-._a-zA-Z0-9]+")
_IANA_SVC_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_STANDARD_RESOURCES = {"cpu", "memory", "ephemeral-storage"}
_OVERCOMMITTABLE = {"cpu", "memory", "ephemeral-storage"}

LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
             "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
             f"validation is '{DNS1123_LABEL}')")
SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                 "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                 f"validation is '{DNS1123_SUBDOMAIN}')")
QUANTITY_MSG = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"


def _invalid(path: str, value: Any, why: str) -> FieldCause:
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    return FieldCause(path, f"Invalid value: {shown}: {why}")


def name_errors(name: Any, rule: str, path: str = "metadata.name") -> list[FieldCause]:
    """DNS-1123 label (63) / subdomain (253) / path-segment name checks."""
    if not isinstance(name, str) or not name:
        return [FieldCause(path, "Required value: name or generateName is required", "FieldValueRequired")]
    if rule == "path":
        if name in (".", "..") or "/" in name or "%" in name:
            return [_invalid(path, name, "may not be '.' or '..' and may not contain '/' or '%'")]
        return []
    if rule == "label":
        if len(name) > 63:
            return [_invalid(path, name, "must be no more than 63 characters")]
        if not _LABEL_RE.fullmatch(name):
            return [_invalid(path, name, LABEL_MSG)]
        return []
    if len(name) > 253:
        return [_invalid(path, name, "must be no more than 253 characters")]
    if not _SUBDOMAIN_RE.fullmatch(name):
        return [_invalid(path, name, SUBDOMAIN_MSG)]
    return []


def qualified_name_errors(key: Any, path: str) -> list[FieldCause]:
    """Label/annotation key syntax: ``[prefix/]name``, prefix a DNS subdomain, name <= 63."""
    if not isinstance(key, str) or not key:
        return [_invalid(path, key, "name part must be non-empty")]
    prefix, _, name = key.rpartition("/")
    out: list[FieldCause] = []
    if "/" in key:
        if not prefix or len(prefix) > 253 or not _SUBDOMAIN_RE.fullmatch(prefix):
            out.append(_invalid(path, key, "prefix part " + SUBDOMAIN_MSG))
    if not name or len(name) > 63 or not _QUALIFIED_NAME_RE.fullmatch(name):
        out.append(_invalid(path, key, "name part must consist of alphanumeric characters, '-', '_' or '.', and "
                                      "must start and end with an alphanumeric character, at most 63 characters"))
    return out


def metadata_errors(meta: Mapping[str, Any]) -> list[FieldCause]:
    out: list[FieldCause] = []
    for key, value in (meta.get("labels") or {}).items():
        out += qualified_name_errors(key, f"metadata.labels[{key}]" if isinstance(key, str) else "metadata.labels")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE_RE.fullmatch(value):
            out.append(_invalid(f"metadata.labels[{key}]", value,
                                "a valid label must be an empty string or consist of alphanumeric characters, "
                                "'-', '_' or '.', and must start and end with an alphanumeric character, "
                                "at most 63 characters"))
    annotations = meta.get("annotations") or {}
    for key in annotations:
        out += qualified_name_errors(key, f"metadata.annotations[{key}]")
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > 256 * 1024:
        out.append(FieldCause("metadata.annotations", "Too long: must have at most 262144 bytes", "FieldValueTooLong"))
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        if not ref.get("uid"):
            out.append(FieldCause(f"metadata.ownerReferences[{i}].uid", "Invalid value: \"\": uid must not be empty"))
    if sum(1 for ref in meta.get("ownerReferences") or [] if ref.get("controller")) > 1:
        out.append(FieldCause("metadata.ownerReferences",
                              "Invalid value: only one reference can have Controller set to true"))
    return out


def quantity_errors(value: Any, path: str) -> list[FieldCause]:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return [_invalid(path, value, QUANTITY_MSG)]
    text = str(value)
    try:
        parsed = parse_quantity(value)
    except ValueError:
        return [_invalid(path, text, QUANTITY_MSG)]
    if not _QUANTITY_RE.fullmatch(text) or not parsed.is_finite():
        return [_invalid(path, text, QUANTITY_MSG)]
    if parsed < 0:
        return [_invalid(path, text, "must be greater than or equal to 0")]
    return []


def _resource_name_errors(name: str, path: str) -> list[FieldCause]:
    if name in _STANDARD_RESOURCES or name.startswith("hugepages-"):
        return []
    if "/" in name and not qualified_name_errors(name, path):
        return []
    return [_invalid(path, name, "must be a standard resource type or fully qualified")]


def resources_errors(res: Mapping[str, Any], path: str) -> list[FieldCause]:
    """Requests/limits: names, quantity syntax, request <= limit, integer extended resources."""
    out: list[FieldCause] = []
    parsed: dict[str, dict[str, Decimal]] = {"requests": {}, "limits": {}}
    for section in ("requests", "limits"):
        for name, value in (res.get(section) or {}).items():
            field = f"{path}.{section}[{name}]"
            errs = _resource_name_errors(name, field) + quantity_errors(value, field)
            out += errs
            if not errs:
                parsed[section][name] = parse_quantity(value)
                if name not in _OVERCOMMITTABLE and not name.startswith("hugepages-") and \
                        parsed[section][name] != parsed[section][name].to_integral_value():
                    out.append(_invalid(field, str(value), "must be an integer"))
    for name, request in parsed["requests"].items():
        limit = parsed["limits"].get(name)
        overcommit = name in _OVERCOMMITTABLE
        if limit is not None and request > limit:
            out.append(_invalid(f"{path}.requests[{name}]", str(res["requests"][name]),
                                f"must be less than or equal to {name} limit of {res['limits'][name]}"))
        elif not overcommit and "/" in name:
            if limit is None:
                out.append(FieldCause(f"{path}.limits", "Required value: Limit must be set for non overcommitable "
                                                         "resources", "FieldValueRequired"))
            elif request != limit:
                out.append(_invalid(f"{path}.requests[{name}]", str(res["requests"][name]),
                                    "must be equal to " + name + " limit of " + str(res["limits"][name])))
    return out


def _port_name_errors(name: Any, path: str) -> list[FieldCause]:
    if not isinstance(name, str):
        return []
    if len(name) > 15:
        return [_invalid(path, name, "must be no more than 15 characters")]
    if not _IANA_SVC_NAME_RE.fullmatch(name) or "--" in name or not re.search("[a-z]", name):
        return [_invalid(path, name, "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), "
                                     "must contain at least one letter, and hyphens cannot be adjacent")]
    return []


def _port_errors(value: Any, path: str) -> list[FieldCause]:
    if isinstance(value, int) and not 1 <= value <= 65535:
        return [_invalid(path, value, "must be between 1 and 65535, inclusive")]
    return []


def _probe_errors(probe: Any, path: str) -> list[FieldCause]:
    if not isinstance(probe, Mapping):
        return []
    handlers = [h for h in ("exec", "httpGet", "tcpSocket", "grpc") if probe.get(h) is not None]
    if len(handlers) != 1:
        return [FieldCause(path, "Required value: must specify a handler type" if not handlers
                           else "Forbidden: may not specify more than 1 handler type", "FieldValueRequired")]
    return []


def container_errors(c: Mapping[str, Any], path: str, volume_names: set[str]) -> list[FieldCause]:
    out = name_errors(c.get("name"), "label", f"{path}.name")
    out += resources_errors(c.get("resources") or {}, f"{path}.resources")
    for i, port in enumerate(c.get("ports") or []):
        out += _port_errors(port.get("containerPort"), f"{path}.ports[{i}].containerPort")
        out += _port_name_errors(port.get("name"), f"{path}.ports[{i}].name")
    for i, mount in enumerate(c.get("volumeMounts") or []):
        if mount.get("name") not in volume_names:
            out.append(FieldCause(f"{path}.volumeMounts[{i}].name", f'Not found: "{mount.get("name")}"',
                                  "FieldValueNotFound"))
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        out += _probe_errors(c.get(probe), f"{path}.{probe}")
    return out


def pod_spec_errors(spec: Mapping[str, Any], path: str = "spec") -> list[FieldCause]:
    out: list[FieldCause] = []
    volume_names: set[str] = set()
    for i, vol in enumerate(spec.get("volumes") or []):
        out += name_errors(vol.get("name"), "label", f"{path}.volumes[{i}].name")
        volume_names.add(vol.get("name"))
        size = (vol.get("emptyDir") or {}).get("sizeLimit")
        if size is not None:
            out += quantity_errors(size, f"{path}.volumes[{i}].emptyDir.sizeLimit")
    seen: set[str] = set()
    for section in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(section) or []):
            out += container_errors(c, f"{path}.{section}[{i}]", volume_names)
            if c.get("name") in seen:
                out.append(FieldCause(f"{path}.{section}[{i}].name", f'Duplicate value: "{c.get("name")}"',
                                      "FieldValueDuplicate"))
            seen.add(c.get("name"))
    if not spec.get("containers"):
        out.append(FieldCause(f"{path}.containers", "Required value", "FieldValueRequired"))
    if spec.get("restartPolicy") not in (None, "Always", "OnFailure", "Never"):
        out.append(FieldCause(f"{path}.restartPolicy", f'Unsupported value: "{spec.get("restartPolicy")}": '
                                                       'supported values: "Always", "OnFailure", "Never"',
                              "FieldValueNotSupported"))
    if spec.get("resources"):
        out += resources_errors(spec["resources"], f"{path}.resources")
    for name, value in (spec.get("overhead") or {}).items():
        out += quantity_errors(value, f"{path}.overhead[{name}]")
    return out


def service_spec_errors(spec: Mapping[str, Any]) -> list[FieldCause]:
    out: list[FieldCause] = []
    ports = spec.get("ports") or []
    for i, port in enumerate(ports):
        out += _port_errors(port.get("port"), f"spec.ports[{i}].port")
        out += _port_errors(port.get("targetPort"), f"spec.ports[{i}].targetPort")
        out += _port_name_errors(port.get("name"), f"spec.ports[{i}].name")
        if isinstance(port.get("targetPort"), str):
            out += _port_name_errors(port["targetPort"], f"spec.ports[{i}].targetPort")
        if len(ports) > 1 and not port.get("name"):
            out.append(FieldCause(f"spec.ports[{i}].name", "Required value", "FieldValueRequired"))
    if not ports and spec.get("clusterIP") != "None" and spec.get("type") != "ExternalName":
        out.append(FieldCause("spec.ports", "Required value", "FieldValueRequired"))
    for key, value in (spec.get("selector") or {}).items():
        out += metadata_errors({"labels": {key: value}})
    return out


def _data_key_errors(keys: Iterable[str], path: str) -> list[FieldCause]:
    return [_invalid(f"{path}[{k}]", k, "a valid config key must consist of alphanumeric characters, '-', '_' "
                                        "or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name')")
            for k in keys if len(k) > 253 or not _CONFIG_KEY_RE.fullmatch(k)]


def secret_errors(obj: Mapping[str, Any]) -> list[FieldCause]:
    out = _data_key_errors((obj.get("data") or {}).keys(), "data")
    for key, value in (obj.get("data") or {}).items():
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            out.append(_invalid(f"data[{key}]", "<secret>", "illegal base64 data"))
    return out


def object_errors(rt: ResourceType, obj: Mapping[str, Any]) -> list[FieldCause]:
    """Every check for one object about to be stored: schema (strict) plus apiserver rules."""
    out = schema_errors(dict(obj), rt.schema if not rt.builtin else None)
    if out:
        # The rules below assume the structure the schema guarantees.
        return out
    meta = obj.get("metadata") or {}
    out += name_errors(meta.get("name"), rt.name_rule)
    out += metadata_errors(meta)
    if rt.kind == "Pod":
        out += pod_spec_errors(obj.get("spec") or {})
    elif rt.kind == "Service":
        out += service_spec_errors(obj.get("spec") or {})
    elif rt.kind == "Secret":
        out += secret_errors(obj)
    elif rt.kind == "ConfigMap":
        out += _data_key_errors(list((obj.get("data") or {}).keys()) + list((obj.get("binaryData") or {}).keys()),
                                "data")
    return out
