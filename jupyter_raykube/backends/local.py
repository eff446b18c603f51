"""The embedded default: every Ray node is a `ray start --block` process on this machine.

Each node gets its own ports (several nodes share one host, and Ray's fixed defaults collide),
explicit `--memory`/`--object-store-memory` (each node would otherwise claim most of the RAM),
and a loopback address that Ray does not rewrite (Ray turns `127.0.0.1` into the host's network
address). Ray binds what it can to that address; its gRPC servers and metrics endpoints it binds
on all interfaces whatever it is told (README, "How it works"). The head runs with Ray's
autoscaler v2 switched on so `request_resources()` reaches the GCS, and with token
authentication, the token coming from the manager.
"""

from __future__ import annotations

import errno
import json
import os
import random
import secrets
import shutil
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Mapping
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import psutil
from jupyter_core.paths import jupyter_runtime_dir
from traitlets import Float, Int, Unicode, default

from ..errors import ClusterExistsError
from ..spec import ClusterSpec, HeadSpec, WorkerGroup
from . import processes
from .base import HEAD_GROUP, HEAD_RAY_ENV, Backend, BackendError, BackendNode, ClusterHandle, ClusterNotFound
from .local_state import LocalStateStore, Record

GiB = 1024**3
MiB = 1024**2
_NODE_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                    "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
# The head's dashboard Prometheus endpoint: a fixed port (44227) unless this variable says
# otherwise, so a second cluster would find it taken. (The head runs no Ray monitor, whose
# autoscaler metrics port would be the other one.)
_HEAD_PORT_ENV = ("DASHBOARD_METRIC_PORT",)
_NODE_SITE = Path(__file__).with_name("node_site")
_PORT_HOLD_S = 60.0  # how long a port handed to a starting node is not handed out again
# Where our ports come from: above the ranges Ray allots by itself (its workers' gRPC ports,
# `--min/--max-worker-port` 10002-19999, and Ray Client's per-connection servers, 23000-23999,
# fixed in ray/util/client/server/proxier.py) and below the kernel's ephemeral range, so no
# outgoing connection takes a port between our choice and Ray's bind.
_PORT_WINDOW_START = 24000


