"""End to end on one machine: our embedded autoscaler vs Ray's own (AutoscalingCluster, v2).

Same node type (1-CPU workers, max 3, head with 0 CPUs), same idle timeout (6 s), same work:
N tasks of 1 CPU that each sleep 3 s. Measured per run: seconds from submitting the tasks to
all of them running, and from the work ending to every worker gone.

AutoscalingCluster runs `ray stop --force`, which kills every Ray process on the machine, so
this refuses to start while any other Ray process is running. Run it alone:

    python -m bench.autoscaler_e2e.run [--runs 3] [--tasks 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import ray
import yaml

RESULTS = Path(__file__).resolve().parents[1] / "results" / "autoscaler_e2e.json"
BASE_CONFIG = Path(__file__).with_name("fake_multinode_base.yaml")
IDLE_S = 6.0
MAX_WORKERS = 3


def other_ray_processes() -> list[str]:
    names = ("raylet", "gcs_server")
    return [f"{p.pid} {p.name()}" for p in psutil.process_iter(["name"]) if p.info["name"] in names]


@ray.remote(num_cpus=1)
def work() -> float:
    started = time.time()
    time.sleep(3)
    return started


def worker_count(address: str) -> int:
    from jupyter_raykube.autoscaler.demand import GcsReader

    return sum(1 for n in GcsReader(address).read().nodes
               if n.status != "dead" and n.total.get("CPU", 0) > 0)


def measure(address: str, tasks: int) -> dict[str, float]:
    submitted = time.time()
    starts = ray.get([work.remote() for _ in range(tasks)], timeout=300)
    ended = time.time()
    all_running = max(starts) - submitted
    while worker_count(address) > 0:
        time.sleep(0.1)
        if time.time() - ended > 120:
            raise RuntimeError("workers were not removed within 120 s")
    return {"submit_to_all_running_s": all_running, "idle_to_scaled_down_s": time.time() - ended}


def run_ours(tasks: int) -> dict[str, float]:
    from jupyter_raykube.blocking import BlockingManager
    from jupyter_raykube.connect import connect_driver
    from jupyter_raykube.spec import ClusterSpec, WorkerGroup

    bm = BlockingManager()
    try:
        spec = ClusterSpec(name="bench-e2e", idle_timeout_s=IDLE_S,
                           groups=(WorkerGroup("cpu", cpus=1, min=0, max=MAX_WORKERS),))
        cluster = bm.call(bm.manager.create, spec)
        connect_driver(cluster.handle.address, bm.manager.token)
        return measure(cluster.handle.address, tasks)
    finally:
        ray.shutdown()
        bm.close()


@contextmanager
def ray_default_config() -> Iterator[None]:
    """Ray's monitor process also loads the fake provider's default config from Ray's package
    dir, where the 2.60 wheel lacks it: place ours there for the run, and remove it after."""
    target = Path(ray.__file__).parent / "autoscaler/_private/fake_multi_node/example.yaml"
    placed = not target.exists()
    if placed:
        target.write_text(BASE_CONFIG.read_text())
    try:
        yield
    finally:
        if placed:
            target.unlink(missing_ok=True)


def run_ray(tasks: int) -> dict[str, float]:
    from ray.cluster_utils import FAKE_HEAD_NODE_ID, AutoscalingCluster

    class BenchCluster(AutoscalingCluster):
        """AutoscalingCluster with the base config the 2.60 wheel lacks."""

        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **kwargs):  # type: ignore[no-untyped-def]
            config = yaml.safe_load(BASE_CONFIG.read_text())
            config["available_node_types"] = dict(worker_node_types)
            config["available_node_types"]["ray.head.default"] = {
                "resources": head_resources, "node_config": {}, "max_workers": 0}
            if autoscaler_v2:
                config["provider"]["launch_multiple"] = True
                config["provider"]["head_node_id"] = FAKE_HEAD_NODE_ID
            config.update(kwargs)
            return config

    cluster = BenchCluster(head_resources={"CPU": 0},
                           worker_node_types={"cpu": {"resources": {"CPU": 1}, "node_config": {},
                                                      "min_workers": 0, "max_workers": MAX_WORKERS}},
                           autoscaler_v2=True, idle_timeout_minutes=IDLE_S / 60)
    env = {"RAY_AUTH_MODE": "disabled"}
    with ray_default_config():
        return _run_started(cluster, env, tasks)


def _run_started(cluster: Any, env: dict[str, str], tasks: int) -> dict[str, float]:
    cluster.start(override_env=env)
    try:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(address="auto")
        return measure(ray.get_runtime_context().gcs_address, tasks)
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=3)
    args = parser.parse_args()
    others = other_ray_processes()
    if others:
        sys.exit(f"refusing to run: other Ray processes are running ({', '.join(others[:5])}); "
                 "Ray's AutoscalingCluster would kill them with `ray stop --force`")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    ours, theirs = [], []
    for i in range(args.runs):  # alternate so machine noise hits both
        ours.append(run_ours(args.tasks))
        theirs.append(run_ray(args.tasks))
        print(f"run {i + 1}: ours {ours[-1]}, ray {theirs[-1]}", flush=True)

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    keys = ("submit_to_all_running_s", "idle_to_scaled_down_s")
    result = {
        "benchmark": "autoscaler_e2e", "ray_version": ray.__version__, "runs": args.runs,
        "tasks": args.tasks, "node_type": {"CPU": 1}, "max_workers": MAX_WORKERS, "idle_timeout_s": IDLE_S,
        "ours": {k: med(ours, k) for k in keys} | {"raw": ours},
        "ray_autoscaling_cluster_v2": {k: med(theirs, k) for k in keys} | {"raw": theirs},
    }
    result["ratio"] = {k: result["ours"][k] / result["ray_autoscaling_cluster_v2"][k] for k in keys}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["ratio"], indent=1))


if __name__ == "__main__":
    main()
