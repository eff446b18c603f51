"""The local backend's network, with real Ray processes: what a cluster listens on."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import ray

from jupyter_raykube.backends import processes
from jupyter_raykube.backends.base import HEAD_GROUP, BackendError, ClusterHandle
from jupyter_raykube.backends.local import _HEAD_PORT_ENV, _NODE_PORT_FLAGS, _free_ports
from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.connect import connect_driver, disconnect_driver
from jupyter_raykube.spec import ClusterSpec, WorkerGroup

from .conftest import read_until_ready, wait_for

# Listeners Ray 2.60 puts beyond the node address whatever it is told: role -> where in Ray.
# The C++ gRPC servers are built on "0.0.0.0:PORT" (src/ray/rpc/grpc_server.cc, GrpcServer::Run;
# `gcs_server`/`raylet --helpfull` list no bind flag); the Python ones bind the wildcard unless
# the node address is 127.0.0.1, which `ray start` rewrites to the machine's network address.
RAY_WILDCARD = {
    "gcs": "C++ GrpcServer",
    "node manager": "C++ GrpcServer",
    "object manager": "C++ GrpcServer",
    "core worker": "C++ GrpcServer of every worker process",
    "dashboard agent grpc": "ray/dashboard/agent.py:165",
    "metrics export": "ray/dashboard/modules/reporter/reporter_agent.py:534",
    "dashboard metrics": "ray/dashboard/head.py:361",
}
# ... and on 127.0.0.1 beside (or instead of) the node address: still this machine only.
RAY_LOOPBACK = {
    "ray client proxy": "ray/util/client/server/proxier.py:930",
    "dashboard agent http": "ray/dashboard/http_server_agent.py:63",
    "ray client specific server": "ray/util/client/server/proxier.py:234, 373 (ports 23000-23999)",
}
WORKER_PORTS = range(10002, 20000)  # `ray start --min/--max-worker-port` defaults
SPECIFIC_SERVER_PORTS = range(23000, 24000)  # MIN/MAX_SPECIFIC_SERVER_PORT in proxier.py
_FLAG_ROLES = dict(zip(_NODE_PORT_FLAGS, ("node manager", "object manager", "dashboard agent http",
                                          "dashboard agent grpc", "runtime env agent", "metrics export")))
_HEAD_ROLES = {"--port": "gcs", "--dashboard-port": "dashboard", "--ray-client-server-port": "ray client proxy",
               **dict(zip(_HEAD_PORT_ENV, ("dashboard metrics",)))}


@dataclass(frozen=True)
class Listener:
    ip: str
    port: int
    pid: int
    cmdline: str
    role: str

    def __str__(self) -> str:
        return f"{self.ip}:{self.port} ({self.role}) pid {self.pid}: {self.cmdline[:160]}"


@dataclass(frozen=True)
class Census:
    node_ip: str
    address: str
    listeners: list[Listener]


@pytest.fixture(scope="module")
def census() -> Iterator[Census]:
    """A head, a worker, a driver that ran a task on the worker, and a Ray Client connection."""
    manager = BlockingManager()
    try:
        spec = ClusterSpec(name="t-net", groups=(WorkerGroup("cpu", cpus=1, min=1, max=1),))
        cluster = manager.call(manager.manager.create, spec)
        handle = cluster.handle
        wait_for(lambda: any(n["group"] == "cpu" and n["state"] == "running" for n in cluster.snapshot()["nodes"]),
                 120, "the worker node to join")
        connect_driver(handle.address, manager.manager.token)
        assert ray.get(ray.remote(num_cpus=1)(lambda: 1).remote()) == 1  # the head has no CPUs: on the worker
        with _ray_client(handle, manager.manager.token):
            record = manager.manager.backend.store.read("t-net")
            yield Census(manager.manager.backend.node_ip, handle.address, _listeners(record))
    finally:
        disconnect_driver()
        manager.close()


def _ray_client(handle: ClusterHandle, token: str) -> subprocess.Popen[str]:
    """A Ray Client driver in its own process, holding its connection (and so the cluster's
    per-connection specific server) until its stdin closes."""
    script = textwrap.dedent("""
        import os, sys, ray
        from jupyter_raykube.connect import connect_driver
        connect_driver(sys.argv[1], os.environ["T_TOKEN"], client_address=sys.argv[2])
        print("READY", ray.get(ray.remote(lambda: 6 * 7).remote()), flush=True)
        sys.stdin.read()
        """)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "T_TOKEN": token}
    proc = subprocess.Popen([sys.executable, "-c", script, handle.address, handle.client_address], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = read_until_ready(proc)
    if not output.endswith("READY 42\n"):
        proc.kill()
        logs = "".join(f"\n== {p}\n{p.read_text(errors='replace')[-2000:]}"
                       for p in Path(handle.details["temp_dir"]).glob("*/session_latest/logs/ray_client_server*"))
        raise AssertionError(output[-3000:] + logs)
    return proc


def _listeners(record: dict) -> list[Listener]:
    """Every LISTEN socket of the cluster's processes, each named by the Ray component it is."""
    roles: dict[int, str] = {}
    for entry in record["nodes"].values():
        start = psutil.Process(entry["pid"])
        flags = dict(a.split("=", 1) for a in start.cmdline() if a.startswith("--") and "=" in a)
        env = start.environ()
        named = {**_FLAG_ROLES, **(_HEAD_ROLES if entry["group"] == HEAD_GROUP else {})}
        for key, role in named.items():
            value = flags.get(key) or env.get(key)
            if value:
                roles[int(value)] = role
    found = []
    for proc in _cluster_processes(record["uid"]):
        try:
            cmdline = " ".join(proc.cmdline())
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                port = conn.laddr.port
                role = roles.get(port) or ("core worker" if port in WORKER_PORTS else
                                           "ray client specific server" if port in SPECIFIC_SERVER_PORTS else "?")
                found.append(Listener(_plain(conn.laddr.ip), port, proc.pid, cmdline, role))
    return found


