"""What a notebook cell shows while its tasks wait for workers, seen in JupyterLab: our
autoscaler's decisions as `(raykube)` lines, and none of Ray's false alarms ("(autoscaler) No
available node types can fulfill resource requests", infeasible-task warnings) for demand that
our autoscaler is already serving."""

from __future__ import annotations

from typing import Any

from .conftest import Lab
from .helpers import new_notebook, run_cell

TASKS = """\
import time, ray

@ray.remote(num_cpus=1)
def slow(x):
    time.sleep(3)
    return x

print("sum", sum(ray.get([slow.remote(i) for i in range(4)])))
time.sleep(3)  # Ray forwards its drivers' warnings about once a second: give them time to show
"""


def test_a_scale_up_cell_shows_our_decisions_and_no_ray_false_alarms(page: Any, lab: Lab) -> None:
    notebook = new_notebook(page)
    run_cell(page, notebook, 0, "%load_ext jupyter_raykube\n%raycluster start quiet-cell --cpu-workers 0:2",
             timeout=180_000)
    status, snap = lab.api("GET", "raykube/api/clusters/quiet-cell")
    assert status == 200 and snap["state"] == "running", snap
    assert sum(g["nodes"] for g in snap["groups"]) == 0  # the tasks below need new workers

    work = run_cell(page, notebook, 1, TASKS, timeout=240_000)
    text = work.locator(".jp-OutputArea").inner_text()
    assert "sum 6" in text, text
    assert "(raykube) launched" in text and "cpu node" in text, text
    assert "(autoscaler)" not in text and "infeasible" not in text.lower(), text

    run_cell(page, notebook, 2, "%raycluster stop quiet-cell", timeout=120_000)
    assert lab.api("GET", "raykube/api/clusters/quiet-cell")[0] == 404
