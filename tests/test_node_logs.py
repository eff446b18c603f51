"""A node's logs outlive it: a worker killed while its task prints leaves its last lines (the
task's stdout file and the raylet's) in the cluster's events, read before its process is
removed. Real local cluster, real job (submitted through Ray's Jobs API, jobs.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from jupyter_raykube.backends import processes
from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.jobs import RayJobs
from jupyter_raykube.node_logs import last_lines
from jupyter_raykube.spec import ClusterSpec, WorkerGroup

from .conftest import wait_for

CHATTY = """
import time, ray
@ray.remote(num_cpus=1)
def chatty():
    for i in range(100000):
        print(f"task line {i}", flush=True)
        time.sleep(0.5)
ray.init()
ray.get(chatty.remote())
"""


def test_a_node_killed_mid_task_leaves_its_last_log_lines_in_the_events(blocking_manager: BlockingManager) -> None:
    manager = blocking_manager.manager
    cluster = blocking_manager.call(manager.create, ClusterSpec(
        name="t-nodelogs", groups=(WorkerGroup("cpu", cpus=1, min=1, max=1),)))
    try:
        jobs = RayJobs(cluster.handle.dashboard_address, manager.token)
        job = blocking_manager.call(jobs.submit, {"entrypoint": "python -c " + shlex.quote(CHATTY)})
        wait_for(lambda: "task line 3" in blocking_manager.call(jobs.logs, job["id"]), 240,
                 "the task to print on its worker")
        worker = next(n["name"] for n in cluster.snapshot()["nodes"] if n["group"] == "cpu")
        for proc in processes.find_marked(processes.NODE_MARKER, worker):
            proc.kill()  # SIGKILL: the node says nothing more

        def failure_event() -> str:
            return next((e["message"] for e in cluster.snapshot()["events"]
                         if e["kind"] == "node_failed" and worker in e["message"]), "")

        message = wait_for(failure_event, 90, f"a node_failed event for {worker}")
        assert "its last log lines" in message, message
        assert re.search(r"--- worker-\S+\.out ---\n(.*\n)*task line \d+", message), message
        assert "--- raylet.out ---" in message, message
    finally:
        blocking_manager.call(manager.stop, "t-nodelogs")


def test_a_failure_report_reads_only_the_end_of_a_huge_log(tmp_path: Path) -> None:
    """A worker's stdout can be gigabytes: the report reads its last window, whole lines only."""
    log = tmp_path / "worker-1.out"
    with log.open("w") as out:
        for i in range(200_000):  # about 3 MB
            out.write(f"line {i} of the task's output\n")
    assert last_lines(log, 3) == [f"line {i} of the task's output" for i in (199_997, 199_998, 199_999)]
    window = last_lines(log, 10**6, window=1000)
    assert window[-1] == "line 199999 of the task's output" and window[0].startswith("line ")
    assert len(window) < 40  # only the window was read
    assert last_lines(tmp_path / "worker-1.out", 2, window=10**9)[-1].endswith("199999 of the task's output")
