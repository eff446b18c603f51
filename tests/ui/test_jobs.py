"""A cluster card's Ray jobs and node logs in real Chromium against a real Lab: the list shows
each job's state, entrypoint and start time; Logs opens the job's output, refreshed while it
runs; Stop (asked first) stops it and the list follows; Node logs shows a node's Ray log file.
Jobs are submitted over the REST API, as `%rayjob` does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Lab
from .helpers import shot, sidebar_tab

START_TIMEOUT_S = 150
CLUSTER = "ui-jobs"
TALKER = ("python -u -c \"import time\nfor i in range(1000):\n    print(f'job line {i}', flush=True)\n"
          "    time.sleep(0.5)\"")


@pytest.fixture
def running_cluster(lab: Lab) -> Iterator[str]:
    status, body = lab.api("POST", "raykube/api/clusters", {"name": CLUSTER, "groups": [{"name": "cpu", "max": 0}]})
    assert status == 202, body
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (snap := lab.api("GET", f"raykube/api/clusters/{CLUSTER}")[1])["state"] == "starting":
            assert time.monotonic() < deadline, snap
            time.sleep(0.5)
        assert snap["state"] == "running", snap
        yield CLUSTER
    finally:
        status, body = lab.api("DELETE", f"raykube/api/clusters/{CLUSTER}", timeout=120)
        assert status in (204, 404), body


def test_job_list_log_view_and_stop(page: Any, lab: Lab, running_cluster: str) -> None:
    status, done = lab.api("POST", f"raykube/api/clusters/{running_cluster}/jobs",
                           {"entrypoint": "python -c \"print('finished quickly')\""})
    assert status == 201, done
    status, talker = lab.api("POST", f"raykube/api/clusters/{running_cluster}/jobs", {"entrypoint": TALKER})
    assert status == 201, talker

    sidebar_tab(page).click()
    jobs = page.locator(f'#raykube-sidebar section[data-cluster="{running_cluster}"] .jp-RayKube-jobs')
    quick = jobs.locator(f"li[data-job='{done['id']}']")
    jobs.locator(f"li[data-job='{done['id']}'][data-state='SUCCEEDED']").wait_for(timeout=120_000)
    assert "finished quickly" in quick.locator(".jp-RayKube-jobEntrypoint").inner_text()
    assert quick.locator("time").inner_text().strip(), "the start time is shown"
    assert quick.get_by_role("button", name="Stop").is_disabled()  # a finished job has nothing to stop

    row = jobs.locator(f"li[data-job='{talker['id']}']")
    jobs.locator(f"li[data-job='{talker['id']}'][data-state='RUNNING']").wait_for(timeout=120_000)
    ids = jobs.locator("li[data-job]").evaluate_all("rows => rows.map(r => r.dataset.job)")
    assert ids == [talker["id"], done["id"]], ids  # newest first

    row.get_by_role("button", name="Logs").click()
    log = jobs.locator(f'.jp-RayKube-jobLog[data-job="{talker["id"]}"] pre')
    page.wait_for_function("(el) => /job line 3/.test(el.textContent)", arg=log.element_handle(), timeout=60_000)
    first = log.inner_text()
    page.wait_for_function("([el, before]) => el.textContent !== before",
                           arg=[log.element_handle(), first], timeout=30_000)  # the view follows the job
    shot(page, "sidebar-jobs")

    row.get_by_role("button", name="Stop").click()
    page.locator(".jp-Dialog").get_by_role("button", name="Stop job").click()
    jobs.locator(f"li[data-job='{talker['id']}'][data-state='STOPPED']").wait_for(timeout=60_000)
    assert lab.api("GET", f"raykube/api/clusters/{running_cluster}/jobs/{talker['id']}")[1]["state"] == "STOPPED"

    # Node logs: the head's raylet.out, through Ray's log API.
    card = page.locator(f'#raykube-sidebar section[data-cluster="{running_cluster}"]')
    card.locator(".jp-RayKube-nodeLogs > summary").click()
    card.get_by_label("Log file").locator("option", has_text="gcs_server.out").wait_for(state="attached")
    card.get_by_label("Log file").select_option("raylet.out")
    card.locator(".jp-RayKube-nodeLogs").get_by_role("button", name="Show").click()
    node_log = card.locator(".jp-RayKube-nodeLogText")
    node_log.wait_for()
    assert f"{running_cluster}-head" in card.get_by_label("Node", exact=True).input_value()
    assert len(node_log.inner_text().splitlines()) > 5, node_log.inner_text()
