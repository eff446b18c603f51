"""The "Ray clusters" sidebar and the status widget, in real Chromium against a real Lab.

Starting a Ray cluster is the slow part, so one test walks the whole story on one cluster:
create (form) -> running -> scale -> dashboard -> connect a notebook -> run a task ->
pending demand -> `%raycluster status` widget -> stop. The cluster is also deleted over REST
at teardown, so a failing step leaves nothing running.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Lab
from .helpers import cell, new_notebook, run_cell, run_command, shot, sidebar_tab

START_TIMEOUT_MS = 150_000  # head node up and registered (2-core CI box)
NODE_TIMEOUT_MS = 150_000  # a worker node launched by the autoscaler joins


@pytest.fixture
def cluster_name(lab: Lab) -> Iterator[str]:
    name = f"ui-{secrets.token_hex(3)}"
    yield name
    status, body = lab.api("DELETE", f"raykube/api/clusters/{name}", timeout=120)
    assert status in (204, 404), body


def card(page: Any, name: str) -> Any:
    return page.locator(f'#raykube-sidebar section[data-cluster="{name}"]')


def test_sidebar_cluster_lifecycle(page: Any, lab: Lab, cluster_name: str) -> None:
    # The palette command opens the sidebar with the cursor in the form's name field.
    run_command(page, "Ray: New cluster")
    panel = page.locator("#raykube-sidebar")
    panel.wait_for(state="visible")
    assert sidebar_tab(page).get_attribute("aria-selected") == "true"
    name_input = panel.locator('input[name="name"]')
    page.wait_for_function("() => document.activeElement?.id === 'raykube-new-name'")
    panel.locator(".jp-RayKube-empty").wait_for()

    # A request the server rejects shows the server's message (here: max < min).
    name_input.fill(cluster_name)
    panel.locator('input[name="cpu-min"]').fill("3")
    panel.locator('input[name="cpu-max"]').fill("1")
    panel.get_by_role("button", name="Create").click()
    error = panel.locator(".jp-RayKube-error")
    error.wait_for()
    assert "max" in error.inner_text() and cluster_name in error.inner_text()
    shot(page, "01-create-rejected")

    # Create: head node + a cpu group of 0..1 one-CPU nodes, no GPUs.
    panel.locator('input[name="cpu-min"]').fill("0")
    panel.locator('input[name="cpu-max"]').fill("1")
    panel.locator('input[name="worker-cpus"]').fill("1")
    panel.locator('input[name="gpu-min"]').fill("0")
    panel.locator('input[name="gpu-max"]').fill("0")
    panel.get_by_role("button", name="Create").click()
    error.wait_for(state="detached")
    ours = card(page, cluster_name)
    ours.wait_for()
    if ours.get_attribute("data-state") == "starting":
        ours.locator(".jp-RayKube-step").wait_for()
        shot(page, "02-starting")
    page.locator(f'#raykube-sidebar section[data-cluster="{cluster_name}"][data-state="running"]'
                 ).wait_for(timeout=START_TIMEOUT_MS)
    cpu_row = ours.locator('tr[data-group="cpu"]')
    assert cpu_row.get_attribute("data-running") == "0"
    assert ours.locator('tr[data-group="head"]').inner_text().split()[-1] == "running"
    shot(page, "03-running")

    # Scale the cpu group to exactly one node: it is launched and shows up running.
    cpu_row.locator('input[name="cpu-min"]').fill("1")
    cpu_row.locator('input[name="cpu-max"]').fill("1")
    ours.get_by_role("button", name="Scale").click()
    ours.locator('tr[data-group="cpu"][data-running="1"]').wait_for(timeout=NODE_TIMEOUT_MS)
    cpu_text = ours.locator('[data-resource="CPU"]')
    page.wait_for_function("el => /CPU \\d+ \\/ [1-9]/.test(el.textContent)",
                           arg=cpu_text.element_handle())
    shot(page, "04-scaled")

    # The Ray dashboard opens in a Lab tab, served through the server's proxy.
    ours.get_by_role("button", name="Dashboard").click()
    frame = page.locator(f"#raykube-dashboard-{cluster_name} iframe")
    frame.wait_for()
    assert frame.get_attribute("src").endswith(f"/raykube/clusters/{cluster_name}/dashboard/")
    page.frame_locator(f"#raykube-dashboard-{cluster_name} iframe").locator("#root > *").first.wait_for()
    shot(page, "05-dashboard")

    # The same panel in the dark theme (only --jp-* variables are used).
    run_command(page, "Use Theme: JupyterLab Dark")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
    page.wait_for_timeout(300)  # theme CSS swap
    shot(page, "06-scaled-dark")
    run_command(page, "Use Theme: JupyterLab Light")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'")

    # Connect code goes into the new notebook's active cell; then a task runs on the cluster.
    notebook = new_notebook(page)
    ours.get_by_role("button", name="Connect code").click()
    first = cell(notebook, 0)
    assert first.locator(".cm-content").inner_text().splitlines() == [
        "%load_ext jupyter_raykube", f"%raycluster attach {cluster_name}"]
    run_cell(page, notebook, 0)
    answer = run_cell(page, notebook, 1, "import ray; ray.get(ray.remote(lambda: 6*7).remote())")
    output = answer.locator(".jp-OutputArea-output")
    output.wait_for()
    assert output.inner_text().strip() == "42", output.inner_text()
    shot(page, "07-notebook-42")

    # Demand no group can serve is listed with its reason (the gpu group's max is 0).
    run_cell(page, notebook, 2, "pending = ray.remote(num_gpus=1)(lambda: 1).remote()")
    demand = ours.locator(".jp-RayKube-demand li").first
    demand.wait_for(timeout=60_000)
    assert demand.get_attribute("data-status") in ("capped", "infeasible"), demand.inner_text()
    assert demand.locator(".jp-RayKube-reason").inner_text().strip()
    shot(page, "08-pending-demand")

    # `%raycluster status` renders the live ClusterWidget (ipywidgets), not plain text.
    status_cell = run_cell(page, notebook, 3,
                           f"%load_ext jupyter_raykube\n%raycluster status {cluster_name}")
    widget = status_cell.locator(".jp-OutputArea-output .jupyter-widgets")
    widget.first.wait_for(timeout=30_000)
    assert cluster_name in status_cell.locator(".jp-OutputArea").inner_text()
    status_cell.scroll_into_view_if_needed()
    shot(page, "09-status-widget")

    # Stop (confirmed in a dialog): the cluster leaves the list.
    ours.get_by_role("button", name="Stop").click()
    page.locator(".jp-Dialog").get_by_role("button", name="Stop").click()
    ours.wait_for(state="detached", timeout=120_000)
    shot(page, "10-stopped")
    status, _ = lab.api("GET", f"raykube/api/clusters/{cluster_name}")
    assert status == 404