def _cluster_processes(uid: str) -> list[psutil.Process]:
    """The marked processes and their descendants: Ray's agents retitle themselves
    (setproctitle), which overwrites the environment that carries the marker."""
    found = {p.pid: p for p in processes.find_marked(processes.CLUSTER_MARKER, uid)}
    for proc in list(found.values()):
        try:
            found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.Error:
            pass
    return list(found.values())


def _plain(ip: str) -> str:
    """`::ffff:127.0.0.2` (IPv4 on a dual-stack socket) as `127.0.0.2`."""
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def _wildcard(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_unspecified


def test_every_listener_is_on_the_node_address_or_where_ray_insists(census: Census) -> None:
    """Everything Ray lets us place is on the node address; the rest is exactly Ray's list."""
    roles = {listener.role for listener in census.listeners}
    assert {"gcs", "node manager", "object manager", "core worker", "dashboard", "runtime env agent",
            "ray client proxy", "ray client specific server"} <= roles, roles
    assert sum(1 for listener in census.listeners if listener.role == "node manager") == 2  # head and worker
    offenders = [listener for listener in census.listeners if not _allowed(listener, census.node_ip)]
    assert not offenders, "listening beyond what Ray 2.60 insists on:\n" + "\n".join(map(str, offenders))
    for role in ("dashboard", "runtime env agent", "ray client proxy", "dashboard agent http"):
        assert any(l.ip == census.node_ip for l in census.listeners if l.role == role), role
    beyond = {listener.role for listener in census.listeners if listener.ip != census.node_ip}
    assert beyond == set(RAY_WILDCARD) | set(RAY_LOOPBACK), (
        "Ray now places other listeners: update RAY_WILDCARD, RAY_LOOPBACK and the README")


def _allowed(listener: Listener, node_ip: str) -> bool:
    if listener.ip == node_ip:
        return True
    if listener.role in RAY_WILDCARD:
        return _wildcard(listener.ip)
    return listener.role in RAY_LOOPBACK and listener.ip == "127.0.0.1"

_NO_TOKEN_SCRIPT = textwrap.dedent("""
    import sys, time
    from jupyter_raykube.connect import RayAuthError, connect_driver
    for token in ("", "0" * 64):
        start = time.monotonic()
        try:
            connect_driver(sys.argv[1], token)
        except RayAuthError as err:
            print(f"REFUSED in {time.monotonic() - start:.1f} s: {err}", flush=True)
    """)


def test_a_driver_without_the_token_is_told_so_quickly(census: Census) -> None:
    """No token, and a wrong one: each refused within seconds (ray.init alone retries ~20 s and
    then says "Failed to connect"), saying that authentication failed and how to get the token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", _NO_TOKEN_SCRIPT, census.address], env=env,
                         capture_output=True, text=True, timeout=120)
    refusals = [line for line in out.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(refusals) == 2, out.stdout + out.stderr[-3000:]
    for line in refusals:
        seconds = float(line.split()[2])
        assert seconds < 5, line
        assert "authentication failed" in line and "%raycluster attach NAME" in line, line
    assert "refused this process's Ray token" in refusals[1]


def _all_free(window: range) -> bool:
    """Every port of `window` free now (_free_ports raises where some other process holds one)."""
    try:
        return len(_free_ports(len(window), window=window)) == len(window)
    except BackendError:
        return False


def test_ports_are_free_on_every_address() -> None:
    """A port taken on 127.0.0.1 or on another loopback address is never handed out, though
    it is free on the node address (how a head once died: its Ray Client proxy binds 127.0.0.1
    too)."""
    window = next(w for w in (range(p, p + 12) for p in range(40000, 60000, 12))
                  if _all_free(w))  # twelve ports free right now
    with ExitStack() as stack:
        for port, host in zip(window[:6], ("127.0.0.1", "127.0.0.3") * 3):
            sock = stack.enter_context(socket.socket())
            sock.bind((host, port))
            sock.listen()
        for _ in range(20):
            assert sorted(_free_ports(6, window=window)) == list(window[6:])
