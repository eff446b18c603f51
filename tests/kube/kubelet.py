"""``ProcessKubelet``: the emulator's one node; schedules Pods and runs each as a local process.

It plays kube-scheduler (binding Pods to its node, or marking them ``Unschedulable`` with a
``FailedScheduling`` Event) and kubelet (``podworker.py``: start the first container's
command, report status, probes, restarts, kill on delete). It watches Pods in-process through
the emulator's store, not over HTTP: the HTTP surface is what the code under test uses, and the
request log stays free of kubelet traffic. Service names reach Pods as described in
``podnet.py``.

Test hooks: :meth:`make_unschedulable` (refuse Pods matching a predicate), ``allocatable``
(node capacity, e.g. no ``nvidia.com/gpu``), :meth:`fail_image_pull` (``ErrImagePull`` /
``ImagePullBackOff`` for an image pattern), :meth:`oom_kill`, and
:meth:`leftover_processes` to prove that nothing outlived :meth:`stop`.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import psutil

from .emulator import KubeEmulator
from .errors import ApiError
from .events import record_event
from .podnet import IPAllocator
from .podworker import PodWorker
from .proctable import TABLE
from .scheduler import Rule, unschedulable_reason
from .store import now_rfc3339

ArgvHook = Callable[[Mapping[str, Any], list[str]], Sequence[str]]
_HOST_VARS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")


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
    """A single-node scheduler + kubelet bound to a :class:`KubeEmulator`.

    ``executables``: executable name (or path as written in the Pod) -> local path, applied to
    ``command[0]`` before the ``PATH`` lookup. ``rewrite_argv(pod, argv) -> argv``: last word
    on the command line. ``base_env``: the environment every container starts from (default:
    :func:`default_base_env`); ``PATH`` in it is where commands are looked up.
    ``allocatable``: node capacity for scheduling (see ``scheduler.py``; None = unlimited).
    ``grace_period_s``: cap on SIGTERM->SIGKILL time (the Pod's own grace is used if shorter).
    ``max_probe_period_s``: cap on probe ``periodSeconds``/``initialDelaySeconds`` so tests
    do not wait 10 s per probe (None keeps the Pod's values).
    ``restart_backoff_s``: (first, max) CrashLoopBackOff delay. ``workdir``: where per-Pod
    directories and logs go; keep it short, Ray puts Unix sockets under ``TMPDIR``.
    """

    def __init__(self, emulator: KubeEmulator, *, node_name: str = "kubelet-1", pod_cidr: str = "127.0.0.0/16",
                 executables: Mapping[str, str] | None = None, rewrite_argv: ArgvHook | None = None,
                 base_env: Mapping[str, str] | None = None, workdir: str | os.PathLike[str] | None = None,
                 grace_period_s: float = 2.0, allocatable: Mapping[str, Any] | None = None,
                 node_labels: Mapping[str, str] | None = None,
                 image_entrypoints: Mapping[str, Sequence[str]] | None = None,
                 max_probe_period_s: float | None = 1.0, restart_backoff_s: tuple[float, float] = (0.5, 5.0),
                 resync_s: float = 0.5) -> None:
        self.emulator = emulator
        self.store = emulator.store
        self.pods_rt = self.store.type_for("", "pods")
        self.services_rt = self.store.type_for("", "services")
        self.node_name = node_name
        self.host_ip = "127.0.0.1"
        self.ips = IPAllocator(pod_cidr)
        self.executables = dict(executables or {})
        self.rewrite_argv = rewrite_argv
        self.base_env = dict(default_base_env() if base_env is None else base_env)
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="pk-", dir="/tmp") if workdir is None else workdir)
        self.grace_period_s = grace_period_s
        self.allocatable = dict(allocatable) if allocatable is not None else None
        self.node_labels = {"kubernetes.io/hostname": node_name, "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64", **(node_labels or {})}
        self.image_entrypoints = {k: list(v) for k, v in (image_entrypoints or {}).items()}
        self.max_probe_period_s = max_probe_period_s
        self.restart_backoff_s = restart_backoff_s
        self.resync_s = resync_s
        self.instance_id = uuid.uuid4().hex[:12]
        self.errors: list[str] = []
        self._rules: list[Rule] = []
        self._image_failures: dict[str, str] = {}
        self._workers: dict[str, PodWorker] = {}
        self._stopping_workers: list[PodWorker] = []
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"kubelet-{node_name}", daemon=True)

    # ------------------------------------------------------------ lifecycle
    @property
    def node_allocatable(self) -> dict[str, str]:
        if self.allocatable is not None:
            return {k: str(v) for k, v in self.allocatable.items()}
        return {"cpu": str(os.cpu_count() or 1), "memory": str(psutil.virtual_memory().total), "pods": "1000"}

    def start(self) -> "ProcessKubelet":
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": self.node_labels},
                "spec": {},
                "status": {"capacity": self.node_allocatable, "allocatable": self.node_allocatable,
                           "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                           "message": "process kubelet is posting ready status",
                                           "lastHeartbeatTime": now_rfc3339(),
                                           "lastTransitionTime": now_rfc3339()}],
                           "addresses": [{"type": "InternalIP", "address": self.host_ip},
                                         {"type": "Hostname", "address": self.node_name}]}}
        self.store.create(self.store.type_for("", "nodes"), None, node)
        self.emulator.log_source = self
        self._thread.start()
        return self

    def stop(self) -> None:
        """Kill every container process (SIGTERM, then SIGKILL), join all threads, drop the Node."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
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
        try:
            self.store.delete(self.store.type_for("", "nodes"), None, self.node_name)
        except ApiError:
            pass  # the emulator was stopped or the Node deleted by a test
        if self.emulator.log_source is self:
            self.emulator.log_source = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "ProcessKubelet":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------- test hooks
    def make_unschedulable(self, predicate: Callable[[Mapping[str, Any]], bool],
                           message: str = "0/1 nodes are available: 1 node(s) didn't match Pod's node "
                                          "affinity/selector.") -> Rule:
        """Refuse Pods for which ``predicate(pod)`` is true (they stay Pending/Unschedulable)."""
        rule = Rule(predicate, message)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove_rule(self, rule: Rule) -> None:
        """Drop a rule; refused Pods are retried on the next resync."""
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

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
            raise KeyError(f"no running pod {namespace}/{name} on {self.node_name}")
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

    # ---------------------------------------------------------- control loop
    def _loop(self) -> None:
        rv: str | None = None
        match_all: Callable[[Any], bool] = lambda _obj: True  # noqa: E731
        while not self._stop.is_set():
            try:
                for event in self.store.watch(self.pods_rt, None, match_all, rv, timeout_s=self.resync_s,
                                              bookmarks=True, bookmark_interval_s=self.resync_s / 2,
                                              stop=self._stop):
                    if event["type"] == "ERROR":
                        rv = None  # history compacted: re-list through a fresh watch
                        break
                    rv = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        self._forget(event["object"])
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._observe(event["object"])
                self._forget_vanished()
                self._schedule_pending()
            except Exception as exc:  # keep the node alive; the fixture reports these
                self.errors.append(f"kubelet loop: {type(exc).__name__}: {exc}")
                self._stop.wait(self.resync_s)

    def _observe(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        node = (pod.get("spec") or {}).get("nodeName")
        with self._lock:
            if uid in self._workers:
                return
            if node and node != self.node_name:
                self._pending.pop(uid, None)
                return
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return
            if node == self.node_name:
                self._pending.pop(uid, None)
                self._start_worker(pod)
                return
            known = uid in self._pending
            self._pending[uid] = pod
            rules = list(self._rules)
        if not known:
            self._try_schedule([pod], rules)  # older refused Pods are retried on the resync

    def _forget(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        meta_grace = pod["metadata"].get("deletionGracePeriodSeconds")
        grace = float(meta_grace if meta_grace is not None else
                      (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        with self._lock:
            self._pending.pop(uid, None)
            worker = self._workers.pop(uid, None)
            if worker is None:
                return
            if worker.done:  # a finished Pod: its processes are already gone
                self.ips.release(worker.pod_ip)
                return
            self._stopping_workers.append(worker)
        worker.terminate(min(grace, self.grace_period_s))

    def _forget_vanished(self) -> None:
        """Stop Pods whose DELETED event was lost (a watch that expired with 410 and re-listed)."""
        with self._lock:
            gone = [w.pod for uid, w in self._workers.items() if self.store.get_by_uid(uid) is None]
        for pod in gone:
            self._forget(pod)

    def _start_worker(self, pod: dict[str, Any]) -> None:
        worker = PodWorker(self, pod, self.ips.allocate())
        self._workers[pod["metadata"]["uid"]] = worker
        worker.start()

    def worker_done(self, worker: PodWorker) -> None:
        """Called by a worker thread as it ends; a finished (not deleted) Pod keeps its record."""
        with self._lock:
            worker.done = True
            if worker in self._stopping_workers:
                self._stopping_workers.remove(worker)
                self.ips.release(worker.pod_ip)

    def _bound_pods(self) -> list[dict[str, Any]]:
        pods, _, _, _ = self.store.list(self.pods_rt, None)
        return [p for p in pods if (p.get("spec") or {}).get("nodeName") == self.node_name
                and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]

    def _schedule_pending(self) -> None:
        """Retry every unbound Pod, oldest first."""
        with self._lock:
            pending = sorted(self._pending.values(), key=lambda p: p["metadata"].get("creationTimestamp", ""))
            rules = list(self._rules)
        if pending:
            self._try_schedule(pending, rules)

    def _try_schedule(self, pending: list[dict[str, Any]], rules: list[Rule]) -> None:
        bound_pods = self._bound_pods()
        for queued in pending:
            if self._stop.is_set():
                return
            try:
                pod = self.store.get(self.pods_rt, queued["metadata"]["namespace"], queued["metadata"]["name"])
            except ApiError:
                with self._lock:
                    self._pending.pop(queued["metadata"]["uid"], None)
                continue
            if pod["metadata"]["uid"] != queued["metadata"]["uid"] or pod["spec"].get("nodeName"):
                continue
            reason = unschedulable_reason(pod, rules, self.node_labels, self.allocatable, bound_pods)
            if reason is not None:
                self._mark_unschedulable(pod, reason)
                continue
            try:
                bound = self.store.bind(pod["metadata"]["namespace"], pod["metadata"]["name"], self.node_name)
            except ApiError:
                continue
            bound_pods.append(bound)
            record_event(self.store, bound, "Scheduled", f"Successfully assigned {pod['metadata']['namespace']}/"
                                                         f"{pod['metadata']['name']} to {self.node_name}",
                         component="default-scheduler")
            with self._lock:
                self._pending.pop(pod["metadata"]["uid"], None)
                if pod["metadata"]["uid"] not in self._workers and not self._stop.is_set():
                    self._start_worker(bound)

    def _mark_unschedulable(self, pod: dict[str, Any], reason: str) -> None:
        conditions = (pod.get("status") or {}).get("conditions") or []
        current = next((c for c in conditions if c.get("type") == "PodScheduled"), None)
        if current is not None and current.get("message") == reason:
            return
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": reason,
                     "lastTransitionTime": now_rfc3339()}

        def apply(obj: dict[str, Any]) -> None:
            status = obj.setdefault("status", {})
            status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
            status["conditions"].append(condition)

        try:
            updated = self.store.mutate(self.pods_rt, pod["metadata"]["namespace"], pod["metadata"]["name"], apply,
                                        subresource="status")
        except ApiError:
            return
        record_event(self.store, updated, "FailedScheduling", reason, warning=True, component="default-scheduler")
