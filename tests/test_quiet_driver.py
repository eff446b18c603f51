"""Ray's own monitor does not run on our heads (our autoscaler replaces it), so a driver whose
tasks wait for a scale-up our autoscaler serves sees no false "(autoscaler) No available node
types can fulfill resource requests" or infeasible-task warnings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import psutil

from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.manager import ClusterManager

from .conftest import cluster_processes

DRIVER = textwrap.dedent("""
    import sys, time, ray
    ray.init(address=sys.argv[1])

    @ray.remote(num_cpus=1)
    def task(x):
        time.sleep(2)
        return x

    print("SUM", sum(ray.get([task.remote(i) for i in range(4)])))
    time.sleep(2)  # Ray's log monitor forwards warnings about once a second
""")


def test_a_scale_up_we_serve_prints_no_ray_autoscaler_warnings() -> None:
    bm = BlockingManager(lambda: ClusterManager(default_backend="local", autoscale_interval_s=0.5))
    try:
        cluster = bm.call(bm.manager.create, {"name": "quiet", "groups": [{"name": "cpu", "max": 2}]})
        assert cluster.handle is not None
        uid = cluster.handle.details["uid"]
        commands = [" ".join(psutil.Process(pid).cmdline()) for pid in cluster_processes(uid)]
        assert not [c for c in commands if "autoscaler" in c and "monitor" in c], commands
        done = subprocess.run([sys.executable, "-c", DRIVER, cluster.handle.address], capture_output=True,
                              text=True, timeout=240, env={**os.environ, "RAY_AUTH_TOKEN": bm.manager.token})
        output = done.stdout + done.stderr
        assert "SUM 6" in done.stdout, output[-3000:]
        assert "(autoscaler)" not in output and "infeasible" not in output.lower(), output[-3000:]
        assert any(e["kind"] == "scale_up" for e in cluster.events.to_json())  # it did wait for nodes
    finally:
        bm.close()
    assert cluster_processes(uid) == []
