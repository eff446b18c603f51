"""What a Ray cluster should look like: `ClusterSpec` and its `WorkerGroup`s.

Everything a user can type (magic arguments, REST bodies, Python calls) becomes a frozen
`ClusterSpec` here, and every rule about what is allowed lives here too, so the magic, the
REST API and the Python API all refuse bad input with the same message. A `SpecError` names
the field, the bad value and what is allowed.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import Any

from .errors import SpecError
from .scheduling import check_label_map, check_scheduling, parse_scheduling

BACKENDS = ("local", "kubernetes")
CLUSTER_NAME_MAX = 40  # leaves room for "-<group>-<5 chars>" inside a 63-char Pod name
GROUP_NAME_MAX = 15
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PLAIN_NUMBER = re.compile(r"^\s*[0-9]+(\.[0-9]*)?\s*$")  # "2", "4.0": no quantity parser needed
_RESOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")
_RESERVED_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}
RESOURCE_NAME_MAX = 253  # a Kubernetes qualified name's limit, and far beyond any Ray resource's
# Sizes no real node or cluster has: refused up front, so nothing downstream (Ray, the policy's
# arithmetic, Kubernetes quantities) meets an absurd or non-finite number.
MAX_NODE_CPUS = 1024
MAX_NODE_GPUS = 64
MAX_NODE_BYTES = 2**46  # 64 TiB of Ray memory or object store on one node
MAX_GROUP_NODES = 1000
MAX_RESOURCE_AMOUNT = 1e9  # a custom resource's amount per node
MAX_COST = 1e9
MAX_IDLE_S = 7 * 86400
DEFAULT_IDLE_TIMEOUT_S = 60.0  # how long a worker may stay idle before it is drained
@dataclass(frozen=True)
class WorkerGroup:
    """One kind of worker node; the autoscaler keeps between `min` and `max` of them."""

    name: str
    cpus: int = 1
    gpus: int = 0
    memory: int | None = None  # bytes of Ray "memory" per node; None: the backend's default
    object_store_memory: int | None = None  # bytes; None: the backend's default
    custom: Mapping[str, float] = field(default_factory=dict)
    min: int = 0
    max: int = 0
    cost: float | None = None  # relative price of one node; None: the planner's default
    idle_timeout_s: float | None = None  # None: the cluster's idle timeout
    # Ray node labels (`ray start --labels`) its nodes carry, e.g. {"ray.io/accelerator-type":
    # "A100"}: tasks with a matching `label_selector` are planned only onto such groups.
    labels: Mapping[str, str] = field(default_factory=dict)
    # A warm pool: idle nodes kept ready beyond demand (within max), so the next tasks start
    # without waiting for a node; drained like any other idle node only above this count.
    warm: int = 0
    # Where the user asks this group's Pods to run (Kubernetes only, and only the fields the
    # admin's policy lets users set): see SCHEDULING_FIELDS. The admin's own per-group
    # scheduling is backend configuration (c.KubernetesBackend.node_selector, ...), not this.
    scheduling: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        prefix = f"groups.{self.name}"
        _check_name("group name", self.name, GROUP_NAME_MAX)
        if self.name == "head":
            raise SpecError("group name", self.name, "any name but 'head' (the head node's group)")
        _check_int(f"{prefix}.cpus", self.cpus, low=0, high=MAX_NODE_CPUS)
        _check_int(f"{prefix}.gpus", self.gpus, low=0, high=MAX_NODE_GPUS)
        _check_int(f"{prefix}.min", self.min, low=0, high=MAX_GROUP_NODES)
        _check_int(f"{prefix}.max", self.max, low=0, high=MAX_GROUP_NODES)
        if self.max < self.min:
            raise SpecError(f"{prefix}.max", self.max, f"must be >= min ({self.min})")
        if isinstance(self.warm, bool) or not isinstance(self.warm, int) or not 0 <= self.warm <= self.max:
            raise SpecError(f"{prefix}.warm", self.warm, f"a whole number from 0 to the group's max ({self.max})")
        if self.cpus == 0 and self.gpus == 0 and not self.custom:
            raise SpecError(f"{prefix}.cpus", self.cpus,
                            "a worker needs at least 1 CPU, 1 GPU or a custom resource")
        _check_sizes(prefix, self.memory, self.object_store_memory)
        for key, amount in self.custom.items():
            if (not isinstance(key, str) or key in _RESERVED_RESOURCES or len(key) > RESOURCE_NAME_MAX
                    or not _RESOURCE_NAME.match(key)):
                raise SpecError(f"{prefix}.custom", key,
                                f"a resource name (letters, digits, _ . : / -, at most {RESOURCE_NAME_MAX} "
                                "characters) other than CPU, GPU, memory and object_store_memory")
            _check_positive(f"{prefix}.custom.{key}", amount, MAX_RESOURCE_AMOUNT)
        if self.cost is not None:
            _check_positive(f"{prefix}.cost", self.cost, MAX_COST)
        if self.idle_timeout_s is not None:
            _check_seconds(f"{prefix}.idle_timeout_s", self.idle_timeout_s)
        check_label_map(f"{prefix}.labels", self.labels)
        check_scheduling(f"{prefix}.scheduling", self.scheduling)

    @property
    def resources(self) -> dict[str, float]:
        """The Ray resources one node of this group offers (without backend defaults)."""
        res: dict[str, float] = {"CPU": self.cpus}
        if self.gpus:
            res["GPU"] = self.gpus
        if self.memory is not None:
            res["memory"] = self.memory
        res.update(self.custom)
        return res


@dataclass(frozen=True)
class HeadSpec:
    """The head node. It schedules no tasks by default so work goes to autoscaled workers."""

    cpus: int = 0
    memory: int | None = None
    object_store_memory: int | None = None

    def __post_init__(self) -> None:
        _check_int("head.cpus", self.cpus, low=0, high=MAX_NODE_CPUS)
        _check_sizes("head", self.memory, self.object_store_memory)


@dataclass(frozen=True)
class ClusterSpec:
    """A whole cluster: head, worker groups and cluster-wide limits."""

    name: str
    backend: str = "local"
    head: HeadSpec = field(default_factory=HeadSpec)
    groups: tuple[WorkerGroup, ...] = ()
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    max_workers: int | None = None
    image: str | None = None  # Kubernetes only; None: the Ray image matching the kernel
    labels: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name("name", self.name, CLUSTER_NAME_MAX)
        if self.backend not in BACKENDS:
            raise SpecError("backend", self.backend, f"one of {', '.join(BACKENDS)}")
        _check_seconds("idle_timeout_s", self.idle_timeout_s)
        if self.max_workers is not None:
            _check_int("max_workers", self.max_workers, low=0, high=MAX_GROUP_NODES * 10)
        names = [g.name for g in self.groups]
        for name in names:
            if names.count(name) > 1:
                raise SpecError("groups", name, "group names must be unique")
        for key, value in {**self.labels, **self.env}.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise SpecError("labels/env", key, "string keys and string values")

    def group(self, name: str) -> WorkerGroup:
        """The group called `name`, or a SpecError listing the groups that exist."""
        for group in self.groups:
            if group.name == name:
                return group
        raise SpecError("group", name, f"one of this cluster's groups: {self.group_names()}")

    def group_names(self) -> str:
        return ", ".join(g.name for g in self.groups) or "(none)"

    def with_group_range(self, name: str, min_nodes: int, max_nodes: int) -> ClusterSpec:
        """A copy with one group's min/max changed (validated like any other spec)."""
        self.group(name)
        groups = tuple(replace(g, min=min_nodes, max=max_nodes) if g.name == name else g
                       for g in self.groups)
        return replace(self, groups=groups)

    def idle_timeout_for(self, group: WorkerGroup) -> float:
        return self.idle_timeout_s if group.idle_timeout_s is None else group.idle_timeout_s

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["groups"] = [asdict(g) for g in self.groups]
        return data

    @classmethod
    def decode(cls, data: Mapping[str, Any]) -> ClusterSpec:
        """A spec from its own `to_dict()` (a state file, a Kubernetes annotation). Plain values
        need no REST parsing, so reading one back never imports the `kubernetes` package for
        quantity strings; fields a newer version added take their defaults, unknown ones (from
        a newer version) are ignored. Values are still checked by the dataclasses."""
        head = HeadSpec(**_known(HeadSpec, data.get("head") or {}))
        groups = tuple(WorkerGroup(**_known(WorkerGroup, g)) for g in data.get("groups") or ())
        return cls(**{**_known(cls, data), "head": head, "groups": groups})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, defaults: ClusterSpec | None = None) -> ClusterSpec:
        """Parse a JSON body. Missing keys come from `defaults`; unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise SpecError("body", type(data).__name__, "a JSON object")
        _reject_unknown("", data, {f for f in cls.__dataclass_fields__})
        base = defaults or default_spec(str(data.get("name", "ray")), str(data.get("backend", "local")))
        values: dict[str, Any] = {}
        for key in ("name", "backend", "image"):
            if key in data:
                values[key] = _string(key, data[key], optional=key == "image")
        if "idle_timeout_s" in data:
            values["idle_timeout_s"] = _number("idle_timeout_s", data["idle_timeout_s"])
        if "max_workers" in data:
            values["max_workers"] = (None if data["max_workers"] is None
                                     else _integer("max_workers", data["max_workers"]))
        for key in ("labels", "env"):
            if key in data:
                values[key] = _str_mapping(key, data[key])
        if "head" in data:
            values["head"] = _parse_head(data["head"], base.head)
        if "groups" in data:
            values["groups"] = _parse_groups(data["groups"], base.groups)
        return replace(base, **values)


def check_cluster_name(name: Any) -> None:
    """A cluster name as every front-end and URL must give it (SpecError on `name` otherwise)."""
    _check_name("name", name, CLUSTER_NAME_MAX)


def default_groups(cpu_count: int | None = None, gpu_count: int | None = None) -> tuple[WorkerGroup, ...]:
    """A `cpu` group (1 CPU per node, up to one node per core) and a `gpu` group (1 GPU per
    node, up to the GPUs this machine has: 0 on a CPU-only machine)."""
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    gpus = gpu_count if gpu_count is not None else detect_gpus()
    return (WorkerGroup("cpu", cpus=1, min=0, max=cpus),
            WorkerGroup("gpu", cpus=1, gpus=1, min=0, max=gpus, cost=None))


def default_spec(name: str, backend: str = "local") -> ClusterSpec:
    return ClusterSpec(name=name, backend=backend, groups=default_groups())


def detect_gpus() -> int:
    """NVIDIA GPUs visible here, as Ray itself counts them (0 when none or no driver)."""
    from ray._private.accelerators import NvidiaGPUAcceleratorManager  # heavy: import late

    try:
        return int(NvidiaGPUAcceleratorManager.get_current_node_num_accelerators() or 0)
    except (OSError, RuntimeError, ValueError):
        return 0


def parse_range(field_name: str, text: str) -> tuple[int, int]:
    """"MIN:MAX" (or a single "N" meaning N:N) into two ints, e.g. `--cpu-workers 0:4`."""
    parts = str(text).split(":")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise SpecError(field_name, text, "MIN:MAX with whole numbers >= 0, e.g. 0:4")
    low, high = int(parts[0]), int(parts[-1])
    if low > high:
        raise SpecError(field_name, text, f"min ({low}) must be <= max ({high})")
    return low, high


def parse_cpus(field_name: str, value: Any) -> int:
    """A whole number of CPUs from 2, "2" or a Kubernetes quantity such as "2000m"."""
    allowed = f"a whole number of CPUs from 0 to {MAX_NODE_CPUS} (Ray nodes cannot have fractional CPUs)"
    amount = _quantity(field_name, value, high=MAX_NODE_CPUS, allowed=allowed)
    if amount != amount.to_integral_value() or amount < 0:
        raise SpecError(field_name, value, allowed)
    return int(amount)


def parse_bytes(field_name: str, value: Any) -> int:
    """Bytes from 4000000000, "4G" or "4Gi" (Kubernetes quantity rules)."""
    allowed = 'a size > 0 and at most 64Ti, such as 4000000000, "4G" or "4Gi"'
    amount = _quantity(field_name, value, high=MAX_NODE_BYTES, allowed=allowed)
    if amount <= 0:
        raise SpecError(field_name, value, allowed)
    return int(amount)


# --- parsing helpers -------------------------------------------------------------------------


def _parse_head(data: Any, base: HeadSpec) -> HeadSpec:
    if not isinstance(data, Mapping):
        raise SpecError("head", data, "a JSON object")
    _reject_unknown("head.", data, set(HeadSpec.__dataclass_fields__))
    values: dict[str, Any] = {}
    if "cpus" in data:
        values["cpus"] = parse_cpus("head.cpus", data["cpus"])
    for key in ("memory", "object_store_memory"):
        if data.get(key) is not None:
            values[key] = parse_bytes(f"head.{key}", data[key])
    return replace(base, **values)


def _parse_groups(data: Any, base: tuple[WorkerGroup, ...]) -> tuple[WorkerGroup, ...]:
    """Either a list of group objects (exactly these groups; one named like a default group
    starts from its defaults), or an object of name -> changed fields, applied to the default
    groups (the shape PATCH uses, so a client can change `cpu.max` without knowing the rest)."""
    if isinstance(data, Mapping):
        return parse_group_changes(data, base, unknown_hint="; to define other groups, send a list of group objects")
    if not isinstance(data, list):
        raise SpecError("groups", data, "a JSON list of group objects, or an object of group name -> fields")
    by_name = {g.name: g for g in base}
    groups = []
    for index, item in enumerate(data):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise SpecError(f"groups[{index}]", item, 'an object with a "name" string')
        groups.append(parse_group(item, by_name.get(item["name"])))
    return tuple(groups)


def parse_group_changes(changes: Mapping[str, Any], base: tuple[WorkerGroup, ...], *,
                        unknown_hint: str = "") -> tuple[WorkerGroup, ...]:
    """`base` with each named group's fields changed ({"cpu": {"max": 8}}): the one parser of a
    change, whether it comes with a new cluster's request or a PATCH of a running one."""
    by_name = {g.name: g for g in base}
    for name, change in changes.items():
        if name not in by_name:
            raise SpecError("group", name, f"one of the groups: {', '.join(by_name) or '(none)'}{unknown_hint}")
        if not isinstance(change, Mapping):
            raise SpecError(f"groups.{name}", change, "an object of the group's fields to change")
        by_name[name] = parse_group({**change, "name": name}, by_name[name])
    return tuple(by_name.values())


