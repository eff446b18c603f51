"""Label selectors, turned into resources so every pass honours them for free.

A selector (or a selector and its fallbacks) becomes one pseudo-resource, named after the
selector as reasons write it (``label_selector: {ray.io/accelerator-type: A100}``). A shape
that carries one needs one unit of it; every group whose labels match, and every node of such a
group, offers an amount no shape can use up. "Which groups may take this shape", "does it fit
this free capacity", "no group can ever hold it" and STRICT_PACK sums then all come out right
with no pass knowing about labels. Only the wording (``text.format_shape``, the infeasible
reason) and the reply, which drops the pseudo-resource again, look at the name.
"""

from __future__ import annotations

from collections.abc import Mapping

from .request import LabelSelector, Resources

PREFIX = "label_selector: "
OFFERED = float(2**40)  # what a matching node offers: more copies than any plan can place


def is_label_resource(name: str) -> bool:
    return name.startswith(PREFIX)


def resource_name(selectors: tuple[LabelSelector, ...]) -> str:
    return PREFIX + format_selectors(selectors)


def with_selectors(shape: Resources, selectors: tuple[LabelSelector, ...]) -> dict[str, float]:
    """``shape`` plus the pseudo-resource for ``selectors`` (none when there are none)."""
    out = {k: float(v) for k, v in shape.items()}
    if selectors:
        out[resource_name(selectors)] = 1.0
    return out


def without_labels(shape: Resources) -> dict[str, float]:
    return {k: v for k, v in shape.items() if not is_label_resource(k)}


def selector_text(shape: Resources) -> str:
    """The selector(s) a shape carries, as reasons write them; "" when it carries none."""
    return " and ".join(k[len(PREFIX):] for k in sorted(shape) if is_label_resource(k))


def matches(selectors: tuple[LabelSelector, ...], labels: Mapping[str, str]) -> bool:
    """Whether a node with ``labels`` satisfies one of ``selectors`` (Ray's rule: every
    constraint of the selector holds; a missing label fails ``in`` and passes ``not_in``)."""
    return any(all((labels.get(c.key) in c.values) == (c.op == "in") for c in selector)
               for selector in selectors)


def format_selectors(selectors: tuple[LabelSelector, ...]) -> str:
    """``{ray.io/accelerator-type: A100, market: !spot}``, fallbacks joined by `` or ``; the
    values written as Ray's ``label_selector`` takes them (``in(a, b)``, ``!a``, ``!in(a, b)``)."""
    def value(op: str, values: tuple[str, ...]) -> str:
        text = values[0] if len(values) == 1 else f"in({', '.join(values)})"
        return "!" + text if op == "not_in" else text

    return " or ".join("{" + ", ".join(f"{c.key}: {value(c.op, tuple(sorted(c.values)))}"
                                       for c in sorted(s, key=lambda c: (c.key, c.op, c.values))) + "}"
                       for s in selectors)


def offered(groups_labels: Mapping[str, Mapping[str, str]],
            selector_sets: set[tuple[LabelSelector, ...]]) -> dict[str, dict[str, float]]:
    """Per group, the pseudo-resources its nodes offer: one per selector set it matches."""
    return {name: {resource_name(s): OFFERED for s in sorted(selector_sets, key=resource_name)
                   if matches(s, labels)}
            for name, labels in groups_labels.items()}