class LocalBackend(Backend):
    """Ray nodes as local processes, found again through state files in the runtime dir."""

    name = "local"

    ray_command = Unicode(config=True, help="""The `ray` executable that starts nodes.
        Default: the one installed next to this Python, so nodes run the kernel's Ray version.""")

    node_ip = Unicode("127.0.0.2", config=True, help="""Address the nodes advertise and bind
        (where Ray lets them: its gRPC servers and metrics endpoints listen on all interfaces).
        Ray rewrites 127.0.0.1 and localhost to the machine's network address, so the default is
        another loopback address. Set to a network address to let other machines join.""")

    state_dir = Unicode(config=True, help="""Where cluster state files and node logs live.
        Default: <jupyter runtime dir>/raykube, so every process of this user finds them.""")

    temp_root = Unicode("/tmp", config=True, help="""Parent of each cluster's Ray temp dir. Kept
        short because Ray puts Unix sockets there (paths are limited to 107 bytes).""")

    worker_memory = Int(2 * GiB, config=True, help="""Ray `memory` (bytes) of a worker node
        whose group does not set one.""")

    worker_object_store_memory = Int(512 * MiB, config=True, help="""Object store size (bytes)
        of a worker node whose group does not set one.""")

    head_memory = Int(1 * GiB, config=True, help="Ray `memory` (bytes) of the head node.")

    head_object_store_memory = Int(1 * GiB, config=True, help="""Object store of the head
        (bytes). A driver on this machine attaches to the head, so `ray.put` from a notebook
        stores objects here.""")

    stop_grace_s = Float(10.0, config=True, help="Seconds a node gets after SIGTERM before SIGKILL.")

    @default("ray_command")
    def _default_ray_command(self) -> str:
        beside_python = Path(sys.executable).with_name("ray")
        return str(beside_python) if beside_python.exists() else (shutil.which("ray") or "ray")

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return str(Path(jupyter_runtime_dir()) / "raykube")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = LocalStateStore(Path(self.state_dir) / "clusters")
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # node name -> our Popen
        # Ports handed to nodes that may not listen yet: a node starting beside it (several
        # start at once) must not be handed the same free-looking port.
        self._handed_out: dict[int, float] = {}
        self._ports_lock = threading.Lock()

    def launch_concurrency(self) -> int:
        """Nodes share this machine, and each start runs several Python processes that import
        Ray. Starting them one per core at a time made a burst wait for earlier nodes (Ray's
        own autoscaler starts them all at once); two per core starts a burst together without
        piling dozens of imports onto a laptop. The raylet's wait for its agents is raised to
        120 s (`_node_env`), so a slow start under load still joins."""
        return max(4, 2 * (os.cpu_count() or 1))

    # --- resources ---------------------------------------------------------------------------

    def node_resources(self, spec: ClusterSpec, group: WorkerGroup) -> dict[str, float]:
        resources = group.resources
        resources.setdefault("memory", self.worker_memory)
        return resources

    def _worker_sizes(self, group: WorkerGroup) -> tuple[int, int]:
        return (group.memory or self.worker_memory,
                group.object_store_memory or self.worker_object_store_memory)

    def _head_sizes(self, head: HeadSpec) -> tuple[int, int]:
        return (head.memory or self.head_memory,
                head.object_store_memory or self.head_object_store_memory)

    # --- lifecycle ---------------------------------------------------------------------------

    async def create_cluster(self, spec: ClusterSpec, *, owner: str, token: str,
                             owner_pid: int | None = None) -> ClusterHandle:
        """Start the head. `owner_pid`: the cluster dies with that process (reaped on exit, or
        at the next `discover()` if the process was killed)."""
        return await anyio.to_thread.run_sync(self._create_cluster, spec, owner, token, owner_pid)

    def _create_cluster(self, spec: ClusterSpec, owner: str, token: str, owner_pid: int | None) -> ClusterHandle:
        uid = secrets.token_hex(6)
        head_ports = self._hand_out_ports(3 + len(_HEAD_PORT_ENV))
        gcs_port, dashboard_port, client_port = head_ports[:3]
        owner_ref = processes.ProcessRef(owner_pid, _create_time(owner_pid)) if owner_pid else None
        record: Record = {
            "name": spec.name, "backend": self.name, "uid": uid, "owner": owner,
            "spec": spec.to_dict(), "created_at": time.time(), "token": token,
            "address": f"{self.node_ip}:{gcs_port}",
            "dashboard_address": f"{self.node_ip}:{dashboard_port}",
            "client_address": f"{self.node_ip}:{client_port}",
            "temp_dir": os.path.join(self.temp_root, f"raykube-{uid}"),
            "owner_process": owner_ref.__dict__ if owner_ref else None,
            "nodes": {},
        }
        try:
            self.store.create(record)
        except FileExistsError:
            raise ClusterExistsError(f"a cluster named {spec.name!r} already exists") from None
        shutil.rmtree(self._log_path(spec.name, "x").parent, ignore_errors=True)  # an older crash's
        handle = _handle_from(record)
        try:
            memory, object_store = self._head_sizes(spec.head)
            args = [self.ray_command, "start", "--head", "--block", f"--port={gcs_port}",
                    f"--dashboard-host={self.node_ip}", f"--dashboard-port={dashboard_port}",
                    f"--ray-client-server-port={client_port}", f"--num-cpus={spec.head.cpus}",
                    "--num-gpus=0", f"--memory={memory}", f"--object-store-memory={object_store}",
                    "--disable-usage-stats", "--no-monitor"]  # our autoscaler replaces Ray's monitor
            env = {**HEAD_RAY_ENV, **{k: str(p) for k, p in zip(_HEAD_PORT_ENV, head_ports[3:])}}
            self._start_node(handle, f"{spec.name}-head", HEAD_GROUP, args, env, reserved=head_ports)
        except BaseException:
            self._delete_cluster(handle)
            raise
        return handle

    async def create_worker(self, handle: ClusterHandle, group: WorkerGroup) -> BackendNode:
        return await anyio.to_thread.run_sync(self._create_worker, handle, group)

    def _create_worker(self, handle: ClusterHandle, group: WorkerGroup) -> BackendNode:
        memory, object_store = self._worker_sizes(group)
        args = [self.ray_command, "start", "--block", f"--address={handle.address}",
                f"--num-cpus={group.cpus}", f"--num-gpus={group.gpus}", f"--memory={memory}",
                f"--object-store-memory={object_store}"]
        if group.custom:
            args.append("--resources=" + _json(group.custom))
        name = f"{handle.name}-{group.name}-{_suffix()}"
        # The group's Ray node labels (what tasks' label_selector match), the way Ray's own
        # autoscaler sets them; `--labels` is ours, naming cluster and group.
        labels = {"RAY_OVERRIDE_LABELS": json.dumps(dict(group.labels))} if group.labels else {}
        return self._start_node(handle, name, group.name, args, labels)

    def _start_node(self, handle: ClusterHandle, name: str, group: str, args: list[str],
                    extra_env: Mapping[str, str], reserved: Collection[int] = ()) -> BackendNode:
        # The head's own ports are chosen before it listens on them: never hand them out again.
        taken = {int(a.rsplit(":", 1)[-1]) for a in (handle.address, handle.dashboard_address, handle.client_address)}
        ports = self._hand_out_ports(len(_NODE_PORT_FLAGS), avoid=taken | set(reserved))
        # One temp dir per node: nodes sharing one race for the same socket names.
        temp_dir = os.path.join(handle.details["temp_dir"], name.rsplit("-", 1)[-1])
        args = [*args, f"--node-ip-address={self.node_ip}", f"--temp-dir={temp_dir}",
                f"--labels=raykube.io/cluster={handle.name},raykube.io/group={group}",
                *(f"{flag}={port}" for flag, port in zip(_NODE_PORT_FLAGS, ports))]
        env = self._node_env(handle, name, group, extra_env)
        proc = processes.spawn(args, env=env, log_path=self._log_path(handle.name, name))
        ref = processes.ProcessRef.of(proc)
        self._children[name] = proc
        created = time.time()
        entry = {"group": group, "pid": ref.pid, "create_time": ref.create_time, "created_at": created}
        if self.store.update(handle.name, lambda r: r["nodes"].__setitem__(name, entry)) is None:
            processes.terminate_group(ref, child=proc, grace_s=self.stop_grace_s)
            raise ClusterNotFound(f"cluster {handle.name!r} was stopped while a node was starting")
        return BackendNode(name=name, group=group, phase="running", created_at=created)

    def _hand_out_ports(self, count: int, avoid: Collection[int] = frozenset()) -> list[int]:
        """Free ports not handed to another node in the last minute (Ray binds them seconds
        after they are chosen)."""
        with self._ports_lock:
            now = time.monotonic()
            self._handed_out = {p: t for p, t in self._handed_out.items() if now - t < _PORT_HOLD_S}
            ports = _free_ports(count, avoid=set(avoid) | set(self._handed_out))
            self._handed_out.update((p, now) for p in ports)
            return ports

    def _node_env(self, handle: ClusterHandle, node: str, group: str,
                  extra: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAYKUBE_"))}
        env.update(handle.spec.env)
        env.update({
            # A job's `python` (and `pip`) is the nodes' own, even for a server not started from an activated env.
            "PATH": os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)]),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": handle.details["token"],
            "RAY_enable_autoscaler_v2": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            # A raylet waits for its dashboard agent; on a busy laptop several agents starting
            # at once need longer than Ray's default before the raylet gives up.
            "RAY_agent_register_timeout_ms": "120000",
            "RAY_CLOUD_INSTANCE_ID": node,  # maps the Ray node back to this process
            "RAY_NODE_TYPE_NAME": group,
            processes.CLUSTER_MARKER: handle.details["uid"],
            processes.NODE_MARKER: node,
        })
        # First on every node process's path: a lazy rfc3987_syntax (node_site/), which saves
        # each Ray Python process about a second and a half of start-up in a Jupyter env.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(_NODE_SITE), env.get("PYTHONPATH"))))
        env.update(extra)
        return env

    async def remove_node(self, handle: ClusterHandle, node_name: str) -> None:
        await anyio.to_thread.run_sync(self._remove_node, handle.name, node_name)

    def _remove_node(self, cluster: str, node_name: str) -> None:
        record = self.store.read(cluster)
        entry = (record or {}).get("nodes", {}).get(node_name)
        if entry is not None:
            ref = processes.ProcessRef(entry["pid"], entry["create_time"])
            processes.terminate_group(ref, child=self._children.get(node_name), grace_s=self.stop_grace_s)
        processes.kill_marked(processes.NODE_MARKER, node_name)
        self._children.pop(node_name, None)
        self.store.update(cluster, lambda r: r["nodes"].pop(node_name, None))

    async def list_nodes(self, handle: ClusterHandle) -> list[BackendNode]:
        return await anyio.to_thread.run_sync(self._list_nodes, handle.name)

    def _list_nodes(self, cluster: str) -> list[BackendNode]:
        record = self.store.read(cluster)
        if record is None:
            raise ClusterNotFound(f"no cluster named {cluster!r}")
        nodes = []
        for name, entry in record["nodes"].items():
            alive = processes.ProcessRef(entry["pid"], entry["create_time"]).alive()
            message = "" if alive else self._exit_message(name)
            nodes.append(BackendNode(name=name, group=entry["group"], created_at=entry["created_at"],
                                     phase="running" if alive else "exited", message=message))
        return nodes

    def _exit_message(self, node_name: str) -> str:
        child = self._children.get(node_name)
        code = child.poll() if child is not None else None
        return f"process exited with code {code}" if code is not None else "process exited"

    async def save_spec(self, handle: ClusterHandle, spec: ClusterSpec) -> ClusterHandle:
        """Into the cluster's state file, which every process of this user reads."""
        def write() -> None:
            if self.store.update(handle.name, lambda record: record.__setitem__("spec", spec.to_dict())) is None:
                raise ClusterNotFound(f"no running cluster named {handle.name!r}")

        await anyio.to_thread.run_sync(write)
        return replace(handle, spec=spec)

    async def delete_cluster(self, handle: ClusterHandle) -> None:
        await anyio.to_thread.run_sync(self._delete_cluster, handle)

    def _delete_cluster(self, handle: ClusterHandle) -> None:
        record = self.store.read(handle.name)
        if record is not None and record.get("uid") != handle.details["uid"]:
            return  # a newer cluster took the name; ours is already gone
        nodes = (record or {}).get("nodes", {})
        workers = [(n, e) for n, e in nodes.items() if e["group"] != HEAD_GROUP]
        heads = [(n, e) for n, e in nodes.items() if e["group"] == HEAD_GROUP]
        crashed = bool(heads) and not any(
            processes.ProcessRef(e["pid"], e["create_time"]).alive() for _, e in heads)
        for batch in (workers, heads):  # workers first: they leave through the head's GCS
            processes.terminate_groups(
                [(processes.ProcessRef(e["pid"], e["create_time"]), self._children.pop(n, None))
                 for n, e in batch], grace_s=self.stop_grace_s)
        processes.kill_marked(processes.CLUSTER_MARKER, handle.details["uid"])
        shutil.rmtree(handle.details["temp_dir"], ignore_errors=True)
        logs = self._log_path(handle.name, "x").parent
        if crashed:  # keep what the nodes printed: it is how a crash gets explained
            self.log.warning("Ray cluster %s had crashed; its node logs are kept in %s", handle.name, logs)
        else:
            shutil.rmtree(logs, ignore_errors=True)
        self.store.delete(handle.name)

    async def discover(self) -> list[ClusterHandle]:
        return await anyio.to_thread.run_sync(self._discover)

    def _discover(self) -> list[ClusterHandle]:
        """Running clusters; a cluster whose head died, or whose owner process died, is reaped."""
        found = []
        for name in self.store.names():
            record = self.store.read(name)
            if record is None:
                continue
            handle = _handle_from(record)
            reason = self._stale_reason(record)
            if reason:
                self.log.info("Reaping Ray cluster %s: %s", name, reason)
                self._delete_cluster(handle)
                continue
            found.append(handle)
        return found

    def _stale_reason(self, record: Record) -> str:
        head = next((e for e in record["nodes"].values() if e["group"] == HEAD_GROUP), None)
        if head is None or not processes.ProcessRef(head["pid"], head["create_time"]).alive():
            age = time.time() - record["created_at"]
            if head is None and age < 60:
                return ""  # still being created by another process
            return "its head process is gone"
        owner = record.get("owner_process")
        if owner and not processes.ProcessRef(owner["pid"], owner["create_time"]).alive():
            return f"the process that started it (PID {owner['pid']}) has exited"
        return ""

    async def logs(self, handle: ClusterHandle, node_name: str, *, tail: int = 200) -> str:
        return await anyio.to_thread.run_sync(self._tail, self._log_path(handle.name, node_name), tail)

    def _log_path(self, cluster: str, node: str) -> Path:
        return Path(self.state_dir) / "logs" / cluster / f"{node}.log"

    @staticmethod
    def _tail(path: Path, lines: int) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _handle_from(record: Record) -> ClusterHandle:
    spec = ClusterSpec.decode(record["spec"])
    details = {k: record[k] for k in ("uid", "temp_dir", "token")}
    return ClusterHandle(name=record["name"], backend=record["backend"], spec=spec,
                         address=record["address"], dashboard_address=record["dashboard_address"],
                         client_address=record["client_address"], owner=record["owner"],
                         created_at=record["created_at"], details=details)