def parse_group_setting(setting: str, items: Any) -> tuple[WorkerGroup, ...]:
    """A configured list of group objects (c.ClusterManager.default_groups,
    c.KubernetesBackend.default_worker_groups): a SpecError names the setting and the entry."""
    if not isinstance(items, (list, tuple)):
        raise SpecError(setting, items, "a list of group objects, e.g. [{\"name\": \"cpu\", \"max\": 4}]")
    groups = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise SpecError(f"{setting}[{index}]", item, 'a group object with a "name" string')
        if "scheduling" in item:  # it would read as the user's request, which the policy checks
            raise SpecError(f"{setting}[{index}].scheduling", item["scheduling"],
                            "nothing here: the admin places a group's Pods with c.KubernetesBackend."
                            "node_selector, tolerations, ... keyed by the group's name")
        try:
            groups.append(parse_group(item))
        except SpecError as exc:
            key = exc.field.removeprefix(f"groups.{item['name']}.")
            raise SpecError(f"{setting}[{index}].{key}", exc.value, exc.allowed) from None
    return tuple(groups)


def parse_group(data: Mapping[str, Any], base: WorkerGroup | None = None) -> WorkerGroup:
    """One group object; keys not given keep `base`'s values."""
    name = data["name"]
    prefix = f"groups.{name}."
    _reject_unknown(prefix, data, set(WorkerGroup.__dataclass_fields__))
    values: dict[str, Any] = {}
    for key in ("cpus", "gpus"):
        if key in data:
            values[key] = parse_cpus(prefix + key, data[key])
    for key in ("memory", "object_store_memory"):
        if key in data:
            values[key] = None if data[key] is None else parse_bytes(prefix + key, data[key])
    for key in ("min", "max", "warm"):
        if key in data:
            values[key] = _integer(prefix + key, data[key])
    for key in ("cost", "idle_timeout_s"):
        if key in data:
            values[key] = None if data[key] is None else _number(prefix + key, data[key])
    if "custom" in data:
        custom = data["custom"]
        if not isinstance(custom, Mapping):
            raise SpecError(prefix + "custom", custom, "an object of resource name -> amount")
        values["custom"] = {str(k): _number(f"{prefix}custom.{k}", v) for k, v in custom.items()}
    if "labels" in data:
        values["labels"] = _str_mapping(prefix + "labels", data["labels"])
    if "scheduling" in data:
        values["scheduling"] = parse_scheduling(prefix + "scheduling", data["scheduling"])
    start = base or WorkerGroup(name=name, cpus=1, max=values.get("max", values.get("min", 0)))
    return replace(start, name=name, **values)


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k in cls.__dataclass_fields__}


