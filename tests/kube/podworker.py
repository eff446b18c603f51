"""One bound Pod's life on the process kubelet: start the first container, probe it, report status.

What a backend watches is reproduced: ``Pending`` with a waiting reason (``ContainerCreating``,
``ErrImagePull``/``ImagePullBackOff``, ``CreateContainerConfigError``) until the process starts,
``Running`` with ``started``/``ready`` and the Pod conditions, then ``Succeeded``/``Failed`` with
the exit code and reason (``Completed``, ``Error``, ``OOMKilled``, ``StartError``), or a restart
with ``restartCount``, ``lastState`` and ``CrashLoopBackOff`` for ``Always``/``OnFailure``.
Only the first container runs; other containers and init containers are not started and do not
appear in ``containerStatuses``. Volumes and resource limits are not applied to the process;
each container gets its own working directory and ``TMPDIR`` instead of a filesystem.

Every read and write goes through the node's own client (:class:`~.nodeapi.NodeApi`), so the
apiserver's Node authorizer and NodeRestriction judge it as they judge a kubelet.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from .containerenv import ConfigError, container_env
from .nodeapi import NodeApi, NotYetAllowed, PodGone
from .podnet import ServiceNames, expand, rewrite
from .probes import ProbeState, run_probe
from .process import MARKER, ContainerProcess, StartError, resolve_executable

if TYPE_CHECKING:
    from .kubelet import ProcessKubelet


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class PodWorker:
    """Thread that runs and supervises one Pod's first container."""

    def __init__(self, kubelet: "ProcessKubelet", node: NodeApi, pod: dict[str, Any], pod_ip: str) -> None:
        self.k = kubelet
        self.node = node
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.pod = pod
        self.container = pod["spec"]["containers"][0]
        self.pod_ip = pod_ip
        self.dir = kubelet.workdir / self.uid.replace("-", "")[:12]
        self.restart_count = 0
        self.proc: ContainerProcess | None = None
        self.phase = "Pending"
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.ready = False
        self.started = False
        self.start_time = now_rfc3339()
        self.finished = False
        self.done = False  # set by the kubelet once the thread has cleaned up
        self.deleting = False  # the apiserver set deletionTimestamp: delete the Pod once killed
        self.oom_requested = False
        self._conditions: dict[str, dict[str, Any]] = {}
        self._warned: set[str] = set()
        self._env: dict[str, str] = {}
        self._start_error = ""
        self._stop = threading.Event()
        self._grace_s = kubelet.grace_period_s
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.ns}-{self.name}", daemon=True)

    # ------------------------------------------------------------ control
    def start(self) -> None:
        self.thread.start()

    def terminate(self, grace_s: float) -> None:
        """Ask the worker to kill the container (SIGTERM, SIGKILL after ``grace_s``) and exit."""
        self._grace_s = grace_s
        self._stop.set()
        self._wake()

    def oom_kill(self) -> None:
        """Simulate the kernel OOM killer: SIGKILL now, reported as ``OOMKilled`` (exit 137)."""
        self.oom_requested = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.popen.kill()

    def _wake(self) -> None:
        with self._lock:  # never write to a closed (and possibly reused) descriptor
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)
        if self._stop.is_set():
            raise PodGone()

    def log_path(self, previous: bool) -> str | None:
        n = self.restart_count - 1 if previous else self.restart_count
        path = self.dir / f"{self.container['name']}-{n}.log"
        return str(path) if n >= 0 and path.exists() else None

    # ------------------------------------------------------------- status
    def _condition(self, ctype: str, ok: bool, reason: str | None = None, message: str | None = None) -> None:
        status = "True" if ok else "False"
        old = self._conditions.get(ctype)
        cond: dict[str, Any] = {"type": ctype, "status": status,
                                "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == status
                                else now_rfc3339()}
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        self._conditions[ctype] = cond

    def _container_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self.container["name"], "image": self.container.get("image", ""), "imageID": "",
            "ready": self.ready, "started": self.started, "restartCount": self.restart_count,
            "state": self.state, "lastState": self.last_state,
        }
        if self.proc is not None:
            status["containerID"] = f"process://{self.proc.pid}"
        return status

    def publish(self) -> None:
        """Write the status subresource; a missing Pod means it was deleted."""
        terminal = self.phase in ("Succeeded", "Failed")
        self._condition("PodReadyToStartContainers", True)
        self._condition("Initialized", True)
        not_ready = "PodCompleted" if terminal else "ContainersNotReady"
        msg = None if self.ready or terminal else f"containers with unready status: [{self.container['name']}]"
        self._condition("ContainersReady", self.ready, None if self.ready else not_ready, msg)
        self._condition("Ready", self.ready, None if self.ready else not_ready, msg)
        self._condition("PodScheduled", True)
        order = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
        status = {"phase": self.phase, "conditions": [self._conditions[t] for t in order],
                  "hostIP": self.k.host_ip, "hostIPs": [{"ip": self.k.host_ip}],
                  "podIP": self.pod_ip, "podIPs": [{"ip": self.pod_ip}], "startTime": self.start_time,
                  "containerStatuses": [self._container_status()]}
        self.pod = self.node.write_status(self.pod, status)

    def _event(self, reason: str, message: str, warning: bool = False, once: bool = False) -> None:
        key = f"{reason}:{message}"
        if once and key in self._warned:
            return
        self._warned.add(key)
        self.node.record_event(self.pod, reason, message, warning=warning)

    # ---------------------------------------------------------------- run
    def _run(self) -> None:
        try:
            self.publish()
            while True:
                if self._stop.is_set():
                    raise PodGone()
                outcome = self._prepare_and_start()
                if outcome is None:
                    self._sleep(self.k.resync_s)
                    continue
                code = self._supervise() if outcome == "started" else int(outcome)
                if code is None:
                    raise PodGone()
                if self.proc is not None:
                    self.proc.kill_tree(0)  # the container is gone once its main process is: no stragglers
                self._record_exit(code, start_error=outcome != "started")
                if not self._restart_wanted(code):
                    self.phase = "Succeeded" if code == 0 else "Failed"
                    self.finished = True
                    self.publish()
                    return
                self._back_off()
        except PodGone:
            pass
        except Exception as exc:  # surfaced by the kubelet fixture, never swallowed silently
            self.k.errors.append(f"pod {self.ns}/{self.name}: {type(exc).__name__}: {exc}")
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        proc = self.proc
        if proc is not None:
            try:
                proc.kill_tree(self._grace_s)
            finally:
                proc.close()
        self.finished = True
        with self._lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        self.k.worker_done(self)

    def _wait(self, reason: str, message: str, event_reason: str | None = None, warning: bool = True) -> None:
        self.state = {"waiting": {"reason": reason, "message": message}}
        self.publish()
        if event_reason:
            self._event(event_reason, message, warning=warning, once=True)

    def _prepare_and_start(self) -> int | str | None:
        """None: not startable yet (status says why); "started"; or an int: StartError exit code."""
        image = str(self.container.get("image", ""))
        pull_error = self.k.image_pull_error(image)
        if pull_error is not None:
            reason = "ImagePullBackOff" if f"Failed:{image}" in self._warned else "ErrImagePull"
            self._wait(reason, f'Back-off pulling image "{image}"' if reason == "ImagePullBackOff" else pull_error)
            self._event("Failed", f'Failed to pull image "{image}": {pull_error}', warning=True, once=True)
            self._warned.add(f"Failed:{image}")
            return None
        try:
            env = container_env(self.pod, self.container, self.node.lookup(self.ns),
                                self.k.allocatable(self.node.node_name))
        except ConfigError as exc:
            self._wait("CreateContainerConfigError", str(exc), "Failed")
            return None
        except NotYetAllowed:
            return None  # the Node authorizer's graph has not seen this Pod's references yet
        argv = list(self.container.get("command") or self.k.image_entrypoints.get(image, []))
        argv += list(self.container.get("args") or [])
        if not argv:
            self._wait("CreateContainerError", f'no command specified and no entrypoint known for image "{image}"',
                       "Failed")
            return None
        argv = [expand(a, env) for a in argv]
        services, pods = self.k.dns.services_and_pods()
        table, waiting = ServiceNames(self.ns, services, pods).resolve(argv + list(env.values()))
        if waiting:
            self._wait("ContainerCreating", f"waiting for an endpoint of Service {', '.join(waiting)} (no Pod "
                                            "selected by it has an IP yet)")
            return None
        argv = [rewrite(a, table) for a in argv]
        env = {k: rewrite(v, table) for k, v in env.items()}
        if self.k.rewrite_argv is not None:
            argv = list(self.k.rewrite_argv(self.pod, argv))
        full_env = dict(self.k.base_env)
        full_env["HOSTNAME"] = self.name
        full_env.update(env)
        tmp = self.dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        full_env["TMPDIR"] = str(tmp)
        full_env[MARKER] = f"{self.k.instance_id}/{self.uid}"
        self._env = full_env
        log = self.dir / f"{self.container['name']}-{self.restart_count}.log"
        try:
            argv[0] = resolve_executable(argv[0], full_env.get("PATH", ""), self.k.executables)
            self.proc = ContainerProcess(argv, full_env, self.dir, log)
        except StartError as exc:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.touch()
            self._start_error = str(exc)
            return 128
        self._event("Created", f"Created container {self.container['name']}")
        self._event("Started", f"Started container {self.container['name']}")
        self.phase = "Running"
        self.started = self.container.get("startupProbe") is None
        self.ready = self.started and self.container.get("readinessProbe") is None
        self.state = {"running": {"startedAt": now_rfc3339()}}
        self.publish()
        return "started"

    def _capped(self, seconds: Any, default: float) -> float:
        value = float(seconds if seconds is not None else default)
        cap = self.k.max_probe_period_s
        return min(value, cap) if cap is not None else value

    def _supervise(self) -> int | None:
        """Wait for exit while running probes; None if told to stop."""
        assert self.proc is not None
        probes: dict[str, tuple[ProbeState, float]] = {}
        started_at = time.monotonic()
        for kind, initially in (("startupProbe", False), ("livenessProbe", True), ("readinessProbe", False)):
            spec = self.container.get(kind)
            if spec is not None:
                first = started_at + self._capped(spec.get("initialDelaySeconds"), 0)
                probes[kind] = (ProbeState(spec, initially), first)
        while True:
            due = [t for _, t in probes.values()]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            code = self.proc.wait(timeout, self._wake_r)
            if code is not None:
                return code
            if self._stop.is_set():
                return None
            now = time.monotonic()
            for kind, (state, when) in list(probes.items()):
                if when > now:
                    continue
                probes[kind] = (state, now + self._capped(state.probe.get("periodSeconds"), 10))
                if kind != "startupProbe" and not self.started:
                    continue
                if kind == "startupProbe" and self.started:
                    continue
                result = run_probe(state.probe, self.container, self.pod_ip, self._env, self.dir, self.k.executables)
                flipped = state.observe(result)
                label = {"startupProbe": "Startup", "livenessProbe": "Liveness", "readinessProbe": "Readiness"}[kind]
                if not result.ok:
                    self._event("Unhealthy", f"{label} probe failed: {result.message}", warning=True, once=True)
                if not flipped:
                    continue
                if kind == "readinessProbe":
                    self.ready = state.passing
                    self.publish()
                elif kind == "startupProbe":
                    self.started = True
                    self.ready = "readinessProbe" not in probes
                    self.publish()
                elif not state.passing:
                    return self._kill_for_probe(label)
            if "startupProbe" in probes and not self.started:
                state = probes["startupProbe"][0]
                if state.failures >= int(state.probe.get("failureThreshold") or 3):
                    return self._kill_for_probe("Startup")

    def _kill_for_probe(self, label: str) -> int:
        assert self.proc is not None
        name = self.container["name"]
        self._event("Killing", f"Container {name} failed {label.lower()} probe, will be restarted")
        grace = min(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)), self.k.grace_period_s)
        return self.proc.kill_tree(grace)

    def _record_exit(self, code: int, start_error: bool) -> None:
        now = now_rfc3339()
        if start_error:
            term = {"exitCode": 128, "reason": "StartError", "message": self._start_error,
                    "startedAt": "1970-01-01T00:00:00Z", "finishedAt": now}
            self._event("Failed", f"Error: {self._start_error}", warning=True)
        else:
            started = (self.state.get("running") or {}).get("startedAt", now)
            if code < 0:
                exit_code, signal_no = 128 - code, -code
            else:
                exit_code, signal_no = code, None
            reason = "OOMKilled" if self.oom_requested else ("Completed" if exit_code == 0 else "Error")
            term = {"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": now}
            if signal_no is not None:
                term["signal"] = signal_no
            if self.proc is not None:
                term["containerID"] = f"process://{self.proc.pid}"
        self.oom_requested = False
        if self.proc is not None:
            self.proc.close()
        self.state = {"terminated": term}
        self.ready = False
        self.started = False

    def _restart_wanted(self, code: int) -> bool:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        exit_code = self.state["terminated"]["exitCode"]
        return policy == "Always" or (policy == "OnFailure" and exit_code != 0)

    def _back_off(self) -> None:
        base, cap = self.k.restart_backoff_s
        delay = min(base * (2 ** self.restart_count), cap)
        name = self.container["name"]
        self.publish()
        self.last_state = self.state
        self.proc = None
        if self.restart_count > 0:
            self.state = {"waiting": {"reason": "CrashLoopBackOff",
                                      "message": f"back-off {delay:g}s restarting failed container={name} "
                                                 f"pod={self.name}_{self.ns}({self.uid})"}}
            self.publish()
            self._event("BackOff", f"Back-off restarting failed container {name} in pod {self.name}_{self.ns}"
                                   f"({self.uid})", warning=True)
        self._sleep(delay)
        self.restart_count += 1
