"""Ray clusters as Kubernetes Pods: a head Pod + Service + token Secret, one Pod per worker node.

The objects come from the pure builders in `k8s_objects.py`; this module resolves
configuration (traits) into their inputs, talks to the API server, and reads Pod state from a
watch-fed cache (`k8s_watch.py`). It uses the official synchronous `kubernetes` client; every
call runs in a worker thread (`anyio.to_thread`) so the Jupyter server's loop never blocks.
Calls are retried with exponential backoff while the API server is unavailable (5xx, 429 with
its `Retry-After`, timeouts, refused connections), up to `retry_timeout`. A Pod's name is
chosen before its first create attempt, so a create retried after a lost response finds its
own Pod (409 AlreadyExists with our labels) instead of making a second one.

Every object is labelled (`app.kubernetes.io/managed-by=jupyter-raykube`, `raykube.io/cluster`,
`raykube.io/cluster-id`, `raykube.io/owner`, `raykube.io/group`, `raykube.io/node-type`), which
is how `discover()` finds clusters again from any process, and how `delete_cluster()` removes
them. When the Jupyter server runs in a Pod, every object also gets an ownerReference to that
Pod, so Kubernetes' garbage collector deletes the cluster together with the server.
"""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Mapping
from dataclasses import replace
from importlib.metadata import version as package_version
from typing import Any, TypeVar

import anyio
from kubernetes.client import ApiClient, CoreV1Api, V1Affinity, V1Pod, V1Toleration, V1Volume, V1VolumeMount
from kubernetes.client.exceptions import ApiException

from .. import __version__
from ..errors import ClusterExistsError
from ..spec import ClusterSpec, WorkerGroup
from ..versions import check_ray_versions
from . import k8s_objects as objects
from . import k8s_scheduling as scheduling
from .base import HEAD_RAY_ENV, BackendError, BackendNode, ClusterHandle, ClusterNotFound, Quota
from .k8s_dry_run import check_groups_admitted
from .k8s_api import Call, KubeCalls, NameTaken, PermissionDenied, status_message
from .k8s_events import PodEvents
from .k8s_network import ClusterNetworkPolicies
from .k8s_quota import NamespaceQuota
from .k8s_settings import KubernetesSettings
from .k8s_objects import (
    LABEL_CLUSTER,
    LABEL_CLUSTER_ID,
    LABEL_GROUP,
    LABEL_MANAGED_BY,
    LABEL_NODE_TYPE,
    LABEL_OWNER,
    MANAGED_BY,
    ClusterMeta,
    NodeSize,
    PodSettings,
    Ports,
)
from .k8s_phases import ScaleUpEvents, start_phase
from .k8s_status import age_of, belongs, creation_time, labels_of, pod_state, token_of
from .k8s_watch import PodReflector

_ORPHAN_GRACE_S = 60.0  # objects without a head this young may still be being created
T = TypeVar("T")


