"""A container's environment as the kubelet computes it: env, envFrom, downward API, secrets.

Supported sources: literal ``value`` (with ``$(VAR)`` expansion against earlier variables),
``valueFrom.fieldRef`` (metadata.name/namespace/uid, metadata.labels['k'],
metadata.annotations['k'], spec.nodeName, spec.serviceAccountName, status.podIP(s),
status.hostIP(s)), ``valueFrom.resourceFieldRef`` (limits/requests of cpu, memory,
ephemeral-storage, with ``divisor``, rounded up like the kubelet; an unset limit falls back to
the node's allocatable), ``valueFrom.secretKeyRef`` / ``configMapKeyRef`` and ``envFrom``
``secretRef`` / ``configMapRef`` read through a :data:`Lookup` (the node's client). A missing Secret, ConfigMap
or key (not ``optional``) is a :class:`ConfigError`, shown as ``CreateContainerConfigError``.
"""

from __future__ import annotations

import base64
import math
import re
from decimal import Decimal
from typing import Any, Callable, Mapping

from kubernetes.utils import parse_quantity

from .podnet import expand

Lookup = Callable[[str, str], dict[str, Any] | None]  # (kind plural, name) -> object or None


class ConfigError(Exception):
    """The container cannot start because its configuration refers to something missing."""


def _field_ref(pod: Mapping[str, Any], path: str) -> str:
    meta = pod["metadata"]
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"), "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or []),
    }
    if path not in simple:
        raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")
    return str(simple[path] or "")


def _resource_ref(container: Mapping[str, Any], ref: Mapping[str, Any], allocatable: Mapping[str, str]) -> str:
    section, _, name = str(ref.get("resource", "")).partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(section) or {}).get(name)
    if value is None:
        value = allocatable.get(name, "0")
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(int(math.ceil(Decimal(parse_quantity(value)) / divisor)))


def _lookup_key(lookup: Lookup, kind: str, ref: Mapping[str, Any], ns: str) -> str | None:
    obj = lookup(kind, ref.get("name", ""))
    label = "secret" if kind == "secrets" else "configmap"
    if obj is None:
        if ref.get("optional"):
            return None
        raise ConfigError(f'{label} "{ref.get("name")}" not found')
    key = ref.get("key", "")
    if kind == "secrets":
        raw = (obj.get("data") or {}).get(key)
        value = base64.b64decode(raw).decode(errors="replace") if raw is not None else None
    else:
        value = (obj.get("data") or {}).get(key)
    if value is None:
        if ref.get("optional"):
            return None
        raise ConfigError(f"couldn't find key {key} in {'Secret' if kind == 'secrets' else 'ConfigMap'} "
                          f"{ns}/{ref.get('name')}")
    return value


def _env_from(lookup: Lookup, source: Mapping[str, Any]) -> dict[str, str]:
    prefix = source.get("prefix", "")
    for kind, field in (("secrets", "secretRef"), ("configmaps", "configMapRef")):
        ref = source.get(field)
        if ref is None:
            continue
        obj = lookup(kind, ref.get("name", ""))
        if obj is None:
            if ref.get("optional"):
                return {}
            raise ConfigError(f'{"secret" if kind == "secrets" else "configmap"} "{ref.get("name")}" not found')
        data = obj.get("data") or {}
        if kind == "secrets":
            return {prefix + k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        return {prefix + k: str(v) for k, v in data.items()}
    return {}


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], lookup: Lookup,
                  allocatable: Mapping[str, str]) -> dict[str, str]:
    """The variables Kubernetes would put in the container (not the host environment)."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env.update(_env_from(lookup, source))
    for var in container.get("env") or []:
        name = var["name"]
        source = var.get("valueFrom")
        if source is None:
            env[name] = expand(str(var.get("value", "")), env)
        elif "fieldRef" in source:
            env[name] = _field_ref(pod, source["fieldRef"].get("fieldPath", ""))
        elif "resourceFieldRef" in source:
            env[name] = _resource_ref(container, source["resourceFieldRef"], allocatable)
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "secrets" if "secretKeyRef" in source else "configmaps"
            value = _lookup_key(lookup, kind, source.get("secretKeyRef") or source.get("configMapKeyRef"), ns)
            if value is not None:
                env[name] = value
        else:
            raise ConfigError(f"unsupported valueFrom for {name}: {sorted(source)}")
    return env

