"""Label and field selectors, parsed with the grammar of ``k8s.io/apimachinery/pkg/labels``.

The emulator really filters on these (list, watch, deletecollection) so a backend that forgets
a selector sees other clusters' objects, exactly as on a real cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from .errors import ApiError, bad_request

_TOKEN = re.compile(r"\s*(!=|==|=|!|,|\(|\)|>|<|[^\s!=,()<>]+)")


@dataclass(frozen=True)
class Requirement:
    """One clause of a label selector: ``key op values``."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if not present:
            return False
        try:
            number = int(str(value))
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.op == "gt" else number < bound


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            break
        out.append(m.group(1))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse ``app=x,tier!=db,env in (a,b),!legacy,gpu`` or raise a 400 ApiError."""
    if not text or not text.strip():
        return LabelSelector()
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def fail(why: str) -> ApiError:
        return bad_request(f"unable to parse requirement: {why} (selector {text!r})")

    while i < len(toks):
        if toks[i] == "!":
            if i + 1 >= len(toks):
                raise fail("missing key after '!'")
            reqs.append(Requirement(toks[i + 1], "!"))
            i += 2
        else:
            key = toks[i]
            if key in ("=", "==", "!=", ",", "(", ")"):
                raise fail(f"unexpected {key!r}")
            nxt = toks[i + 1] if i + 1 < len(toks) else ","
            if nxt == ",":
                reqs.append(Requirement(key, "exists"))
                i += 1
            elif nxt in ("=", "==", "!="):
                value = toks[i + 2] if i + 2 < len(toks) and toks[i + 2] != "," else ""
                reqs.append(Requirement(key, "!=" if nxt == "!=" else "=", (value,)))
                i += 3 if value else 2
            elif nxt in ("in", "notin"):
                if i + 2 >= len(toks) or toks[i + 2] != "(":
                    raise fail(f"expected '(' after {nxt}")
                j = i + 3
                values: list[str] = []
                while j < len(toks) and toks[j] != ")":
                    if toks[j] != ",":
                        values.append(toks[j])
                    j += 1
                if j >= len(toks):
                    raise fail("missing ')'")
                reqs.append(Requirement(key, nxt, tuple(values) or ("",)))
                i = j + 1
            elif nxt in (">", "<"):
                if i + 2 >= len(toks) or not re.fullmatch(r"-?\d+", toks[i + 2]):
                    raise fail(f"{nxt} needs an integer value")
                reqs.append(Requirement(key, "gt" if nxt == ">" else "lt", (toks[i + 2],)))
                i += 3
            else:
                raise fail(f"unexpected {nxt!r} after key {key!r}")
        if i < len(toks):
            if toks[i] != ",":
                raise fail(f"expected ',' but found {toks[i]!r}")
            i += 1
    return LabelSelector(tuple(reqs))


def selector_from_match_labels(match_labels: Mapping[str, str] | None) -> LabelSelector:
    """A Service's ``spec.selector`` map as a selector (an empty map selects nothing there)."""
    return LabelSelector(tuple(Requirement(k, "=", (v,)) for k, v in (match_labels or {}).items()))


def get_path(obj: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[tuple[str, bool, str], ...] = ()  # (field, equal?, value)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for fld, equal, value in self.terms:
            actual = get_path(obj, fld)
            actual_s = "" if actual is None else str(actual).lower() if isinstance(actual, bool) else str(actual)
            if (actual_s == value) != equal:
                return False
        return True


def parse_field_selector(text: str | None, allowed: Iterable[str], resource: str) -> FieldSelector:
    """Parse ``a=b,c!=d``; fields a resource does not index are a 400, as on a real cluster."""
    if not text or not text.strip():
        return FieldSelector()
    allowed_set = set(allowed)
    terms: list[tuple[str, bool, str]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"([^=!]+?)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise bad_request(f"invalid selector: {text!r}; can't understand {part!r}")
        fld = m.group(1).strip()
        if fld not in allowed_set:
            raise bad_request(f'field label not supported: {fld}')
        terms.append((fld, m.group(2) != "!=", m.group(3).strip()))
    return FieldSelector(tuple(terms))


Matcher = Callable[[Mapping[str, Any]], bool]


def object_matcher(labels: LabelSelector, fields: FieldSelector) -> Matcher:
    def match(obj: Mapping[str, Any]) -> bool:
        return labels.matches(obj.get("metadata", {}).get("labels")) and fields.matches(obj)

    return match
