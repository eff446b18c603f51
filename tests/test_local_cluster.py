"""The local backend with real Ray processes: the magic, scaling, isolation, attach, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from jupyter_raykube.autoscaler.demand import GcsReader
from jupyter_raykube.backends import processes
from jupyter_raykube.backends.local import LocalBackend, _free_ports
from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.client import LocalClient
from jupyter_raykube.magics import RayClusterMagics
from jupyter_raykube.spec import ClusterSpec, WorkerGroup

from .conftest import cluster_processes, read_until_ready, wait_for

@pytest.fixture
def shell(blocking_manager: BlockingManager) -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.register_magics(RayClusterMagics(ip, client=LocalClient(blocking_manager)))
    yield ip
    if ray.is_initialized():
        ray.shutdown()


def _alive_workers(address: str, group: str) -> list:
    return [n for n in GcsReader(address).read().nodes if n.node_type == group and n.status != "dead"]


def test_magic_runs_ray_programs_and_stops_cleanly(shell: InteractiveShell, runtime_dir: Path) -> None:
    with capture_output() as shown:
        status = shell.run_line_magic("raycluster", "start t-magic --cpu-workers 0:2 --idle-timeout 30")
    assert status.snapshot["state"] == "running"
    # The wait showed its steps on one status line (a progress bar in HTML), updated in place.
    lines = [(o.data["text/plain"], o.data.get("text/html", "")) for o in shown.outputs]
    assert any("waiting for the head node to join" in text and "<progress" in markup for text, markup in lines), lines
    assert lines[-1][0].startswith("Starting Ray cluster t-magic: done in ")
    assert ray.is_initialized()
    cluster = shell.run_line_magic("raycluster", "status").snapshot
    assert cluster["name"] == "t-magic" and cluster["address"] == ray.get_runtime_context().gcs_address

    shell.run_cell(textwrap.dedent("""
        import time, ray
        @ray.remote
        def f(i):
            time.sleep(1)
            return i
        squares = ray.get([f.remote(i) for i in range(4)])

        @ray.remote
        class Counter:
            def __init__(self):
                self.n = 0
            def incr(self):
                self.n += 1
            def read(self):
                return self.n
        counters = [Counter.remote() for _ in range(4)]
        [c.incr.remote() for c in counters]
        counts = ray.get([c.read.remote() for c in counters])
        """), store_history=False).raise_error()
    assert shell.user_ns["squares"] == [0, 1, 2, 3]
    assert shell.user_ns["counts"] == [1, 1, 1, 1]

    snapshot = shell.run_line_magic("raycluster", "status").snapshot
    cpu = next(g for g in snapshot["groups"] if g["name"] == "cpu")
    assert 1 <= cpu["nodes"] + cpu["starting"] <= 2  # the autoscaler grew the group within max
    assert any(e["kind"] == "scale_up" for e in snapshot["events"])
    worker = next(n for n in snapshot["nodes"] if n["group"] == "cpu" and n["state"] == "running")
    assert worker["resources_total"]["CPU"] == 1 and worker["object_store_total_bytes"] > 0
    del shell.user_ns["counters"]

    uid = LocalBackend().store.read("t-magic")["uid"]
    shell.run_line_magic("raycluster", "stop")
    assert not ray.is_initialized()
    assert cluster_processes(uid) == []
    assert not (runtime_dir / "raykube" / "clusters" / "t-magic.json").exists()


def test_scale_two_clusters_and_a_foreign_ray(shell: InteractiveShell, tmp_path: Path) -> None:
    foreign = _start_foreign_ray(tmp_path)
    try:
        shell.run_line_magic("raycluster", "start t-one --no-connect")
        shell.run_line_magic("raycluster", "start t-two --no-connect")
        # A Ray Client driver on each at once: each reaches its own cluster, none collides.
        clients = [_ray_client_driver(shell, name) for name in ("t-one", "t-two")]
        for (proc, address), name in zip(clients, ("t-one", "t-two")):
            out, _ = proc.communicate(timeout=180)
            assert f"RAN ON {address}" in out, f"{name}: {out[-3000:]}"
        one = shell.run_line_magic("raycluster", "scale cpu 2 --cluster t-one").snapshot
        assert next(g for g in one["groups"] if g["name"] == "cpu")["nodes"] == 2
        workers = _alive_workers(one["address"], "cpu")
        assert len(workers) == 2 and all(w.total["CPU"] == 1 for w in workers)

        two = shell.run_line_magic("raycluster", "status t-two").snapshot
        assert two["address"] != one["address"]
        assert _alive_workers(two["address"], "cpu") == []  # t-one's workers joined t-one only

        shell.run_line_magic("raycluster", "scale cpu 0 --cluster t-one")
        wait_for(lambda: not _alive_workers(one["address"], "cpu"), what="t-one's workers to leave")

        backend = LocalBackend()
        uid_one, uid_two = backend.store.read("t-one")["uid"], backend.store.read("t-two")["uid"]
        shell.run_line_magic("raycluster", "stop t-one")
        assert cluster_processes(uid_one) == []
        assert cluster_processes(uid_two)  # the other cluster is untouched
        shell.run_line_magic("raycluster", "stop t-two")
        assert cluster_processes(uid_two) == []
        assert foreign.poll() is None, (tmp_path / "foreign.log").read_text()[-3000:]
    finally:
        processes.terminate_group(processes.ProcessRef.of(foreign), child=foreign, grace_s=30)


_RAY_CLIENT_SCRIPT = textwrap.dedent("""
    import os, sys, ray
    from jupyter_raykube.connect import connect_driver
    connect_driver(sys.argv[1], os.environ["T_TOKEN"], client_address=sys.argv[2])
    where = ray.remote(num_cpus=0)(lambda: ray.get_runtime_context().gcs_address)
    print("RAN ON", ray.get(where.remote()), flush=True)
    """)


def _ray_client_driver(shell: InteractiveShell, name: str) -> tuple[subprocess.Popen[str], str]:
    """A process that connects to cluster `name` through Ray Client and runs a task there."""
    snap = shell.run_line_magic("raycluster", f"status {name}").snapshot
    record = LocalBackend().store.read(name)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "T_TOKEN": record["token"]}
    proc = subprocess.Popen([sys.executable, "-c", _RAY_CLIENT_SCRIPT, snap["address"], record["client_address"]],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, snap["address"]


def test_attach_from_second_process_leaves_cluster_running(shell: InteractiveShell) -> None:
    shell.run_line_magic("raycluster", "start t-attach --cpu-workers 1:1 --no-connect")
    script = textwrap.dedent("""
        import ray
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "jupyter_raykube")
        ip.run_line_magic("raycluster", "attach t-attach")
        print("RESULT", ray.get(ray.remote(lambda: 41 + 1).remote()))
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert "RESULT 42" in out.stdout, out.stderr[-3000:]
    record = LocalBackend().store.read("t-attach")
    assert record is not None and cluster_processes(record["uid"]), "attach must not stop the cluster"
    shell.run_line_magic("raycluster", "stop t-attach")


