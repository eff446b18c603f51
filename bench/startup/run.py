"""Start-up time and memory: `%raycluster start` vs a bare `ray start --head` + `ray.init`.

Each trial runs in a fresh Python process, from the first line of the driver to a connected
driver, so imports count on both sides. Trials alternate (bare, ours, bare, ours, ...) so
machine noise hits both. Memory is the summed RSS of the cluster's processes plus the driver's.

Both clusters are stopped by PID (never `ray stop`); run it alone, under the test lock:

    flock /tmp/raykube-ray-tests.lock nice .venv/bin/python -m bench.startup.run [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import ray

RESULTS = Path(__file__).resolve().parents[1] / "results" / "startup.json"

OURS = r"""
import json, os, time, psutil
t0 = time.perf_counter()
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "jupyter_raykube")
ip.run_line_magic("raycluster", "start bench-startup --cpu-workers 0:1")
import ray
assert ray.is_initialized()
elapsed = time.perf_counter() - t0
from jupyter_raykube.backends import processes
uid = next(p.environ()[processes.CLUSTER_MARKER] for p in processes.find_marked(processes.CLUSTER_MARKER))
rss = sum(p.memory_info().rss for p in processes.find_marked(processes.CLUSTER_MARKER, uid))
print(json.dumps({"seconds": elapsed, "cluster_rss": rss, "driver_rss": psutil.Process().memory_info().rss}))
ip.run_line_magic("raycluster", "stop")
"""

BARE = r"""
import json, os, signal, socket, subprocess, sys, time, psutil
t0 = time.perf_counter()
def free():
    s = socket.socket(); s.bind(("127.0.0.2", 0)); port = s.getsockname()[1]; s.close(); return port
port = free()
head = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
                         f"--port={port}", "--node-ip-address=127.0.0.2", "--num-cpus=0",
                         f"--temp-dir={sys.argv[1]}", "--disable-usage-stats"],
                        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
import ray
while True:
    try:
        ray.init(address=f"127.0.0.2:{port}", logging_level="ERROR")
        break
    except (ConnectionError, RuntimeError, ValueError):
        time.sleep(0.1)
elapsed = time.perf_counter() - t0
tree = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
rss = sum(p.memory_info().rss for p in tree if p.is_running())
print(json.dumps({"seconds": elapsed, "cluster_rss": rss, "driver_rss": psutil.Process().memory_info().rss}))
ray.shutdown()
os.killpg(head.pid, signal.SIGTERM)
head.wait(60)
"""


def trial(code: str, *args: str) -> dict[str, float]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"} if code is BARE else dict(os.environ)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=300, env=env)
    line = next((l for l in out.stdout.splitlines() if l.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"trial failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    bare: list[dict[str, float]] = []
    ours: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="rkb-", dir="/tmp") as tmp:
        for i in range(args.trials):
            bare.append(trial(BARE, os.path.join(tmp, f"b{i}")))
            ours.append(trial(OURS))
            print(f"trial {i + 1}: bare {bare[-1]['seconds']:.2f} s, ours {ours[-1]['seconds']:.2f} s", flush=True)

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    result = {
        "benchmark": "startup",
        "what": "first driver line to a connected ray.init: %raycluster start vs bare ray start --head",
        "ray_version": ray.__version__, "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1)},
        "trials": args.trials,
        "bare": {"seconds_median": med(bare, "seconds"), "cluster_rss_mb": med(bare, "cluster_rss") / 1e6,
                 "driver_rss_mb": med(bare, "driver_rss") / 1e6, "raw": bare},
        "ours": {"seconds_median": med(ours, "seconds"), "cluster_rss_mb": med(ours, "cluster_rss") / 1e6,
                 "driver_rss_mb": med(ours, "driver_rss") / 1e6, "raw": ours},
    }
    result["ratio_time"] = result["ours"]["seconds_median"] / result["bare"]["seconds_median"]
    result["ratio_cluster_rss"] = result["ours"]["cluster_rss_mb"] / result["bare"]["cluster_rss_mb"]
    result["ratio_driver_rss"] = result["ours"]["driver_rss_mb"] / result["bare"]["driver_rss_mb"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio")}, indent=1))


if __name__ == "__main__":
    main()
