"""Where the seconds of one cold scale-up go: one task of 1 CPU on an empty cluster of ours.

Timestamps (seconds after submit), each from the component that knows it:
- demand visible: a 10 ms poll of the GCS (`get_cluster_resource_state`, what the
  autoscaler reads) first shows the pending {CPU: 1};
- decided and process started: the backend's record of the worker's `ray start` process
  (created right after the plan) and the autoscaler's `scale_up` event (after the launch call
  returned);
- raylet registered: the same poll first shows the new node alive in the GCS;
- task running: the task's own first line.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray

from .tasks import started_at

IDLE_S = 6.0


class GcsWatch(threading.Thread):
    """Polls the GCS every 10 ms and notes when demand and a worker node first appear."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        from jupyter_raykube.autoscaler.demand import GcsReader

        self.reader = GcsReader(address)
        self.demand_at: float | None = None
        self.registered_at: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            state = self.reader.read()
            now = time.time()
            if self.demand_at is None and state.demand:
                self.demand_at = now
            if self.registered_at is None and any(n.status != "dead" and n.total.get("CPU", 0) > 0
                                                  for n in state.nodes):
                self.registered_at = now
            time.sleep(0.01)


def one_scale_up() -> dict[str, Any]:
    from jupyter_raykube.blocking import BlockingManager
    from jupyter_raykube.connect import connect_driver
    from jupyter_raykube.spec import ClusterSpec, WorkerGroup

    bm = BlockingManager()
    try:
        spec = ClusterSpec(name="bench-timeline", idle_timeout_s=IDLE_S,
                           groups=(WorkerGroup("cpu", cpus=1, min=0, max=1),))
        cluster = bm.call(bm.manager.create, spec)
        connect_driver(cluster.handle.address, bm.manager.token)
        watch = GcsWatch(cluster.handle.address)
        watch.start()
        time.sleep(0.5)
        submitted = time.time()
        running = ray.get(started_at.remote(), timeout=300)
        watch.done.set()
        watch.join()
        nodes = bm.call(cluster.backend.list_nodes, cluster.handle)
        process = next(n.created_at for n in nodes if n.group == "cpu")
        scale_up = next(e.time for e in cluster.events if e.kind == "scale_up")

        def after(t: float | None) -> float | None:
            return None if t is None else round(t - submitted, 3)

        return {"demand_visible_in_gcs_s": after(watch.demand_at),
                "worker_process_started_s": after(process),
                "scale_up_event_s": after(scale_up),
                "raylet_registered_s": after(watch.registered_at),
                "task_running_s": after(running)}
    finally:
        ray.shutdown()
        bm.close()
