"""The reconciler's idle clock: a node's idle time counts from when it was first seen idle, so
Ray restarting that clock (it does when another node drains) does not make nodes that finished
together leave one idle timeout after another. A round that sees the node busy starts it over."""

from __future__ import annotations

import pytest

from jupyter_raykube.autoscaler.demand import RayNode
from jupyter_raykube.autoscaler.reconciler import Reconciler


def ray_node(idle_s: float) -> RayNode:
    status = "idle" if idle_s > 0 else "running"
    return RayNode("ab12", "c-cpu-x1", "cpu", status, idle_s, {"CPU": 1}, {"CPU": 1 if idle_s else 0}, (), "127.0.0.2")


def test_idle_time_survives_rays_restart_of_the_clock_and_restarts_when_busy() -> None:
    reconciler = Reconciler(handle=None, backend=None, reader=None, events=None, spec=None)  # type: ignore[arg-type]
    assert reconciler._idle("c-cpu-x1", ray_node(5.0), 100.0).idle_s == pytest.approx(5.0)
    # Another node drained: Ray now says 0.1 s, the node never had work in between.
    assert reconciler._idle("c-cpu-x1", ray_node(0.1), 100.5).idle_s == pytest.approx(5.5)
    assert reconciler._idle("c-cpu-x1", ray_node(0.0), 101.0).idle_s == 0.0  # busy
    assert reconciler._idle("c-cpu-x1", ray_node(0.2), 101.5).idle_s == pytest.approx(0.2)
