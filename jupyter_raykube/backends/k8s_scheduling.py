"""Where one group's Pods run: the admin's per-group settings (c.KubernetesBackend.node_selector,
tolerations, affinity, priority/runtime class, accelerator and market types), what they imply
(a GPU pool's taint, a spot pool's node label, an accelerator's node label, a TPU's device
request) and the user's own request (`WorkerGroup.scheduling`, only the fields the policy
opened to users), merged in that order into one `Placement`.

Pure: settings and a group in, a frozen value out, so the golden tests read it directly and
the backend builds every Pod of a group from the same answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import SpecError
from ..spec import WorkerGroup
from . import k8s_objects as objects
from .base import HEAD_GROUP

if TYPE_CHECKING:
    from .k8s_settings import KubernetesSettings


@dataclass(frozen=True)
class Placement:
    """Everything about where a node's Pod lands and what devices it asks for."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()  # Kubernetes JSON spelling
    affinity: Mapping[str, Any] | None = None
    priority_class_name: str | None = None
    runtime_class_name: str | None = None
    accelerator_type: str = ""
    market_type: str = ""
    devices: Mapping[str, int] = field(default_factory=dict)  # extended resource -> count (TPU, Neuron)

    @property
    def ray_labels(self) -> dict[str, str]:
        """What the nodes run on, as Ray node labels (ray.io/accelerator-type, ray.io/market-type)."""
        labels = {objects.RAY_ACCELERATOR_LABEL: self.accelerator_type, objects.RAY_MARKET_LABEL: self.market_type}
        return {k: v for k, v in labels.items() if v}


def for_group(per_group: Mapping[str, Any], group: str) -> Any:
    """A per-group setting: the group's own entry, else "*"."""
    return per_group.get(group, per_group.get("*"))


def gpu_resource(settings: KubernetesSettings, group: str) -> str:
    return for_group(settings.gpu_resource, group) or objects.DEFAULT_GPU_RESOURCE


def placement(settings: KubernetesSettings, group: WorkerGroup | None) -> Placement:
    """The head's placement (`group` None) or a worker group's."""
    name = group.name if group is not None else HEAD_GROUP
    request: Mapping[str, Any] = group.scheduling if group is not None else {}
    accelerator = request.get("accelerator_type") or (for_group(settings.accelerator_type, name) or "" if group else "")
    market = request.get("market_type") or (for_group(settings.market_type, name) or "" if group else "")
    implied = [_market_scheduling(settings, market), _accelerator_scheduling(settings, accelerator)]
    devices = _devices(settings, group) if group is not None else {}
    tolerations = [*([objects.gpu_toleration(gpu_resource(settings, name))] if group is not None and group.gpus else []),
                   *(objects.gpu_toleration(resource) for resource in devices),
                   *settings.tolerations.get("*", []), *settings.tolerations.get(name, []),
                   *(t for extra in implied for t in extra.get("tolerations", [])),
                   *request.get("tolerations", [])]
    node_selector = {**settings.node_selector.get("*", {}), **settings.node_selector.get(name, {}),
                     **{k: v for extra in implied for k, v in extra.get("node_selector", {}).items()},
                     **request.get("node_selector", {})}
    return Placement(
        node_selector=node_selector, tolerations=tuple(tolerations),
        affinity=request.get("affinity") or for_group(settings.affinity, name) or None,
        priority_class_name=request.get("priority_class_name") or for_group(settings.priority_class_name, name) or None,
        runtime_class_name=request.get("runtime_class_name") or for_group(settings.runtime_class_name, name) or None,
        accelerator_type=accelerator, market_type=market, devices=devices)


def _market_scheduling(settings: KubernetesSettings, market: str) -> Mapping[str, Any]:
    return settings.market_scheduling.get(market, {}) if market else {}


def _accelerator_scheduling(settings: KubernetesSettings, accelerator: str) -> Mapping[str, Any]:
    """The admin's entry for this accelerator type, else a node selector on
    `accelerator_node_label` with the type in lowercase (Karpenter's instance-gpu-name: a100, l4)."""
    if not accelerator:
        return {}
    if accelerator in settings.accelerator_scheduling:
        return settings.accelerator_scheduling[accelerator]
    label = settings.accelerator_node_label
    return {"node_selector": {label: accelerator.lower()}} if label else {}


def _devices(settings: KubernetesSettings, group: WorkerGroup) -> dict[str, int]:
    """Device requests for the group's custom Ray resources that are accelerators Ray counts
    itself (TPU, neuron_cores): Kubernetes grants devices only in whole units."""
    devices: dict[str, int] = {}
    for resource, amount in group.custom.items():
        device = settings.device_resources.get(resource)
        if device is None:
            continue
        if amount != int(amount):
            raise SpecError(f"groups.{group.name}.custom.{resource}", amount,
                            f"a whole number: {resource} is requested from Kubernetes as {device}, "
                            f"which is granted in whole devices")
        devices[device] = int(amount)
    return devices
