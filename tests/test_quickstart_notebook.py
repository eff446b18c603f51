"""The README's main job: the quickstart notebook, run headless through a real kernel."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from jupyter_raykube.backends.local import LocalBackend

from .conftest import cluster_processes

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "quickstart.ipynb"


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def test_quickstart_notebook_runs_and_cleans_up(runtime_dir: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    seen_uids: list[str] = []

    class Client(NotebookClient):
        """Notes the cluster's uid right after the start cell, to check for leftovers later."""

        async def async_execute_cell(self, cell, cell_index, **kwargs):  # type: ignore[no-untyped-def]
            result = await super().async_execute_cell(cell, cell_index, **kwargs)
            if "%raycluster start" in cell.source:
                backend = LocalBackend()
                seen_uids.extend(backend.store.read(n)["uid"] for n in backend.store.names())
            return result

    Client(nb, timeout=600, kernel_name="python3").execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [_stdout(c) for c in code]
    assert "[0, 1, 2, 3]" in outputs[1]
    assert "[4000000.0, " in outputs[2]
    assert "2 ready, 2 not ready yet" in outputs[3] and "[0, 1, 2, 3]" in outputs[3]
    assert "(1000, 1000)" in outputs[4]
    assert "[1, 1, 1, 1]" in outputs[5]
    status = [o for o in code[6].outputs if o.get("output_type") == "execute_result"]
    assert status and "application/vnd.jupyter.widget-view+json" in status[0]["data"]  # the live widget
    assert "Ray cluster" in status[0]["data"]["text/plain"]
    assert "stopped" in outputs[7]
    # The scale-ups our autoscaler serves are told as our own decisions, never as Ray's false alarms
    work = "".join(outputs[1:6])
    assert "(raykube)" in work and "launched" in work, work[-3000:]
    assert "(autoscaler)" not in work and "infeasible" not in work.lower(), work[-3000:]
    assert seen_uids, "the start cell must have registered a cluster"
    assert all(cluster_processes(uid) == [] for uid in seen_uids)
    assert list((runtime_dir / "raykube" / "clusters").glob("*.json")) == []