class KubernetesBackend(KubernetesSettings):
    """Ray nodes as Pods in one namespace, found again through their labels. What it is
    configured with (`c.KubernetesBackend.*`) and how those defaults are found in the
    environment live in `KubernetesSettings` (k8s_settings.py)."""

    name = "kubernetes"
    drivers_use_ray_client = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_client = ApiClient(self._configuration())
        self.api_client.user_agent = f"jupyter-raykube/{__version__}"  # names us in audit logs
        self.core = CoreV1Api(self.api_client)
        self.api = KubeCalls(self)  # retried, idempotent, explained calls in self.namespace
        self._reflector: PodReflector | None = None
        self._owner_refs: tuple[Any, ...] | None = None
        self.events = PodEvents(self)
        self.server_pod_labels: dict[str, str] = {}  # of owner_pod_name, read with the owner references
        self.network_policies = ClusterNetworkPolicies(self)
        self.namespace_quota = NamespaceQuota(self)  # the hub hook's ResourceQuota, for display

    async def close(self) -> None:
        """Stop watching Pods (a later call starts a new watch)."""
        reflector, self._reflector = self._reflector, None
        if reflector is not None:
            await anyio.to_thread.run_sync(reflector.stop)

    # --- sizes -------------------------------------------------------------------------------

    def node_resources(self, spec: ClusterSpec, group: WorkerGroup) -> dict[str, float]:
        """What Ray sees on a worker: the group's CPUs/GPUs/custom resources and its `memory`
        (the container's memory limit less the object store, which lives in /dev/shm)."""
        resources = group.resources
        accelerator = scheduling.placement(self, group).accelerator_type
        if accelerator:
            resources[f"accelerator_type:{accelerator}"] = 1.0  # what Ray's accelerator_type= asks for
        resources.setdefault("memory", self.worker_memory)
        return resources

    def node_labels(self, spec: ClusterSpec, group: WorkerGroup) -> dict[str, str]:
        return {**group.labels, **scheduling.placement(self, group).ray_labels}

    def worker_size(self, spec: ClusterSpec, group: WorkerGroup) -> NodeSize:
        custom = {k: v for k, v in self.node_resources(spec, group).items() if k not in ("CPU", "GPU", "memory")}
        return NodeSize(cpus=group.cpus, gpus=group.gpus, memory=group.memory or self.worker_memory,
                        object_store_memory=group.object_store_memory or self.worker_object_store_memory,
                        custom=custom, gpu_resource=scheduling.gpu_resource(self, group.name),
                        devices=scheduling.placement(self, group).devices)

    def _head_size(self, spec: ClusterSpec) -> NodeSize:
        return NodeSize(cpus=spec.head.cpus, memory=spec.head.memory or self.head_memory,
                        object_store_memory=spec.head.object_store_memory or self.head_object_store_memory,
                        min_container_cpus=self.head_container_cpus)

    def _ports(self) -> Ports:
        return Ports(gcs=self.gcs_port, dashboard=self.dashboard_port, client=self.client_port,
                     dashboard_agent=self.dashboard_agent_port, metrics=self.metrics_port)

    def pod_settings(self, spec: ClusterSpec, group: WorkerGroup | None) -> PodSettings:
        """The Pod settings of the head (`group` None) or of a worker group."""
        place = scheduling.placement(self, group)
        image = spec.image or (self.gpu_image if group is not None and group.gpus else self.image)
        probes = self.health_probes == "all" or (self.health_probes == "head" and group is None)
        return PodSettings(
            image=image, ray_command=self.ray_command, image_pull_policy=self.image_pull_policy,
            ports=self._ports(), env={**(HEAD_RAY_ENV if group is None else {}), **self.extra_env},
            node_selector=place.node_selector, tolerations=objects.to_models(V1Toleration, place.tolerations),
            image_pull_secrets=tuple(self.image_pull_secrets),
            service_account_name=self.service_account_name or None,
            volumes=objects.to_models(V1Volume, self.volumes),
            volume_mounts=objects.to_models(V1VolumeMount, self.volume_mounts),
            probes=probes, termination_grace_period_s=self.termination_grace_period_s,
            ray_labels=place.ray_labels if group is not None else {},
            affinity=V1Affinity.from_dict(dict(place.affinity)) if place.affinity else None,
            priority_class_name=place.priority_class_name, runtime_class_name=place.runtime_class_name)

    async def check_spec(self, spec: ClusterSpec) -> None:
        """Every group's placement resolves (whole TPU/Neuron devices), and the API server would
        admit the Pods of groups whose scheduling the user chose (k8s_dry_run.py)."""
        for group in spec.groups:
            scheduling.placement(self, group)
        if any(group.scheduling for group in spec.groups):
            await check_groups_admitted(self, spec)

    def dry_run_meta(self, spec: ClusterSpec) -> ClusterMeta:
        return self._meta(spec.name, "dry-run", self.owner or "dry-run", spec.labels, ())

    def _meta(self, name: str, cluster_id: str, owner: str, labels: Mapping[str, str],
              owner_refs: tuple[Any, ...]) -> ClusterMeta:
        return ClusterMeta(name=name, namespace=self.namespace, cluster_id=cluster_id, owner=owner,
                           labels=dict(labels), owner_references=owner_refs,
                           cluster_domain=self.cluster_domain)

    def _meta_of(self, handle: ClusterHandle) -> ClusterMeta:
        refs = tuple(objects.owner_reference(name, uid) for name, uid in handle.details["owner_refs"])
        return self._meta(handle.name, handle.details["cluster_id"], handle.owner, handle.spec.labels, refs)

    # --- lifecycle ---------------------------------------------------------------------------

    async def create_cluster(self, spec: ClusterSpec, *, owner: str, token: str,
                             owner_pid: int | None = None) -> ClusterHandle:
        """Create the token Secret, the head Service and the head Pod (in that order). With
        `address_type="pod-ip"`, return once the head Pod has an IP. `owner_pid` is not used:
        the cluster's lifetime is tied to `owner_pod_name` instead."""
        head_settings = self.pod_settings(spec, None)
        for image in dict.fromkeys([head_settings.image, *(self.pod_settings(spec, g).image for g in spec.groups)]):
            check_ray_versions(image, ray_version=package_version("ray"),
                               who="the Jupyter server (which reads and drains the cluster)")
        await self._cache()
        meta = self._meta(spec.name, secrets.token_hex(4), owner, spec.labels, await self._owner_references())
        secret = objects.make_token_secret(meta, token)
        service = objects.make_head_service(meta, self._ports())
        head = objects.make_head_pod(meta, spec, self._head_size(spec), head_settings)
        try:
            await self.api.create(Call("create", "secrets", meta.secret_name), self.core.create_namespaced_secret,
                               self.core.read_namespaced_secret, secret)
            await self.api.create(Call("create", "services", meta.service_name), self.core.create_namespaced_service,
                               self.core.read_namespaced_service, service)
            await self.network_policies.create(meta)  # before any Pod of the cluster exists
            head_pod = await self.api.create(Call("create", "pods", meta.head_pod_name), self.core.create_namespaced_pod,
                                          self.core.read_namespaced_pod, head)
            (await self._cache()).upsert(head_pod)
            if self.address_type == "pod-ip":
                head_pod = await self._wait_for_pod_ip(meta.head_pod_name)
        except NameTaken:
            await self._delete_objects(meta.name, meta.cluster_id, wait=False)
            raise ClusterExistsError(f"a Ray cluster named {spec.name!r} already exists in namespace "
                                f"{self.namespace}") from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._delete_objects(meta.name, meta.cluster_id, wait=False)
            raise
        return self._handle(meta, spec, head_pod, token)

    async def create_worker(self, handle: ClusterHandle, group: WorkerGroup) -> BackendNode:
        """Create one worker Pod. Its name is drawn before the first attempt, so retries of a
        create whose response was lost find the Pod instead of making another one."""
        cache = await self._cache()
        meta = self._meta_of(handle)
        size = self.worker_size(handle.spec, group)
        settings = replace(self.pod_settings(handle.spec, group), ports=handle.details["ports"])
        for _ in range(3):
            name = objects.worker_pod_name(handle.name, group.name, _suffix())
            pod = objects.make_worker_pod(meta, handle.spec, group.name, name, size, settings)
            try:
                created = await self.api.create(Call("create", "pods", name), self.core.create_namespaced_pod,
                                             self.core.read_namespaced_pod, pod)
            except NameTaken:
                continue  # someone else's Pod has that name: draw another
            cache.upsert(created)
            return BackendNode(name=name, group=group.name, phase="pending", created_at=creation_time(created))
        raise BackendError(f"could not find a free Pod name for a {group.name} worker of {handle.name}")

    async def remove_node(self, handle: ClusterHandle, node_name: str) -> None:
        deleted = await self.api.delete(Call("delete", "pods", node_name), self.core.delete_namespaced_pod)
        if isinstance(deleted, V1Pod):
            (await self._cache()).upsert(deleted)

    async def list_nodes(self, handle: ClusterHandle) -> list[BackendNode]:
        """From the watch-fed cache: no API call unless a Pending Pod needs its Events read. Each
        node says which phase of its start it is in and whether it failed (k8s_phases.py)."""
        cache = await self._cache()
        pods = [p for p in cache.pods() if belongs(p, handle.name, handle.details["cluster_id"])]
        if not any(labels_of(p).get(LABEL_NODE_TYPE) == objects.HEAD for p in pods):
            raise ClusterNotFound(f"no Ray cluster named {handle.name!r} in namespace {self.namespace} "
                                  f"(its head Pod is gone)")
        live = [(p, pod_state(p)[0]) for p in pods if p.metadata.deletion_timestamp is None]
        events: dict[str, ScaleUpEvents] = {}

        async def read_events(pod: V1Pod) -> None:
            events[pod.metadata.name] = await self.events.of(pod)

        async with anyio.create_task_group() as tg:  # a burst of Pending Pods: their reads at once
            for pod, phase in live:
                if phase == "pending":
                    tg.start_soon(read_events, pod)
        nodes = []
        now = time.time()
        for pod, phase in live:
            group = labels_of(pod).get(LABEL_GROUP, "")
            start = start_phase(pod, now, events.get(pod.metadata.name, ScaleUpEvents()),
                                self.start_timeouts_for(group))
            nodes.append(BackendNode(name=pod.metadata.name, group=group, phase=phase,
                                     created_at=creation_time(pod), message=start.message, step=start.step,
                                     provisioning=start.provisioning, failed=start.failed))
        return nodes

    async def quota(self) -> Quota | None:
        """The namespace's ResourceQuota `raykube` (the JupyterHub hook's), read at most every
        few seconds for all clusters together (k8s_quota.py)."""
        return await self.namespace_quota.get()

    async def save_spec(self, handle: ClusterHandle, spec: ClusterSpec) -> ClusterHandle:
        """As the head Pod's spec annotation, which every server of this user reads back."""
        head = handle.details["head_pod"]
        body = {"metadata": {"annotations": {objects.ANNOTATION_SPEC: objects.spec_annotation(spec)}}}
        try:
            await self.api.call(Call("patch", "pods", head), self.core.patch_namespaced_pod, head, self.namespace, body)
        except ApiException as exc:
            if exc.status == 404:
                raise ClusterNotFound(f"no Ray cluster named {handle.name!r} in namespace {self.namespace}") from None
            raise self.api.failed(Call("patch", "pods", head), exc) from exc
        return replace(handle, spec=spec)

    async def delete_cluster(self, handle: ClusterHandle) -> None:
        """Delete every object of the cluster (workers first), then wait for its Pods to go."""
        await self._delete_objects(handle.name, handle.details["cluster_id"], wait=True)

    async def discover(self) -> list[ClusterHandle]:
        """Clusters of `owner` in the namespace, found by their head Pods' labels. A cluster
        whose head Pod has exited is deleted; so are leftovers of a cluster whose head Pod is
        gone (a server that died while creating or deleting one)."""
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        if self.owner:
            selector += f",{LABEL_OWNER}={objects.label_value(self.owner)}"
        pods = await self.api.list(Call("list", "pods"), self.core.list_namespaced_pod, selector)
        service_list = await self.api.list(Call("list", "services"), self.core.list_namespaced_service, selector)
        heads = {(labels_of(p)[LABEL_CLUSTER], labels_of(p)[LABEL_CLUSTER_ID]): p for p in pods
                 if labels_of(p).get(LABEL_NODE_TYPE) == objects.HEAD and p.metadata.deletion_timestamp is None}
        found = []
        for (name, cluster_id), head in sorted(heads.items()):
            phase, message = pod_state(head)
            secret = await self._token_secret(name, cluster_id)
            token = token_of(secret) if secret is not None else None
            reason = (f"its head Pod has exited ({message or head.status.phase})" if phase == "exited"
                      else "its token Secret is gone" if not token and age_of(head) > _ORPHAN_GRACE_S else "")
            if reason:
                self.log.info("Deleting Ray cluster %s in %s: %s", name, self.namespace, reason)
                await self._delete_objects(name, cluster_id, wait=False)
                continue
            if token is None or (self.address_type == "pod-ip" and not head.status.pod_ip):
                continue  # still being created by another process
            handle = self._handle_from_head(head, token)
            if handle is not None:
                found.append(handle)
        leftovers = {(labels_of(o)[LABEL_CLUSTER], labels_of(o)[LABEL_CLUSTER_ID])
                     for o in [*pods, *service_list]
                     if LABEL_CLUSTER_ID in labels_of(o) and age_of(o) > _ORPHAN_GRACE_S} - set(heads)
        for name, cluster_id in sorted(leftovers):
            self.log.info("Deleting leftovers of Ray cluster %s in %s (no head Pod)", name, self.namespace)
            await self._delete_objects(name, cluster_id, wait=False)
        return found

    async def logs(self, handle: ClusterHandle, node_name: str, *, tail: int = 200) -> str:
        call = Call("get", "pods/log", node_name)
        try:
            return await self.api.call(call, self.core.read_namespaced_pod_log, node_name, self.namespace,
                                   tail_lines=tail)
        except ApiException as exc:
            if exc.status == 404:
                return ""
            if exc.status == 400:  # the container has not started: say why
                return status_message(exc)
            raise self.api.failed(call, exc) from exc

    # --- handles -----------------------------------------------------------------------------

    def _handle(self, meta: ClusterMeta, spec: ClusterSpec, head: V1Pod, token: str) -> ClusterHandle:
        """The ports come from the head Pod itself: another server may have made the cluster."""
        host = meta.gcs_host if self.address_type == "service" else head.status.pod_ip
        ports = _pod_ports(head, self._ports())
        details = {"cluster_id": meta.cluster_id, "namespace": meta.namespace, "token": token,
                   "service": meta.service_name, "head_pod": meta.head_pod_name, "ports": ports,
                   "image": head.spec.containers[0].image,  # for check_ray_versions() before connecting
                   "owner_refs": [(r.name, r.uid) for r in meta.owner_references]}
        return ClusterHandle(name=meta.name, backend=self.name, spec=spec, address=f"{host}:{ports.gcs}",
                             dashboard_address=f"{host}:{ports.dashboard}",
                             client_address=f"{host}:{ports.client}", owner=meta.owner,
                             created_at=creation_time(head), details=details)

    def _handle_from_head(self, head: V1Pod, token: str) -> ClusterHandle | None:
        """Rebuild a handle from a head Pod (its labels, annotations and owner references)."""
        labels = labels_of(head)
        annotations = head.metadata.annotations or {}
        name = labels[LABEL_CLUSTER]
        try:
            spec = ClusterSpec.decode(json.loads(annotations[objects.ANNOTATION_SPEC]))
        except (KeyError, ValueError, TypeError) as exc:
            self.log.warning("Ignoring Ray cluster %s in %s: unreadable spec annotation (%s)",
                             name, self.namespace, exc)
            return None
        refs = tuple(objects.owner_reference(r.name, r.uid) for r in head.metadata.owner_references or ()
                     if r.kind == "Pod")
        owner = annotations.get(objects.ANNOTATION_OWNER, labels.get(LABEL_OWNER, ""))
        meta = self._meta(name, labels[LABEL_CLUSTER_ID], owner, spec.labels, refs)
        return self._handle(meta, spec, head, token)

    async def _owner_references(self) -> tuple[Any, ...]:
        """A reference to the server's Pod (read once, to check it exists in our namespace: a
        reference to a Pod elsewhere would make the garbage collector delete our objects)."""
        if self._owner_refs is None:
            if not self.owner_pod_name:
                self._owner_refs = ()
            else:
                call = Call("get", "pods", self.owner_pod_name)
                try:
                    pod = await self.api.call(call, self.core.read_namespaced_pod, self.owner_pod_name, self.namespace)
                except ApiException as exc:
                    if exc.status == 404:
                        raise BackendError(
                            f"owner Pod {self.owner_pod_name!r} not found in namespace {self.namespace}: "
                            f"owner_pod_name must name this server's Pod, in the clusters' namespace") from exc
                    raise self.api.failed(call, exc) from exc
                if self.owner_pod_uid and pod.metadata.uid != self.owner_pod_uid:
                    raise BackendError(f"owner Pod {self.owner_pod_name!r} has UID {pod.metadata.uid}, "
                                       f"not {self.owner_pod_uid} (owner_pod_uid)")
                self._owner_refs = (objects.owner_reference(self.owner_pod_name, pod.metadata.uid),)
                self.server_pod_labels = dict(pod.metadata.labels or {})
        return self._owner_refs

    # --- the Pod cache -----------------------------------------------------------------------

    async def _cache(self) -> PodReflector:
        """The running reflector, after its first list (started on first use)."""
        if self._reflector is None or not self._reflector.running:
            self._reflector = PodReflector(
                self.core, self.namespace, f"{LABEL_MANAGED_BY}={MANAGED_BY}",
                request_timeout_s=self.request_timeout, log=self.log,
                describe_error=lambda exc, verb: self.api.describe(Call(verb, "pods"), exc)).start()
        reflector = self._reflector
        with anyio.move_on_after(self.retry_timeout):
            while not reflector.first_load.is_set() and not reflector.refused:
                await anyio.sleep(0.05)
        if not reflector.first_load.is_set():
            kind = PermissionDenied if reflector.refused else BackendError
            raise kind(f"could not list Pods in namespace {self.namespace}: {reflector.last_error}")
        return reflector

    async def _wait_for_pod_ip(self, name: str) -> V1Pod:
        cache = await self._cache()
        while True:
            pod = cache.get(name)
            if pod is None or pod.metadata.deletion_timestamp is not None:
                raise BackendError(f"Pod {name} was deleted while starting")
            phase, message = pod_state(pod)
            if phase == "exited":
                raise BackendError(f"Pod {name} exited while starting: {message}")
            if pod.status is not None and pod.status.pod_ip:
                return pod
            await anyio.sleep(0.1)

    async def _delete_objects(self, name: str, cluster_id: str, *, wait: bool) -> None:
        """Delete the Pods (workers, then the head), Service and Secret of one cluster."""
        selector = f"{LABEL_CLUSTER}={name},{LABEL_CLUSTER_ID}={cluster_id}"
        pods = await self.api.list(Call("list", "pods"), self.core.list_namespaced_pod, selector)
        workers = [p for p in pods if labels_of(p).get(LABEL_NODE_TYPE) != objects.HEAD]
        heads = [p for p in pods if labels_of(p).get(LABEL_NODE_TYPE) == objects.HEAD]
        cache = self._reflector
        for batch in (workers, heads):  # workers first: they leave through the head's GCS
            async with anyio.create_task_group() as tg:
                for pod in batch:
                    tg.start_soon(self._delete_pod, pod.metadata.name, cache)
        for service in await self.api.list(Call("list", "services"), self.core.list_namespaced_service, selector):
            await self.api.delete(Call("delete", "services", service.metadata.name), self.core.delete_namespaced_service)
        secret = await self._token_secret(name, cluster_id)
        if secret is not None:
            await self.api.delete(Call("delete", "secrets", secret.metadata.name), self.core.delete_namespaced_secret)
        if self.network_policy:
            await self.network_policies.delete(self._meta(name, cluster_id, "", {}, ()))
        if wait and pods:
            await self._wait_pods_gone(name, cluster_id)

    async def _token_secret(self, name: str, cluster_id: str) -> Any | None:
        """The cluster's token Secret, read by name: the Role grants no list/watch on Secrets."""
        secret_name = self._meta(name, cluster_id, "", {}, ()).secret_name
        call = Call("get", "secrets", secret_name)
        try:
            secret = await self.api.call(call, self.core.read_namespaced_secret, secret_name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self.api.failed(call, exc) from exc
        return secret if labels_of(secret).get(LABEL_CLUSTER_ID) == cluster_id else None

    async def _delete_pod(self, name: str, cache: PodReflector | None) -> None:
        deleted = await self.api.delete(Call("delete", "pods", name), self.core.delete_namespaced_pod)
        if cache is not None and isinstance(deleted, V1Pod):
            cache.upsert(deleted)

    async def _wait_pods_gone(self, name: str, cluster_id: str) -> None:
        cache = await self._cache()
        with anyio.move_on_after(self.delete_wait_s):
            while any(belongs(p, name, cluster_id) for p in cache.pods()):
                await anyio.sleep(0.1)
            return
        left = sorted(p.metadata.name for p in cache.pods() if belongs(p, name, cluster_id))
        self.log.warning("Pods of Ray cluster %s still terminating after %.0f s: %s", name,
                         self.delete_wait_s, ", ".join(left))

def _pod_ports(pod: V1Pod, default: Ports) -> Ports:
    """The Ray ports a head Pod declares (by name), else `default`."""
    declared = {p.name: p.container_port for c in pod.spec.containers[:1] for p in c.ports or ()}
    return Ports(gcs=declared.get("gcs", default.gcs), dashboard=declared.get("dashboard", default.dashboard),
                 client=declared.get("client", default.client),
                 dashboard_agent=declared.get("dashboard-agent", default.dashboard_agent),
                 metrics=declared.get(objects.METRICS_PORT_NAME, default.metrics))


def _suffix() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(5))