def _free_ports(count: int, avoid: Collection[int] = frozenset(), window: range | None = None) -> list[int]:
    """`count` distinct TCP ports free on every address of this machine, none in `avoid`.

    Free on the node address alone is not enough: Ray binds its gRPC servers on all interfaces,
    and its Ray Client proxy and dashboard agent bind 127.0.0.1 beside the node address. So each
    port is checked by binding the wildcard (IPv4 and IPv6 at once), and held until all are
    chosen so none repeats. `window`: where to look (default: from 24000 to the ephemeral range).
    """
    window = window or range(_PORT_WINDOW_START, _ephemeral_low())
    low, high = window.start, window.stop
    with ExitStack() as stack:
        ports: list[int] = []
        for _ in range(20 * (high - low)):
            if len(ports) == count:
                return ports
            port = random.randrange(low, high)
            if port in avoid or port in ports:
                continue
            sock = _bind_everywhere(port)
            if sock is not None:
                stack.enter_context(sock)
                ports.append(port)
        if len(ports) == count:
            return ports
    raise BackendError(f"no {count} free TCP ports between {low} and {high - 1} on this machine")


def _bind_everywhere(port: int) -> socket.socket | None:
    """A socket bound to `port` on every address (dual-stack `::`, or `0.0.0.0` where the
    machine has no IPv6), or None when something on the machine already uses the port."""
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
            return sock
        except OSError as err:
            sock.close()
            if err.errno == errno.EADDRINUSE:
                return None
    return None


def _ephemeral_low() -> int:
    """First port of the kernel's range for outgoing connections (Linux), else IANA's."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 49152
    return low if low > _PORT_WINDOW_START + 1000 else 65536


def _create_time(pid: int) -> float:
    return psutil.Process(pid).create_time()


def _suffix() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(5))


def _json(mapping: Mapping[str, float]) -> str:
    return json.dumps(dict(mapping), sort_keys=True)
