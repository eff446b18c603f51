"""The three PATCH flavours of the Kubernetes API, applied to plain JSON dicts.

* ``application/merge-patch+json``: RFC 7386 (``null`` deletes, lists replace).
* ``application/json-patch+json``: RFC 6902 (add/remove/replace/move/copy/test).
* ``application/strategic-merge-patch+json``: a subset of Kubernetes' strategic merge, enough
  for what the project and kubectl send. Lists of objects are merged by their Kubernetes merge
  key when the field is one we know (``containers``/``initContainers``/``env``/``volumes``/
  ``imagePullSecrets`` by ``name``, ``volumeMounts`` by ``mountPath``, container ``ports`` by
  ``containerPort`` and Service ``ports`` by ``port``, ``conditions`` by ``type``,
  ``ownerReferences`` by ``uid``); ``finalizers`` is merged as a set. The directives
  ``$patch: delete`` (on a list item or a map), ``$patch: replace`` (on a map) and
  ``$deleteFromPrimitiveList/<field>`` are honoured. Not supported: ``$retainKeys``,
  ``$setElementOrder``, and merge keys of fields not listed here (those lists are replaced,
  which is also what a real server does for ``atomic`` lists).
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError, bad_request

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

_NAME_KEYED = {"containers", "initContainers", "ephemeralContainers", "env", "volumes", "imagePullSecrets"}
_SET_LISTS = {"finalizers"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"json patch path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for part in parts:
        if isinstance(cur, dict):
            if part not in cur:
                raise ApiError(422, f"jsonpatch: path element {part!r} not found")
            cur = cur[part]
        elif isinstance(cur, list):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError):
                raise ApiError(422, f"jsonpatch: index {part!r} out of range") from None
        else:
            raise ApiError(422, f"jsonpatch: cannot descend into {part!r}")
    return cur


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            try:
                idx = int(last)
            except ValueError:
                raise ApiError(422, f"jsonpatch: bad index {last!r}") from None
            if not 0 <= idx <= len(parent):
                raise ApiError(422, f"jsonpatch: index {idx} out of range")
            parent.insert(idx, value)
    else:
        raise ApiError(422, f"jsonpatch: cannot add to {'/'.join(parts[:-1])!r}")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise ApiError(422, "jsonpatch: cannot remove the whole document")
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    try:
        if isinstance(parent, dict):
            return parent.pop(last)
        if isinstance(parent, list):
            return parent.pop(int(last))
    except (KeyError, ValueError, IndexError):
        pass
    raise ApiError(422, f"jsonpatch: remove of missing path /{'/'.join(parts)}")


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch; a failed ``test`` or a missing path is a 422 like the apiserver's."""
    if not isinstance(ops, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid json patch operation {op!r}")
        kind = op["op"]
        parts = _pointer(op["path"])
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            _resolve(doc, parts)
            if parts:
                _remove(doc, parts)
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = copy.deepcopy(_resolve(doc, src))
            if kind == "move":
                _remove(doc, src)
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _resolve(doc, parts) != op.get("value"):
                raise ApiError(422, f"jsonpatch test operation does not apply: {op['path']}")
        else:
            raise bad_request(f"unknown json patch op {kind!r}")
    return doc


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field in _NAME_KEYED:
        return "name"
    if field == "volumeMounts":
        return "mountPath"
    if field == "conditions":
        return "type"
    if field == "ownerReferences":
        return "uid"
    if field == "ports":
        if any(isinstance(i, dict) and "containerPort" in i for i in items):
            return "containerPort"
        return "port"
    return None


def _merge_list(field: str, target: list[Any], patch: list[Any]) -> list[Any]:
    if field in _SET_LISTS:
        out = list(target)
        out.extend(v for v in patch if v not in out)
        return out
    key = _merge_key(field, list(target) + list(patch))
    if key is None or not all(isinstance(i, dict) for i in patch):
        return [strip_directives(v) for v in patch]
    out = [copy.deepcopy(i) for i in target]
    for item in patch:
        idx = next((n for n, cur in enumerate(out) if isinstance(cur, dict) and cur.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
        elif idx is None:
            out.append(strip_directives(item))
        else:
            out[idx] = strategic_merge(out[idx], item)
    return out


def strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [strip_directives(v) for v in value]
    return value


def strategic_merge(target: Any, patch: Any) -> Any:
    """The subset of strategic merge patch described in the module docstring."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return strip_directives(patch)
    if directive == "delete":
        return None
    if directive is not None:
        raise bad_request(f"unsupported strategic merge directive $patch={directive!r}")
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field, []) if v not in value]
            continue
        if key.startswith("$"):
            raise bad_request(f"unsupported strategic merge directive {key!r}")
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value)
        elif isinstance(value, dict):
            merged = strategic_merge(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = strip_directives(value)
    return result


def apply_patch(content_type: str, target: dict[str, Any], body: Any) -> dict[str, Any]:
    """Dispatch on the request's Content-Type; server-side apply is refused with a 415."""
    ctype = content_type.split(";")[0].strip()
    if ctype == MERGE_PATCH:
        result = merge_patch(target, body)
    elif ctype == JSON_PATCH:
        result = json_patch(target, body)
    elif ctype == STRATEGIC_PATCH:
        result = strategic_merge(target, body)
    else:
        raise ApiError(
            415,
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_PATCH} (not {ctype or 'none'})",
        )
    if not isinstance(result, dict):
        raise bad_request("patch did not produce an object")
    return result
