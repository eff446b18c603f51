"""Where a group's nodes may run, as a user may ask for it: the shape of `WorkerGroup.scheduling`
and of Ray node labels, checked here so the magic, the REST API and the Python API refuse the
same bad input with the same message. Pure and Kubernetes-free (importing the `kubernetes`
package costs seconds); what Kubernetes itself refuses (an affinity's inner fields, a missing
PriorityClass or RuntimeClass) the backend learns from a dry-run create before it makes anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .errors import SpecError

# What a user's request may set on a group (only those the admin's policy lists, see
# Policy.user_scheduling); the admin's own settings are c.KubernetesBackend.<same name>.
SCHEDULING_FIELDS = ("node_selector", "tolerations", "affinity", "priority_class_name", "runtime_class_name",
                     "accelerator_type", "market_type")
MARKET_TYPES = ("spot", "on-demand")
MAX_NODE_LABELS = 32
MAX_TOLERATIONS = 16
MAX_AFFINITY_JSON = 8192
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_AFFINITY_KEYS = {"nodeAffinity", "podAffinity", "podAntiAffinity"}
# Kubernetes label syntax (Ray node labels follow it too, ray/_private/label_utils.py): a name
# of at most 63 characters, optionally after a DNS-subdomain prefix and "/"; a value likewise, or "".
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_KEY_ALLOWED = ("a label key: a name of 1-63 letters, digits, - _ . (starting and ending alphanumeric), "
                "optionally after a DNS prefix and '/', such as ray.io/accelerator-type")
_VALUE_ALLOWED = "a label value: empty, or 1-63 letters, digits, - _ . starting and ending alphanumeric"


def is_label_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    prefix, _, name = key.rpartition("/")
    return bool(_LABEL_NAME.match(name)) and (not prefix or (len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.match(prefix))))


def is_label_value(value: Any) -> bool:
    return isinstance(value, str) and (not value or bool(_LABEL_NAME.match(value)))


def check_label_map(field_name: str, labels: Any) -> None:
    """Ray node labels or a nodeSelector: at most MAX_NODE_LABELS key -> value strings."""
    if not isinstance(labels, Mapping) or len(labels) > MAX_NODE_LABELS:
        raise SpecError(field_name, labels, f"an object of at most {MAX_NODE_LABELS} label -> value strings")
    for key, value in labels.items():
        if not is_label_key(key):
            raise SpecError(field_name, key, _KEY_ALLOWED)
        if not is_label_value(value):
            raise SpecError(f"{field_name}.{key}", value, _VALUE_ALLOWED)


def check_scheduling(field_name: str, scheduling: Any) -> None:
    """A group's `scheduling` request: known fields, each of the shape Kubernetes gives it."""
    if not isinstance(scheduling, Mapping):
        raise SpecError(field_name, scheduling, f"an object with any of: {', '.join(SCHEDULING_FIELDS)}")
    for key, value in scheduling.items():
        where = f"{field_name}.{key}"
        if key not in SCHEDULING_FIELDS:
            raise SpecError(where, value, f"known fields are {', '.join(SCHEDULING_FIELDS)}")
        if key == "node_selector":
            check_label_map(where, value)
        elif key == "tolerations":
            _check_tolerations(where, value)
        elif key == "affinity":
            _check_affinity(where, value)
        elif key in ("priority_class_name", "runtime_class_name"):
            if not isinstance(value, str) or len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
                raise SpecError(where, value, "the name of a Kubernetes object: lowercase letters, digits, "
                                "'-' and '.', at most 253 characters")
        elif key == "accelerator_type":
            if not isinstance(value, str) or not value or not is_label_value(value):
                raise SpecError(where, value, "an accelerator type as Ray names it (A100, H100, L4, TPU-V6E, "
                                "MI300X): 1-63 letters, digits, - _ .")
        elif value not in MARKET_TYPES:  # market_type
            raise SpecError(where, value, f"one of {', '.join(MARKET_TYPES)}")


def parse_scheduling(field_name: str, data: Any) -> dict[str, Any]:
    """A checked copy of a request's `scheduling` object (JSON values, as Kubernetes spells them)."""
    check_scheduling(field_name, data)
    return json.loads(json.dumps(data))


def _check_tolerations(where: str, tolerations: Any) -> None:
    if not isinstance(tolerations, list) or len(tolerations) > MAX_TOLERATIONS:
        raise SpecError(where, tolerations, f"a list of at most {MAX_TOLERATIONS} toleration objects")
    for index, item in enumerate(tolerations):
        at = f"{where}[{index}]"
        if not isinstance(item, Mapping) or not set(item) <= _TOLERATION_KEYS:
            raise SpecError(at, item, f"a toleration object with {', '.join(sorted(_TOLERATION_KEYS))}")
        operator = item.get("operator", "Equal")
        if operator not in ("Equal", "Exists"):
            raise SpecError(f"{at}.operator", operator, "Equal or Exists")
        if item.get("key", "") != "" and not is_label_key(item.get("key")):
            raise SpecError(f"{at}.key", item.get("key"), _KEY_ALLOWED)
        if not is_label_value(item.get("value", "")) or (operator == "Exists" and item.get("value")):
            raise SpecError(f"{at}.value", item.get("value"), _VALUE_ALLOWED + " (none with Exists)")
        if item.get("effect", "") not in ("", *_TOLERATION_EFFECTS):
            raise SpecError(f"{at}.effect", item.get("effect"), f"one of {', '.join(_TOLERATION_EFFECTS)}")
        seconds = item.get("tolerationSeconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0):
            raise SpecError(f"{at}.tolerationSeconds", seconds, "a whole number of seconds >= 0")


def _check_affinity(where: str, affinity: Any) -> None:
    if not isinstance(affinity, Mapping) or not affinity or not set(affinity) <= _AFFINITY_KEYS:
        raise SpecError(where, affinity, f"a Kubernetes affinity object with {', '.join(sorted(_AFFINITY_KEYS))}")
    for key, value in affinity.items():
        if not isinstance(value, Mapping):
            raise SpecError(f"{where}.{key}", value, "an object, as Kubernetes spells it")
    try:
        size = len(json.dumps(affinity))
    except (TypeError, ValueError):
        raise SpecError(where, affinity, "plain JSON") from None
    if size > MAX_AFFINITY_JSON:
        raise SpecError(where, f"{size} bytes", f"at most {MAX_AFFINITY_JSON} bytes of JSON")