@pytest.mark.parametrize("line,fragment", [
    ("start t-bad --cpu-workers 5:2", "--cpu-workers='5:2'"),
    ("start t-bad --worker-cpus -1", "--worker-cpus='-1'"),
    ("start t-bad --idle-timeout soon", "--idle-timeout='soon'"),
    ("start Bad_Name", "name='Bad_Name'"),
    ("scale tpu 1 --cluster t-none", "no running cluster named 't-none'"),
    ("frobnicate", "invalid choice"),
])
def test_bad_arguments_are_clear_and_start_nothing(shell: InteractiveShell, runtime_dir: Path,
                                                   line: str, fragment: str) -> None:
    before = {p.name for p in (runtime_dir / "raykube" / "clusters").glob("*.json")}
    with pytest.raises(UsageError) as err:
        shell.run_line_magic("raycluster", line)
    assert fragment in str(err.value)
    assert "usage: %raycluster" in str(err.value) or "no running cluster" in str(err.value)
    after = {p.name for p in (runtime_dir / "raykube" / "clusters").glob("*.json")}
    assert after == before


def test_unknown_group_and_duplicate_name(shell: InteractiveShell) -> None:
    shell.run_line_magic("raycluster", "start t-dup --no-connect")
    uid = LocalBackend().store.read("t-dup")["uid"]
    try:
        with pytest.raises(UsageError, match="group='tpu'.*cpu, gpu"):
            shell.run_line_magic("raycluster", "scale tpu 1 --cluster t-dup")
        with pytest.raises(UsageError, match="already exists"):
            shell.run_line_magic("raycluster", "start t-dup --no-connect")
        assert LocalBackend().store.read("t-dup")["uid"] == uid  # the first one is untouched
    finally:
        shell.run_line_magic("raycluster", "stop t-dup")
    assert cluster_processes(uid) == []