def _reject_unknown(prefix: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            raise SpecError(f"{prefix}{key}", data[key], f"known fields are {', '.join(sorted(allowed))}")


def _quantity(field_name: str, value: Any, *, high: int, allowed: str) -> Decimal:
    """A Kubernetes quantity (or a JSON number) as a Decimal no larger than `high`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SpecError(field_name, value, "a number or a Kubernetes quantity string")
    try:
        if isinstance(value, str) and not _PLAIN_NUMBER.match(value):
            # Imported here: the kubernetes package takes ~2 s to import, and only quantity
            # strings with a suffix ("500m", "4Gi") need its parser.
            from kubernetes.utils import parse_quantity

            amount = Decimal(parse_quantity(value))
        else:
            amount = Decimal(value)
        too_large = not amount.is_finite() or abs(amount) > high
    except (ValueError, TypeError, ArithmeticError):  # InvalidOperation and Overflow too
        raise SpecError(field_name, value, 'a number or a Kubernetes quantity such as "2", "500m", "4Gi"') from None
    if too_large:
        raise SpecError(field_name, value, allowed)
    return amount


def _integer(field_name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field_name, value, "a whole number")
    return value


def _number(field_name: str, value: Any) -> float:
    """A finite JSON number as a float (huge ints, inf and NaN are refused, not overflowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(field_name, value, "a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SpecError(field_name, value, "a finite number")
    return number


def _string(field_name: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise SpecError(field_name, value, "a string")
    return value


def _str_mapping(field_name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SpecError(field_name, value, "an object of string -> string")
    return dict(value)


def _check_name(field_name: str, value: Any, max_len: int) -> None:
    if not isinstance(value, str) or not _DNS_LABEL.match(value) or len(value) > max_len:
        raise SpecError(field_name, value,
                        f"lowercase letters, digits and '-', starting and ending with a letter "
                        f"or digit, at most {max_len} characters")


def _check_int(field_name: str, value: Any, *, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(field_name, value, f"a whole number from {low} to {high}")


def _check_positive(field_name: str, value: Any, high: float) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not 0 < value <= high):
        raise SpecError(field_name, value, f"a number > 0 and at most {high:g}")


def _check_sizes(prefix: str, memory: int | None, object_store_memory: int | None) -> None:
    for key, value in (("memory", memory), ("object_store_memory", object_store_memory)):
        if value is not None:
            _check_int(f"{prefix}.{key}", value, low=1, high=MAX_NODE_BYTES)


def _check_seconds(field_name: str, value: Any) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not 0 <= value <= MAX_IDLE_S):
        raise SpecError(field_name, value, f"seconds between 0 and {MAX_IDLE_S} (one week)")
