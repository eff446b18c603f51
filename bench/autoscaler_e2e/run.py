"""End to end on one machine: our embedded autoscaler vs Ray's own (AutoscalingCluster, v2).

Same node type (1-CPU workers, max 3, head with 0 CPUs), same idle timeout (6 s), same work:
N tasks of 1 CPU that each sleep 3 s. Measured per run: seconds from submitting the tasks to
the first and to the last of them running, and from the work ending to every worker gone.
Three setups, alternated in each round so machine noise hits all: ours cold, Ray cold, and
ours with a warm pool of 1 (`warm=1`: one idle worker kept ready before the tasks come).
First, one cold scale-up of ours, one task, is timed step by step (`timeline.py`).

Both clusters are started and stopped by PID (never `ray stop`), but they compete for the
same cores as anything else: run it alone, under the test lock:

    flock /tmp/raykube-ray-tests.lock nice .venv/bin/python -m bench.autoscaler_e2e.run [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import ray

from . import ray_side, timeline
from .tasks import work

RESULTS = Path(__file__).resolve().parents[1] / "results" / "autoscaler_e2e.json"
IDLE_S = 6.0
MAX_WORKERS = 3
WARM_SETTLE_S = 5.0  # from the warm node joining Ray to the tasks' submit
KEYS = ("submit_to_first_running_s", "submit_to_all_running_s", "idle_to_scaled_down_s")


def worker_count(address: str) -> int:
    from jupyter_raykube.autoscaler.demand import GcsReader

    return sum(1 for n in GcsReader(address).read().nodes
               if n.status != "dead" and n.total.get("CPU", 0) > 0)


def measure(address: str, tasks: int, *, keep: int = 0) -> dict[str, float]:
    """Submit the tasks, then wait for the workers to go back to `keep` (the warm pool)."""
    submitted = time.time()
    starts = ray.get([work.remote() for _ in range(tasks)], timeout=300)
    ended = time.time()
    row = {"submit_to_first_running_s": min(starts) - submitted, "submit_to_all_running_s": max(starts) - submitted}
    while worker_count(address) > keep:
        time.sleep(0.1)
        if time.time() - ended > 120:
            raise RuntimeError("workers were not removed within 120 s")
    row["idle_to_scaled_down_s"] = time.time() - ended
    return row


def run_ours(tasks: int, warm: int = 0) -> dict[str, float]:
    from jupyter_raykube.blocking import BlockingManager
    from jupyter_raykube.connect import connect_driver
    from jupyter_raykube.spec import ClusterSpec, WorkerGroup

    bm = BlockingManager()
    try:
        spec = ClusterSpec(name="bench-e2e", idle_timeout_s=IDLE_S,
                           groups=(WorkerGroup("cpu", cpus=1, min=0, max=MAX_WORKERS, warm=warm),))
        cluster = bm.call(bm.manager.create, spec)
        connect_driver(cluster.handle.address, bm.manager.token)
        deadline = time.time() + 120
        while worker_count(cluster.handle.address) < warm:  # the pool is ready before work comes
            if time.time() > deadline:
                raise RuntimeError("the warm pool did not fill within 120 s")
            time.sleep(0.1)
        # A warm pool is there long before the work comes: let the node's own start-up (its
        # agents, its prestarted worker process) finish, as it would between two notebook cells.
        time.sleep(WARM_SETTLE_S if warm else 0.0)
        return measure(cluster.handle.address, tasks, keep=warm)
    finally:
        ray.shutdown()
        bm.close()


def run_ray(tasks: int) -> dict[str, float]:
    worker = {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": MAX_WORKERS}
    with ray_side.autoscaling_cluster(worker, IDLE_S) as address:
        try:
            ray_side.connect(address)
            return measure(address, tasks)
        finally:
            ray.shutdown()


def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    return {k: statistics.median(r[k] for r in rows) for k in KEYS} | {"raw": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=3)
    args = parser.parse_args()
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    steps = timeline.one_scale_up()
    print("timeline:", json.dumps(steps, indent=1), flush=True)
    ours, theirs, warm = [], [], []
    for i in range(args.runs):  # alternate so machine noise hits all three
        ours.append(run_ours(args.tasks))
        theirs.append(run_ray(args.tasks))
        warm.append(run_ours(args.tasks, warm=1))
        print(f"run {i + 1}: ours {ours[-1]}\n  ray {theirs[-1]}\n  ours warm=1 {warm[-1]}", flush=True)
        result: dict[str, Any] = {
            "benchmark": "autoscaler_e2e", "ray_version": ray.__version__, "runs": i + 1,
            "machine": {"cpus": os.cpu_count()}, "tasks": args.tasks, "node_type": {"CPU": 1},
            "max_workers": MAX_WORKERS, "idle_timeout_s": IDLE_S, "warm_settle_s": WARM_SETTLE_S,
            "ours": summary(ours), "ray_autoscaling_cluster_v2": summary(theirs), "ours_warm_1": summary(warm),
            "timeline_one_task_cold": steps,
        }
        result["ratio"] = {k: result["ours"][k] / result["ray_autoscaling_cluster_v2"][k] for k in KEYS}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")  # after every round: a late failure keeps it
    print(json.dumps(result["ratio"], indent=1))


if __name__ == "__main__":
    main()
