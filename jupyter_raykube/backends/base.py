"""The contract every backend keeps: start a head, add and remove worker nodes, list what
runs, find clusters again, delete everything.

Backends know nothing about Ray's scheduling; they place processes or Pods. The manager and
the autoscaler decide *what* runs, a backend only makes it so. All methods are coroutines:
a backend runs blocking work (process spawns, Kubernetes calls) through `anyio.to_thread`
so the Jupyter server's event loop never blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from abc import ABCMeta, abstractmethod

from traitlets import MetaHasTraits
from traitlets.config import LoggingConfigurable

from ..errors import BackendError, ClusterExistsError, ClusterNotFound, SpecError
from ..spec import ClusterSpec, WorkerGroup, default_groups

__all__ = ["HEAD_GROUP", "HEAD_RAY_ENV", "Backend", "BackendError", "BackendNode", "ClusterExistsError", "ClusterHandle",
           "ClusterNotFound", "Quota", "QuotaUse"]

HEAD_GROUP = "head"
# Ray settings of every backend's head. The GCS pulls each raylet's pending demand once a second
# by default, so a new task's demand reached our autoscaler ~0.9 s after submit (bench/README.md,
# the scale-up timeline); pulled every 100 ms it is there within a round, for one small RPC per
# raylet each time. No "(scheduler +Xs)" lines in drivers: ours are the "(raykube)" lines.
HEAD_RAY_ENV = {"RAY_gcs_pull_resource_loads_period_milliseconds": "100", "RAY_SCHEDULER_EVENTS": "0"}
NodePhase = Literal["pending", "running", "exited"]


@dataclass(frozen=True)
class BackendNode:
    """One node as the backend sees it: a process or a Pod, not (yet) a Ray node.

    `name` is also the node's `RAY_CLOUD_INSTANCE_ID`, which is how a Ray node found in the
    GCS is matched back to the process or Pod that runs it.
    """

    name: str
    group: str
    phase: NodePhase
    created_at: float  # epoch seconds
    message: str = ""  # why it is pending or how it exited
    # The platform is adding a machine for it (a node pool scaling up from zero): not late to
    # join Ray yet; its join timeout starts once it has somewhere to run.
    provisioning: bool = False
    step: str = ""  # the phase of its start in words ("pulling image"), for events; "" when not starting
    # It cannot start (no node will come, its image cannot be pulled, it crashed): the
    # reconciler removes it and backs its group off, with `message` as the reason.
    failed: bool = False

    @property
    @abstractmethod
    def is_head(self) -> bool:
        return self.group == HEAD_GROUP


@dataclass(frozen=True)
class ClusterHandle:
    """Everything needed to reach a running cluster again, from any process."""

    name: str
    backend: str
    spec: ClusterSpec
    address: str  # GCS "host:port", for ray.init(address=...)
    dashboard_address: str  # "host:port" of the Ray dashboard (HTTP)
    client_address: str  # "host:port" of the Ray Client server (ray://)
    owner: str  # the Jupyter/Hub user
    created_at: float
    details: Mapping[str, Any] = field(default_factory=dict)  # backend-private bookkeeping


@dataclass(frozen=True)
class QuotaUse:
    """One resource of a namespace quota: what is in use and the most allowed, in base units
    (cores, bytes, devices, objects), as the apiserver counts them."""

    resource: str  # the quota's key: "requests.cpu", "requests.nvidia.com/gpu", "pods"
    used: float
    hard: float


@dataclass(frozen=True)
class Quota:
    """The limit the platform enforces on everything the user runs (the JupyterHub hook's
    ResourceQuota), whatever the user's own configuration says."""

    name: str
    namespace: str
    resources: tuple[QuotaUse, ...]


class _AbstractTraitsMeta(MetaHasTraits, ABCMeta):
    """Lets a traitlets-configurable class declare abstract methods."""


class Backend(LoggingConfigurable, metaclass=_AbstractTraitsMeta):
    """Base class; subclasses are chosen by the `backend_class` trait and configured by traitlets."""

    name: ClassVar[str] = ""
    # Drivers in notebooks reach this backend's clusters through Ray Client (a notebook Pod is
    # not a Ray node), so a cluster is ready for them only once its Ray Client server listens.
    drivers_use_ray_client: ClassVar[bool] = False

    def default_groups(self) -> tuple[WorkerGroup, ...]:
        """Worker groups of a new cluster when the administrator configured none: sized for
        the machines this backend starts nodes on (here: this machine's cores and GPUs)."""
        return default_groups()

    def launch_concurrency(self) -> int:
        """How many nodes may start at once without starving each other (the manager's
        default for `max_launch_in_flight`)."""
        return 8

    @abstractmethod
    def node_resources(self, spec: ClusterSpec, group: WorkerGroup) -> dict[str, float]:
        """The Ray resources a node of `group` will advertise, backend defaults included."""

    def node_labels(self, spec: ClusterSpec, group: WorkerGroup) -> dict[str, str]:
        """The Ray node labels a node of `group` will carry (what tasks' label_selector match)."""
        return dict(group.labels)

    async def check_spec(self, spec: ClusterSpec) -> None:
        """Refuse (SpecError) what this backend cannot build, before anything is created. Nodes
        of this backend are processes here: there is nowhere to schedule them."""
        for group in spec.groups:
            if group.scheduling:
                raise SpecError(f"groups.{group.name}.scheduling", dict(group.scheduling),
                                f"nothing on the {self.name} backend (its nodes run on this machine); "
                                f"scheduling applies to the kubernetes backend")

    @abstractmethod
    async def create_cluster(self, spec: ClusterSpec, *, owner: str, token: str,
                             owner_pid: int | None = None) -> ClusterHandle:
        """Start the head and record the cluster so `discover()` finds it. On failure, leave nothing.

        `owner_pid`: the cluster must not outlive that process (the local backend reaps it at
        the next `discover()`; other backends tie the cluster to their own owner object)."""

    @abstractmethod
    async def create_worker(self, handle: ClusterHandle, group: WorkerGroup) -> BackendNode:
        """Start one worker node of `group`; returns as soon as it is launched (not joined)."""

    @abstractmethod
    async def remove_node(self, handle: ClusterHandle, node_name: str) -> None:
        """Stop one node. Callers drain it through Ray first; this only ends the process/Pod."""

    @abstractmethod
    async def list_nodes(self, handle: ClusterHandle) -> list[BackendNode]:
        """Every node of the cluster, the head included, with its phase."""

    @abstractmethod
    async def save_spec(self, handle: ClusterHandle, spec: ClusterSpec) -> ClusterHandle:
        """Write the cluster's desired state (its group ranges after a scale) where every
        process and a restarted server read it back through `discover()`; returns the handle
        carrying it. The manager calls this before it acts on a change."""

    @abstractmethod
    async def delete_cluster(self, handle: ClusterHandle) -> None:
        """Stop every node and forget the cluster. Safe to call twice."""

    @abstractmethod
    async def discover(self) -> list[ClusterHandle]:
        """Clusters that exist now (found by state files or labels), stale ones cleaned up."""

    @abstractmethod
    async def logs(self, handle: ClusterHandle, node_name: str, *, tail: int = 200) -> str:
        """The last `tail` lines a node printed, for error messages and the UI."""

    async def quota(self) -> Quota | None:
        """The platform's quota on this user's nodes, as last read (cheap enough to ask every
        autoscaler round); None where there is none (local processes)."""
        return None

    async def close(self) -> None:
        """Release what the backend holds (the Kubernetes Pod watch); clusters keep running."""