_OWNER_SCRIPT = textwrap.dedent("""
    import time
    from jupyter_raykube.blocking import BlockingManager
    from jupyter_raykube.spec import default_spec
    bm = BlockingManager()
    bm.call(bm.manager.create, default_spec("{name}").with_group_range("cpu", 1, 1))
    print("READY", flush=True)
    time.sleep(600)
    """)


def _start_owner(name: str) -> tuple[subprocess.Popen[str], str]:
    """A separate process that starts a cluster and then just waits."""
    proc = subprocess.Popen([sys.executable, "-c", _OWNER_SCRIPT.format(name=name)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = read_until_ready(proc)
    if not output.splitlines()[-1:] or not output.splitlines()[-1].startswith("READY"):
        proc.kill()
        raise AssertionError(output[-3000:])
    return proc, LocalBackend().store.read(name)["uid"]


def test_cluster_of_a_killed_process_is_reaped(blocking_manager: BlockingManager) -> None:
    proc, uid = _start_owner("t-orphan")
    assert cluster_processes(uid)
    proc.kill()  # SIGKILL: no atexit, no cleanup in that process
    proc.wait()
    names = [c.name for c in blocking_manager.call(blocking_manager.manager.list)]
    assert "t-orphan" not in names
    assert cluster_processes(uid) == []


def test_sigterm_stops_the_process_clusters() -> None:
    proc, uid = _start_owner("t-sigterm")
    proc.terminate()
    assert proc.wait(60) == 128 + signal.SIGTERM
    assert cluster_processes(uid) == []
    assert LocalBackend().store.read("t-sigterm") is None


def _start_foreign_ray(tmp_path: Path) -> subprocess.Popen[bytes]:
    """A user's own Ray head, started without us, to prove our stop leaves it alone."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYKUBE_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    ports = _free_ports(3)
    short_dir = tempfile.mkdtemp(prefix="rkf-", dir="/tmp")  # Ray's socket paths must stay < 108 bytes
    args = [ray_bin, "start", "--head", "--block", f"--port={ports[0]}", "--num-cpus=0",
            "--include-dashboard=false", "--node-ip-address=127.0.0.3", f"--temp-dir={short_dir}",
            f"--dashboard-agent-listen-port={ports[1]}", f"--ray-client-server-port={ports[2]}",
            "--memory=500000000", "--object-store-memory=100000000"]
    with open(tmp_path / "foreign.log", "wb") as log:
        proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    log = tmp_path / "foreign.log"
    wait_for(lambda: proc.poll() is not None or "Ray runtime started" in log.read_text(errors="replace"),
             120, "the foreign Ray head to finish starting")  # start ours only after it is up
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc


def test_head_crash_fails_the_cluster_and_removes_the_rest(blocking_manager: BlockingManager) -> None:
    manager = blocking_manager.manager
    spec = ClusterSpec(name="t-crash", groups=(WorkerGroup("cpu", cpus=1, min=1, max=1),))
    cluster = blocking_manager.call(manager.create, spec)
    uid = cluster.handle.details["uid"]
    head = manager.backend.store.read("t-crash")["nodes"]["t-crash-head"]
    os.killpg(head["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while cluster.state != "failed":
        assert time.monotonic() < deadline, cluster.snapshot()
        time.sleep(0.2)
    assert "head node t-crash-head stopped" in cluster.error
    assert any(e["kind"] == "error" for e in cluster.snapshot()["events"])
    wait_for(lambda: cluster_processes(uid) == [], 30, "the worker to be removed")
    blocking_manager.call(manager.stop, "t-crash")  # the failed record goes away on request
    assert "t-crash" not in [c.name for c in blocking_manager.call(manager.list)]
