"""``ProcessKubelet``: the nodes of the test cluster, running the Pods kube-scheduler binds to them.

The real control plane (``controlplane.py``) has everything but kubelets; this supplies them.
For each Node of its pools it registers the Node (capacity, labels, GPU taint), renews its
Lease, watches the Pods bound to it (``spec.nodeName``, all a node may list) and runs each as
local processes (``podworker.py``), writing ``pods/status`` and Events, serving ``pods/log``
(``logserver.py``) and finishing graceful deletions. All of it with the node's own
certificate, so the Node authorizer and NodeRestriction apply. Service names reach Pods as
described in ``podnet.py``. A pool with ``appear_after_s`` scales up from zero the way
cluster-autoscaler does (``scaleup.py``).

Test hooks: :meth:`fail_image_pull` (``ErrImagePull`` / ``ImagePullBackOff`` for an image
pattern), :meth:`oom_kill`, :meth:`pid`, and :meth:`leftover_processes` to prove that nothing
outlived :meth:`stop`.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import psutil
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from .logserver import LogServer
from .nodeapi import ClusterDns, NodeApi, node_client
from .nodes import DEFAULT_POOLS, LEASE_NAMESPACE, RENEW_S, NodePool, register_node, renew_lease
from .podnet import IPAllocator
from .podworker import PodWorker
from .proctable import TABLE
from .scaleup import DelayedPool

ArgvHook = Callable[[Mapping[str, Any], list[str]], Sequence[str]]
_HOST_VARS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")
WATCH_S = 5  # a node's Pod watch is re-opened this often, so stop() never waits long


def default_base_env(path: str | None = None) -> dict[str, str]:
    """What a container starts from: a few host basics, not the test process's whole environment.

    A real container does not inherit ``RAY_ADDRESS``, ``VIRTUAL_ENV`` or ``PYTEST_*`` from
    whoever started it; neither do these processes.
    """
    env = {k: os.environ[k] for k in _HOST_VARS if k in os.environ}
    if path is not None:
        env["PATH"] = path
    return env


class ProcessKubelet:
    """Kubelets for the Nodes of ``pools`` on a :class:`~.controlplane.ControlPlane`.

    ``executables``: executable name (or path as written in the Pod) -> local path, applied to
    ``command[0]`` before the ``PATH`` lookup. ``rewrite_argv(pod, argv) -> argv``: last word
    on the command line. ``base_env``: the environment every container starts from (default:
    :func:`default_base_env`); ``PATH`` in it is where commands are looked up.
    ``grace_period_s``: cap on SIGTERM->SIGKILL time (the Pod's own grace is used if shorter).
    ``max_probe_period_s``: cap on probe ``periodSeconds``/``initialDelaySeconds`` so tests
    do not wait 10 s per probe (None keeps the Pod's values).
    ``restart_backoff_s``: (first, max) CrashLoopBackOff delay. ``workdir``: where per-Pod
    directories and logs go; keep it short, Ray puts Unix sockets under ``TMPDIR``.
    """

    def __init__(self, control_plane: Any, *, pools: Iterable[NodePool] = DEFAULT_POOLS,
                 pod_cidr: str = "127.0.0.0/16", executables: Mapping[str, str] | None = None,
                 rewrite_argv: ArgvHook | None = None, base_env: Mapping[str, str] | None = None,
                 workdir: str | os.PathLike[str] | None = None, grace_period_s: float = 2.0,
                 image_entrypoints: Mapping[str, Sequence[str]] | None = None,
                 max_probe_period_s: float | None = 1.0, restart_backoff_s: tuple[float, float] = (0.5, 5.0),
                 resync_s: float = 0.5) -> None:
        self.cp = control_plane
        self.pools = list(pools)
        self.host_ip = "127.0.0.1"
        self.ips = IPAllocator(pod_cidr)
        self.executables = dict(executables or {})
        self.rewrite_argv = rewrite_argv
        self.base_env = dict(default_base_env() if base_env is None else base_env)
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="pk-", dir="/tmp") if workdir is None else workdir)
        self.grace_period_s = grace_period_s
        self.image_entrypoints = {k: list(v) for k, v in (image_entrypoints or {}).items()}
        self.max_probe_period_s = max_probe_period_s
        self.restart_backoff_s = restart_backoff_s
        self.resync_s = resync_s
        self.instance_id = uuid.uuid4().hex[:12]
        self.errors: list[str] = []
        self.admin = control_plane.admin_api_client()
        self.dns = ClusterDns(self.admin)
        self.nodes: dict[str, NodeApi] = {}
        self._pool_of: dict[str, NodePool] = {}
        self._image_failures: dict[str, str] = {}
        self._workers: dict[str, PodWorker] = {}
        self._stopping_workers: list[PodWorker] = []
        self._threads: list[threading.Thread] = []
        self._delayed: list[DelayedPool] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        cert, key = control_plane.issue_serving_cert(f"process-kubelet-{self.instance_id}",
                                                     ip_addresses=(self.host_ip,))
        self.log_server = LogServer(self, Path(cert), Path(key), self.host_ip)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "ProcessKubelet":
        self.log_server.start()
        for pool in self.pools:
            if pool.appear_after_s is None:
                self.add_pool(pool)
            else:
                self._delayed.append(DelayedPool(self.admin, pool, self.add_pool).start())
        self._spawn(self._renew_leases, "kubelet-leases")
        return self

    def add_pool(self, pool: NodePool) -> None:
        """Register ``pool``'s Nodes now and start serving them."""
        for name in pool.node_names():
            cert, key = self.cp.node_credentials(name)
            node = NodeApi(node_client(self.cp.url, str(self.cp.ca_file), str(cert), str(key)), name)
            register_node(node.api, pool, name, self.host_ip, self.log_server.port)
            with self._lock:
                self.nodes[name] = node
                self._pool_of[name] = pool
            if pool.serve_pods:
                self._spawn(lambda node=node: self._serve(node), f"kubelet-{name}")
        self._wait_schedulable(pool.node_names())

    def _wait_schedulable(self, names: list[str], timeout_s: float = 60.0) -> None:
        """Wait until the node lifecycle controller has seen the Nodes Ready and lifted the
        ``node.kubernetes.io/not-ready`` taint every new Node starts with (one monitor period)."""
        core = client.CoreV1Api(self.admin)
        deadline = time.monotonic() + timeout_s
        waiting = list(names)
        while waiting:
            taints = {n: [t.key for t in core.read_node(n).spec.taints or [] if t.key.startswith("node.kubernetes.io/")]
                      for n in waiting}
            waiting = [n for n, keys in taints.items() if keys]
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"nodes still tainted after {timeout_s:.0f} s: {taints}")
            if waiting:
                time.sleep(0.2)

    def stop(self) -> None:
        """Kill every container (SIGTERM, then SIGKILL), delete what is left on the nodes, drop the Nodes."""
        self._stop.set()
        for delayed in self._delayed:
            delayed.stop()
            self.errors += delayed.errors
        for thread in self._threads:
            thread.join(timeout=WATCH_S + 10)
        with self._lock:
            workers = list(self._workers.values()) + list(self._stopping_workers)
            self._workers.clear()
        for worker in workers:
            worker.terminate(self.grace_period_s)
        for worker in workers:
            worker.thread.join(timeout=self.grace_period_s + 15)
        stragglers = self.leftover_processes()
        if stragglers:  # the per-Pod kill missed them: a bug worth failing a test for
            self.errors.append(f"stop: {len(stragglers)} processes survived their Pod's kill: "
                               f"{[p.pid for p in stragglers]}")
        for proc in stragglers:
            try:
                proc.kill()
            except psutil.Error:
                pass  # exited meanwhile
        self._drop_nodes()
        self.log_server.stop()
        self.admin.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _drop_nodes(self) -> None:
        """Finish the nodes' Pods (as each node) and remove the Nodes and Leases (as admin: a
        node may not delete itself). Pods of a later test never land on a vanished node."""
        core = client.CoreV1Api(self.admin)
        coord = client.CoordinationV1Api(self.admin)
        for name, node in list(self.nodes.items()):
            try:
                for pod in node.pods()[0]:
                    node.delete_pod(pod)
                core.delete_node(name)
                coord.delete_namespaced_lease(name, LEASE_NAMESPACE)
            except ApiException as exc:
                if exc.status != 404:
                    self.errors.append(f"stop: dropping node {name}: {exc.status} {exc.reason}")
            node.api.close()

    def __enter__(self) -> "ProcessKubelet":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # ----------------------------------------------------------- test hooks
    def fail_image_pull(self, image_pattern: str, message: str = "rpc error: code = NotFound desc = failed to "
                                                                 "pull and unpack image: not found") -> None:
        """Containers whose image matches the glob stay in ``ErrImagePull``/``ImagePullBackOff``."""
        with self._lock:
            self._image_failures[image_pattern] = message

    def allow_image_pull(self, image_pattern: str) -> None:
        with self._lock:
            self._image_failures.pop(image_pattern, None)

    def image_pull_error(self, image: str) -> str | None:
        with self._lock:
            for pattern, message in self._image_failures.items():
                if fnmatch.fnmatch(image, pattern):
                    return message
        return None

    def oom_kill(self, namespace: str, name: str) -> None:
        """SIGKILL the Pod's container as the OOM killer would; it is reported ``OOMKilled``."""
        worker = self._worker_for(namespace, name)
        if worker is None:
            raise KeyError(f"no running pod {namespace}/{name} on this kubelet")
        worker.oom_kill()

    def pid(self, namespace: str, name: str) -> int | None:
        """PID of the Pod's current container process (None if not started or exited)."""
        worker = self._worker_for(namespace, name)
        proc = worker.proc if worker is not None else None
        return proc.pid if proc is not None and proc.returncode is None else None

    def leftover_processes(self) -> list[psutil.Process]:
        """Live processes started by this kubelet's containers (empty after a clean stop)."""
        out = []
        for info in TABLE.marked(self.instance_id + "/"):
            try:
                out.append(psutil.Process(info.pid))
            except psutil.NoSuchProcess:
                continue
        return out

    def allocatable(self, node_name: str) -> dict[str, str]:
        """The node's allocatable resources (``resourceFieldRef`` falls back to them without a limit)."""
        return self._pool_of[node_name].capacity()

    def node_of(self, namespace: str, name: str) -> str | None:
        worker = self._worker_for(namespace, name)
        return worker.node.node_name if worker is not None else None

    # ------------------------------------------------------------ LogSource
    def _worker_for(self, namespace: str, name: str) -> PodWorker | None:
        with self._lock:
            for worker in self._workers.values():
                if worker.ns == namespace and worker.name == name:
                    return worker
        return None

    def log_path(self, namespace: str, pod: str, container: str, previous: bool) -> str | None:
        worker = self._worker_for(namespace, pod)
        if worker is None or worker.container["name"] != container:
            return None
        return worker.log_path(previous)

    def log_finished(self, namespace: str, pod: str, container: str) -> bool:
        worker = self._worker_for(namespace, pod)
        return worker is None or worker.finished or worker.proc is None or worker.proc.returncode is not None

    # ---------------------------------------------------------- control loops
    def _renew_leases(self) -> None:
        while not self._stop.wait(RENEW_S):
            for name, node in list(self.nodes.items()):
                try:
                    renew_lease(node.api, name)
                except Exception as exc:  # noqa: BLE001 - a missed renewal is retried; the fixture reports it
                    self.errors.append(f"lease {name}: {type(exc).__name__}: {exc}")

    def _serve(self, node: NodeApi) -> None:
        """List the node's Pods, then watch them; list again whenever the watch expires (410)."""
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    pods, rv = node.pods()
                    self._sync(node, pods)
                stream = watch.Watch().stream(node.core.list_pod_for_all_namespaces,
                                              field_selector=f"spec.nodeName={node.node_name}",
                                              resource_version=rv, timeout_seconds=WATCH_S,
                                              allow_watch_bookmarks=True)
                for event in stream:
                    if self._stop.is_set():
                        return
                    raw = event["raw_object"]
                    rv = raw["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        self._forget(raw["metadata"]["uid"])
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._observe(node, raw)
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
                    continue
                self._report(node, exc)
            except Exception as exc:  # keep the node alive; the fixture reports these
                self._report(node, exc)

    def _report(self, node: NodeApi, exc: BaseException) -> None:
        if not self._stop.is_set():
            self.errors.append(f"kubelet {node.node_name}: {type(exc).__name__}: {exc}")
            self._stop.wait(self.resync_s)

    def _sync(self, node: NodeApi, pods: list[dict[str, Any]]) -> None:
        """After a (re-)list: start what is new, stop what vanished while the watch was down."""
        present = {p["metadata"]["uid"] for p in pods}
        with self._lock:
            gone = [uid for uid, w in self._workers.items() if w.node is node and uid not in present]
        for uid in gone:
            self._forget(uid)
        for pod in pods:
            self._observe(node, pod)

    def _observe(self, node: NodeApi, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        deleting = meta.get("deletionTimestamp") is not None
        with self._lock:
            worker = self._workers.get(meta["uid"])
            if worker is not None:
                if deleting and not worker.deleting:
                    worker.deleting = True
                    if not worker.done:
                        worker.terminate(min(self._grace(pod), self.grace_period_s))
                        return
                else:
                    return
            elif not deleting:
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") or self._stop.is_set():
                    return
                worker = PodWorker(self, node, pod, self.ips.allocate())
                self._workers[meta["uid"]] = worker
                worker.start()
                return
        node.delete_pod(pod)  # deleted before it ran, or after it finished: nothing left to kill

    @staticmethod
    def _grace(pod: Mapping[str, Any]) -> float:
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        return float(grace if grace is not None else (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))

    def _forget(self, uid: str) -> None:
        with self._lock:
            worker = self._workers.pop(uid, None)
            if worker is None:
                return
            if worker.done:  # a finished Pod: its processes are already gone
                self.ips.release(worker.pod_ip)
                return
            self._stopping_workers.append(worker)
        worker.terminate(self.grace_period_s)

    def worker_done(self, worker: PodWorker) -> None:
        """Called by a worker thread as it ends: a Pod being deleted is now deleted for good."""
        with self._lock:
            worker.done = True
            if worker in self._stopping_workers:
                self._stopping_workers.remove(worker)
                self.ips.release(worker.pod_ip)
            delete = worker.deleting and not self._stop.is_set()
        if delete:
            try:
                worker.node.delete_pod(worker.pod)
            except Exception as exc:  # noqa: BLE001 - reported by the fixture
                self.errors.append(f"pod {worker.ns}/{worker.name}: final delete: {type(exc).__name__}: {exc}")
