"""How numbers, bytes, durations and times read in the notebook front-ends (widget, text status,
magic), with the same rules as the sidebar's `labextension/src/format.ts`: bytes in binary units
(GiB), at most two decimals, times in local clock time, events newest first. One module, so a
figure reads the same wherever it is shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def number(value: float, places: int = 2) -> str:
    """``4`` for integers, else at most `places` decimals without trailing zeros (``0.5``,
    ``1.25``; resource shapes use 4, as Ray's smallest fraction is 0.0001)."""
    if not math.isfinite(value):
        return "-"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.{places}f}".rstrip("0").rstrip(".")


def nbytes(value: float) -> str:
    """Binary units, at most one decimal: ``512 B``, ``1.5 GiB``, ``4 GiB``."""
    unit = 0
    while abs(value) >= 1024 and unit < len(_BYTE_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{round(value)} B" if unit == 0 else f"{number(round(value, 1), 1)} {_BYTE_UNITS[unit]}"


def duration(seconds: float) -> str:
    """Whole seconds, minutes and hours: ``40 s``, ``3 min 5 s``, ``2 h 10 min``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        minutes, rest = divmod(s, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(s, 3600)
    return f"{hours} h {rest // 60} min" if rest // 60 else f"{hours} h"


def clock(epoch_s: float) -> str:
    """An epoch time as this machine's local clock time, ``HH:MM:SS``."""
    return datetime.fromtimestamp(epoch_s).astimezone().strftime("%H:%M:%S")


def local_time(iso: str) -> str:
    """An event's ISO time (UTC, ``...Z``) as this machine's local clock time, ``HH:MM:SS``."""
    try:
        stamp = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return stamp.astimezone().strftime("%H:%M:%S")


def usage(used: float, total: float) -> str:
    """``1 / 4``: used of total resource units."""
    return f"{number(used)} / {number(total)}"


def bytes_usage(used: float, total: float) -> str:
    """``0.5 GiB / 2.0 GiB``."""
    return f"{nbytes(used)} / {nbytes(total)}"


def newest_first(events: Sequence[Mapping[str, Any]], count: int = 10) -> list[Mapping[str, Any]]:
    """The last `count` events, newest first (the snapshot lists them oldest first)."""
    return list(reversed(events[-count:])) if count else []


def seconds_until_removal(node: Mapping[str, Any], snap: Mapping[str, Any]) -> float | None:
    """Seconds until the reconciler removes an idle worker node, or None when it will not: the
    head, a busy or not-running node, a group already at its min, or a node its group's warm
    pool keeps. Uses the cluster's idle timeout (the snapshot's groups do
    not carry their own)."""
    if node.get("head") or node["state"] != "running" or node["idle_s"] <= 0:
        return None
    group = next((g for g in snap["groups"] if g["name"] == node["group"]), None)
    if group is None or group["nodes"] <= group["min"]:
        return None
    # The autoscaler drains the longest idle first and keeps the `warm` least idle ones.
    less_idle = sum(1 for n in snap["nodes"] if n["group"] == node["group"] and n["state"] == "running"
                    and 0 < n["idle_s"] < node["idle_s"])
    if less_idle < group.get("warm", 0):
        return None
    return max(0.0, float(snap["idle_timeout_s"]) - node["idle_s"])


def idle_text(node: Mapping[str, Any], snap: Mapping[str, Any]) -> str:
    """What a node's idle column says: ``busy``, ``idle 12 s`` or ``idle 20 s, removed in 40 s``."""
    if node["state"] != "running":
        return ""
    if node["idle_s"] <= 0:
        return "busy"
    text = f"idle {duration(node['idle_s'])}"
    left = seconds_until_removal(node, snap)
    return text if left is None else f"{text}, removed in {duration(left)}"


def cost_text(cost: Mapping[str, Any] | None) -> str:
    """``2.4/h now, 0.35 so far; 3.1 of your budget of 10`` (the snapshot's `cost`), or ""."""
    if not cost:
        return ""
    text = f"{number(cost['per_hour'])}/h now, {number(cost['so_far'])} so far"
    if cost.get("budget") is not None:
        text += f"; {number(cost['user_so_far'])} of your budget of {number(cost['budget'])}"
    return text


PLACEMENT_LABELS = ("ray.io/accelerator-type", "ray.io/market-type")
_DEVICE_WORDS = {"gpu": "GPUs", "tpu": "TPUs"}


def placement_text(labels: Mapping[str, str] | None) -> str:
    """``A100, spot``: what a group's nodes run on (its accelerator and market Ray labels), "" if unsaid."""
    return ", ".join(v for v in ((labels or {}).get(k) for k in PLACEMENT_LABELS) if v)


def quota_text(quota: Mapping[str, Any] | None) -> str:
    """``2 of 4 GPUs used, 6 of 16 CPUs, 20 of 64 GiB memory, 3 of 20 pods`` (the snapshot's
    `quota`): accelerators first, then CPUs, memory (in the unit of its limit) and Pods; keys
    the line has no words for (limits.*, services, ...) are left out. "" without a quota."""
    if not quota:
        return ""
    by_key = {r["resource"]: r for r in quota["resources"]}
    accelerators = sorted(k for k in by_key if k.startswith("requests.") and "/" in k)
    words = [_DEVICE_WORDS.get(k.rsplit("/", 1)[1], k.removeprefix("requests.")) for k in accelerators]
    parts = []
    for key, word in zip(accelerators, words):
        if words.count(word) > 1:  # two vendors' GPUs: say whose
            word = f"{key.removeprefix('requests.').split('/')[0]} {word}"
        parts.append(f"{number(by_key[key]['used'])} of {number(by_key[key]['hard'])} {word}")
    cpu = by_key.get("requests.cpu") or by_key.get("cpu")
    if cpu:
        parts.append(f"{number(cpu['used'])} of {number(cpu['hard'])} CPUs")
    memory = by_key.get("requests.memory") or by_key.get("memory")
    if memory:
        unit = 0
        while memory["hard"] >= 1024 ** (unit + 1) and unit < len(_BYTE_UNITS) - 1:
            unit += 1
        # half up, as the sidebar's Math.round: 8.25 GiB reads 8.3 in both
        used, hard = (number(math.floor(memory[k] / 1024**unit * 10 + 0.5) / 10, 1) for k in ("used", "hard"))
        parts.append(f"{used} of {hard} {_BYTE_UNITS[unit]} memory")
    if "pods" in by_key:
        parts.append(f"{number(by_key['pods']['used'])} of {number(by_key['pods']['hard'])} pods")
    if not parts:
        return ""
    return ", ".join([parts[0] + " used", *parts[1:]])
