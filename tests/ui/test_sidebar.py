"""The "Ray clusters" sidebar and the status widget, in real Chromium against a real Lab.

Starting a Ray cluster is the slow part, so one test walks the whole story on one cluster:
create (form) -> running -> scale -> dashboard -> connect a notebook -> run a task ->
pending demand -> `%raycluster status` widget -> a sidebar change the widget follows ->
screenshots for the docs -> stop from the widget (asked first). The cluster is also deleted
over REST at teardown, so a failing step leaves nothing running.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ARTIFACTS, Lab
from .helpers import cell, new_notebook, run_cell, run_command, shot, sidebar_tab, use_theme

# The README's screenshots are rewritten only when asked (RAYKUBE_UPDATE_DOC_SCREENSHOTS=1), so a
# test run leaves the checkout as it was; otherwise they go beside the other UI artifacts.
DOC_SHOTS = (Path(__file__).resolve().parents[2] / "docs" / "screenshots"
             if os.environ.get("RAYKUBE_UPDATE_DOC_SCREENSHOTS") == "1" else ARTIFACTS / "docs-screenshots")
START_TIMEOUT_MS = 150_000  # head node up and registered (2-core CI box)
NODE_TIMEOUT_MS = 150_000  # a worker node launched by the autoscaler joins


@pytest.fixture
def cluster_name(lab: Lab) -> Iterator[str]:
    # 40 characters, the longest name a cluster may have: the card must truncate it.
    name = f"ui-{secrets.token_hex(3)}-a-long-name-the-card-truncates"
    assert len(name) == 40
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

    # The form starts from the server's default groups (here cpu and gpu).
    assert panel.locator(".jp-RayKube-formGroups tbody tr[data-group]").evaluate_all(
        "rows => rows.map(r => r.dataset.group)") == ["cpu", "gpu"]
    name_input.fill(cluster_name)

    # Create: head node + a cpu group of 0..1 one-CPU nodes; the gpu group as the server has it.
    panel.locator('input[name="cpu.min"]').fill("0")
    panel.locator('input[name="cpu.max"]').fill("1")
    with page.expect_request(lambda r: r.method == "POST" and "/raykube/api/clusters" in r.url) as sent:
        panel.get_by_role("button", name="Create").click()
    body = sent.value.post_data_json
    assert body["name"] == cluster_name and set(body) <= {"name", "groups"}, body
    assert set(body.get("groups", {})) <= {"cpu"}, body  # only what was changed
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

    # The long name stays on one line, cut with an ellipsis; the tooltip is the whole name.
    title = ours.locator(".jp-RayKube-clusterName")
    assert title.get_attribute("title") == cluster_name
    assert title.evaluate("el => el.scrollWidth > el.clientWidth"), "the name should be cut"
    assert title.evaluate("el => getComputedStyle(el).textOverflow") == "ellipsis"
    line = title.evaluate("el => parseFloat(getComputedStyle(el).lineHeight) || el.clientHeight")
    assert title.bounding_box()["height"] <= line * 1.5, "the name wraps"
    assert ours.locator('[data-resource="GPU"]').count() == 0  # the gpu group's max is 0 here
    # Scale the cpu group to exactly one node: it is launched and shows up running.
    cpu_row.locator('input[name="cpu-min"]').fill("1")
    cpu_row.locator('input[name="cpu-max"]').fill("1")
    ours.get_by_role("button", name="Scale").click()
    ours.locator('tr[data-group="cpu"][data-running="1"]').wait_for(timeout=NODE_TIMEOUT_MS)
    cpu_text = ours.locator('[data-resource="CPU"] .jp-RayKube-barText')
    page.wait_for_function("el => /^\\d+ \\/ [1-9]/.test(el.textContent)",
                           arg=cpu_text.element_handle())
    shot(page, "04-scaled")

    # The Ray dashboard opens in a Lab tab, served through the server's proxy.
    ours.get_by_role("button", name="Dashboard").click()
    frame = page.locator(f"#raykube-dashboard-{cluster_name} iframe")
    frame.wait_for()
    assert frame.get_attribute("src").endswith(f"/raykube/clusters/{cluster_name}/dashboard/")
    page.frame_locator(f"#raykube-dashboard-{cluster_name} iframe").locator("#root > *").first.wait_for()
    shot(page, "05-dashboard")

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
    widget = status_cell.locator(".raykube-widget")
    widget.wait_for(timeout=30_000)
    assert cluster_name in status_cell.locator(".jp-OutputArea").inner_text()
    assert widget.locator("table.raykube-nodes tr[data-node]").count() == 2  # head + the cpu node
    widget_min = widget.locator(".raykube-group-cpu .raykube-min input")
    widget_max = widget.locator(".raykube-group-cpu .raykube-max input")
    assert (widget_min.input_value(), widget_max.input_value()) == ("1", "1")

    # The sidebar lowers min; the widget's field follows (nobody is editing it there).
    cpu_row.locator('input[name="cpu-min"]').fill("0")
    ours.get_by_role("button", name="Scale").click()
    page.wait_for_function("el => el.value === '0'", arg=widget_min.element_handle(), timeout=30_000)
    # Only max is changed in the widget: Apply must not write the old min back.
    widget_max.fill("2")
    widget_max.press("Tab")
    widget.locator(".raykube-group-cpu").get_by_role("button", name="Apply").click()
    widget.locator(".raykube-group-cpu", has_text="set to 0–2").wait_for()
    status, snap = lab.api("GET", f"raykube/api/clusters/{cluster_name}")
    cpu = next(g for g in snap["groups"] if g["name"] == "cpu")
    assert (cpu["min"], cpu["max"]) == (0, 2), cpu
    page.wait_for_function("el => el.value === '2'",  # the sidebar shows the widget's change
                           arg=cpu_row.locator('input[name="cpu-max"]').element_handle())
    save_doc_screenshots(page, panel, widget)

    # Stop from the widget asks first; Cancel keeps the cluster.
    widget.get_by_role("button", name="Stop cluster").click()
    confirm = widget.locator(".raykube-confirm-stop")
    confirm.wait_for()
    assert "Stop " + cluster_name + "?" in confirm.inner_text()
    confirm.get_by_role("button", name="Cancel").click()
    confirm.wait_for(state="hidden")
    assert lab.api("GET", f"raykube/api/clusters/{cluster_name}")[1]["state"] == "running"
    # Confirmed: the cluster goes, the widget's controls are disabled and the kernel's driver
    # (connected by `%raycluster attach`) is disconnected.
    widget.get_by_role("button", name="Stop cluster").click()
    confirm.get_by_role("button", name="Stop").click()
    ours.wait_for(state="detached", timeout=120_000)
    page.wait_for_function("el => el.disabled", arg=widget_max.element_handle(), timeout=30_000)
    assert widget.get_by_role("button", name="Stop cluster").is_disabled()
    page.wait_for_function("bs => bs.every(b => b.disabled)", timeout=30_000,
                           arg=widget.get_by_role("button", name="Apply").element_handles())
    assert widget.locator(".raykube-error").count() == 0
    shot(page, "10-stopped")
    status, _ = lab.api("GET", f"raykube/api/clusters/{cluster_name}")
    assert status == 404
    check = run_cell(page, notebook, 4, "print(ray.is_initialized())")
    assert check.locator(".jp-OutputArea-output").inner_text().strip() == "False"
    # The dashboard tab says the cluster stopped and no longer polls it (its iframe is gone).
    dashboard = page.locator(f"#raykube-dashboard-{cluster_name}")
    dashboard.locator(".jp-RayKube-dashboardEnded").wait_for(state="attached")
    assert "no longer served" in dashboard.locator(".jp-RayKube-dashboardEnded").text_content()
    assert dashboard.locator("iframe").count() == 0


def save_doc_screenshots(page: Any, panel: Any, widget: Any) -> None:
    """The sidebar and the widget, light and dark, for the README (docs/screenshots)."""
    DOC_SHOTS.mkdir(parents=True, exist_ok=True)
    for theme in ("light", "dark"):
        use_theme(page, theme)
        panel.screenshot(path=str(DOC_SHOTS / f"sidebar-{theme}.png"))
        widget.scroll_into_view_if_needed()
        widget.screenshot(path=str(DOC_SHOTS / f"widget-{theme}.png"))
    use_theme(page, "light")
    for name in ("sidebar-light", "sidebar-dark", "widget-light", "widget-dark"):
        assert (DOC_SHOTS / f"{name}.png").stat().st_size > 1000, name
