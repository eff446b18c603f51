"""Container probes (readiness, liveness, startup) run by the process kubelet.

``httpGet`` and ``tcpSocket`` go to the Pod IP (or ``httpGet.host``) and the named or numbered
port, as the kubelet does; ``exec`` runs the command locally with the container's environment
(so ``localhost`` in an exec probe means the host, where all Pods live). ``grpc`` probes are not
implemented and always fail with a message saying so, rather than silently passing.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .process import StartError, resolve_executable


@dataclass
class ProbeResult:
    ok: bool
    message: str = ""


def _port(container: Mapping[str, Any], port: Any) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    if str(port).isdigit():
        return int(port)
    raise ValueError(f"port {port!r} is not a named container port")


def run_probe(probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str, env: Mapping[str, str],
              cwd: Path, executables: Mapping[str, str]) -> ProbeResult:
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if probe.get("tcpSocket") is not None:
            spec = probe["tcpSocket"]
            with socket.create_connection((spec.get("host") or pod_ip, _port(container, spec.get("port"))),
                                          timeout=timeout):
                return ProbeResult(True)
        if probe.get("httpGet") is not None:
            spec = probe["httpGet"]
            host, port = spec.get("host") or pod_ip, _port(container, spec.get("port"))
            if str(spec.get("scheme", "HTTP")).upper() == "HTTPS":
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    host, port, timeout=timeout, context=ssl._create_unverified_context())
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
                conn.request("GET", spec.get("path") or "/", headers={"User-Agent": "kube-probe/1.37", **headers})
                status = conn.getresponse().status
            finally:
                conn.close()
            if 200 <= status < 400:
                return ProbeResult(True)
            return ProbeResult(False, f"HTTP probe failed with statuscode: {status}")
        if probe.get("exec") is not None:
            argv = list(probe["exec"].get("command") or [])
            if not argv:
                return ProbeResult(False, "exec probe without command")
            argv[0] = resolve_executable(argv[0], env.get("PATH", ""), executables)
            done = subprocess.run(argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout)
            if done.returncode == 0:
                return ProbeResult(True)
            return ProbeResult(False, (done.stdout + done.stderr).decode(errors="replace").strip()[-500:]
                               or f"command exited with {done.returncode}")
        if probe.get("grpc") is not None:
            return ProbeResult(False, "grpc probes are not supported by the process kubelet")
        return ProbeResult(False, "probe has no handler")
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"command timed out after {timeout:g}s")
    except (OSError, ValueError, http.client.HTTPException, StartError) as exc:
        return ProbeResult(False, str(exc))


class ProbeState:
    """Success/failure thresholds of one probe; ``observe`` says when the verdict flips."""

    def __init__(self, probe: Mapping[str, Any], initially: bool) -> None:
        self.probe = probe
        self.passing = initially
        self._successes = 0
        self.failures = 0

    def observe(self, result: ProbeResult) -> bool:
        """Record one result; True when ``passing`` changed."""
        if result.ok:
            self._successes += 1
            self.failures = 0
            if not self.passing and self._successes >= int(self.probe.get("successThreshold") or 1):
                self.passing = True
                return True
        else:
            self.failures += 1
            self._successes = 0
            if self.passing and self.failures >= int(self.probe.get("failureThreshold") or 3):
                self.passing = False
                return True
        return False
