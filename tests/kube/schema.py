"""Strict schema validation of every object the emulator stores, with ``kubernetes-validate``.

Pinned version: **Kubernetes 1.37** (``KUBERNETES_VERSION``), the newest schema set shipped by the
installed ``kubernetes-validate`` 1.37.0 (it ships 1.25 … 1.37) and the version that the
installed ``kubernetes`` Python client (37.x) is generated from. The emulator's ``/version``
reports the same version.

Strict mode rejects unknown fields, which is what catches a typo such as ``spec.contianers``
that a real apiserver would silently drop. ``kubernetes_validate.validate()`` re-reads and
re-parses the schema files on each call (~20 ms for a Pod); the emulator validates every write
of hundreds of Pods, so this module builds the very same validator (same schema files, same
``referencing`` registry, same Draft 2020-12 validator class, as ``kubernetes_validate.utils``)
once per kind and reuses it.
"""

from __future__ import annotations

import threading
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

from .errors import FieldCause

KUBERNETES_VERSION = "1.37"

_lock = threading.Lock()
_validators: dict[tuple[str, str], jsonschema.protocols.Validator | None] = {}
_definitions: Resource | None = None


def _schema_dir() -> str:
    version = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) == KUBERNETES_VERSION]
    if not version:
        raise RuntimeError(
            f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for Kubernetes "
            f"{KUBERNETES_VERSION}; it has {kv_utils.all_versions()}"
        )
    return f"kubernetes-json-schema/v{version[-1]}-local-strict"


def _validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    """The compiled validator for a kind, or None when the pinned schemas have no such kind."""
    global _definitions
    key = (api_version, kind)
    with _lock:
        if key in _validators:
            return _validators[key]
        directory = _schema_dir()
        # Same file naming as kubernetes_validate.utils.validate: rbac.authorization.k8s.io/v1 -> rbac-v1.
        group, _, version = api_version.rpartition("/")
        suffix = f"{group.split('.')[0]}-{version}" if group else version
        try:
            schema = kv_utils.schema_contents(f"{directory}/{kind.lower()}-{suffix}.json", KUBERNETES_VERSION)
        except FileNotFoundError:
            _validators[key] = None
            return None
        if _definitions is None:
            _definitions = Resource.from_contents(
                kv_utils.schema_contents(f"{directory}/_definitions.json", KUBERNETES_VERSION)
            )
        registry: Registry = _definitions @ (Resource.from_contents(schema) @ Registry())
        validator = jsonschema.validators.Draft202012Validator(schema, registry=registry)
        _validators[key] = validator
        return validator


def has_schema(api_version: str, kind: str) -> bool:
    return _validator(api_version, kind) is not None


def _path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def schema_errors(obj: dict[str, Any], custom_schema: dict[str, Any] | None = None) -> list[FieldCause]:
    """Violations of the strict pinned schema (or of ``custom_schema`` for a custom resource)."""
    if custom_schema is not None:
        validator: Any = jsonschema.validators.Draft202012Validator(custom_schema)
    else:
        validator = _validator(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if validator is None:
            return []
    causes = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        reason = "FieldValueNotSupported" if "Additional properties" in err.message else "FieldValueInvalid"
        causes.append(FieldCause(_path(err), err.message, reason))
    return causes
