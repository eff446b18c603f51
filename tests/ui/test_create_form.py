"""The sidebar's create form against a server whose administrator configured its own default
worker groups: the form shows the server's groups (not a hard-coded cpu/gpu pair), checks what
the browser can before any request, places the server's errors at the field, and sends only
what the user changed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Lab, lab_page, running_lab
from .helpers import run_command, shot

A100 = {"name": "a100", "gpus": 1, "cpus": 1, "max": 1}
START_TIMEOUT_MS = 150_000


@pytest.fixture(scope="module")
def a100_lab() -> Iterator[Lab]:
    with running_lab({"ClusterManager": {"default_groups": [A100]}}, name="jupyter-lab-a100") as server:
        yield server


@pytest.fixture
def a100_page(browser: Any, a100_lab: Lab, request: pytest.FixtureRequest) -> Iterator[Any]:
    yield from lab_page(browser, a100_lab, request)


def open_form(page: Any) -> Any:
    run_command(page, "Ray: New cluster")
    panel = page.locator("#raykube-sidebar")
    panel.locator(".jp-RayKube-formGroups").wait_for()
    return panel


def test_form_checks_fields_before_sending_and_shows_server_errors_at_the_field(a100_page: Any) -> None:
    page = a100_page
    posts: list[Any] = []
    page.on("request", lambda r: posts.append(r) if r.method == "POST" and "/raykube/api/clusters" in r.url else None)
    panel = open_form(page)
    row = panel.locator('.jp-RayKube-formGroups tr[data-group="a100"]')

    # min > max: the max field is marked and the message sits under the group's row.
    panel.locator('input[name="a100.min"]').fill("3")
    panel.locator('input[name="a100.max"]').fill("1")
    message = panel.locator(".jp-RayKube-formGroups .jp-RayKube-rowError")
    message.wait_for()
    assert "Max must be at least min (3)." in message.inner_text()
    assert panel.locator('input[name="a100.max"]').get_attribute("aria-invalid") == "true"
    assert panel.locator('input[name="a100.min"]').get_attribute("aria-invalid") == "false"
    assert row.evaluate("r => r.nextElementSibling.classList.contains('jp-RayKube-rowError')")
    shot(page, "form-min-over-max")

    # Fractional CPUs are refused in the browser too; Create sends nothing while fields are bad.
    panel.locator('input[name="a100.max"]').fill("3")
    panel.locator('input[name="a100.cpus"]').fill("0.5")
    assert "CPUs per node must be a whole number" in message.inner_text()
    panel.get_by_role("button", name="Create").click()
    page.wait_for_timeout(500)
    assert posts == []

    # What only the server knows (64 GPUs per node at most) comes back at the field it names.
    panel.locator('input[name="a100.cpus"]').fill("1")
    panel.locator('input[name="a100.gpus"]').fill("65")
    with page.expect_response(lambda r: r.request.method == "POST" and "/raykube/api/clusters" in r.url) as reply:
        panel.get_by_role("button", name="Create").click()
    assert reply.value.status == 400
    assert reply.value.request.post_data_json == {"groups": {"a100": {"min": 3, "max": 3, "gpus": 65}}}
    message.wait_for()
    assert message.inner_text().startswith("GPUs per node: ")
    assert panel.locator('input[name="a100.gpus"]').get_attribute("aria-invalid") == "true"
    assert panel.locator(".jp-RayKube-error").count() == 0  # no banner at the top


def test_sidebar_creates_exactly_the_servers_default_groups(a100_page: Any, a100_lab: Lab) -> None:
    page = a100_page
    status, info = a100_lab.api("GET", "raykube/api/")
    assert status == 200, info
    suggested = info["defaults"]["name"]
    panel = open_form(page)
    groups = panel.locator(".jp-RayKube-formGroups tbody tr[data-group]")
    assert groups.count() == 1 and groups.first.get_attribute("data-group") == "a100"
    assert panel.locator('input[name="name"]').get_attribute("placeholder") == suggested
    assert [panel.locator(f'input[name="a100.{f}"]').input_value() for f in ("min", "max", "cpus", "gpus")] \
        == ["0", "1", "1", "1"]

    # Nothing changed: the body is empty and the server decides everything, the name included.
    with page.expect_request(lambda r: r.method == "POST" and "/raykube/api/clusters" in r.url) as sent:
        panel.get_by_role("button", name="Create").click()
    assert sent.value.post_data_json == {}
    try:
        card = panel.locator(f'section[data-cluster="{suggested}"]')
        card.wait_for()
        assert card.locator("tbody tr[data-group]").evaluate_all(
            "rows => rows.map(r => r.dataset.group)") in (["a100"], ["head", "a100"])
        status, snap = a100_lab.api("GET", f"raykube/api/clusters/{suggested}")
        assert status == 200, snap
        assert [(g["name"], g["min"], g["max"], g["resources"]) for g in snap["groups"]] == [
            ("a100", 0, 1, {"CPU": 1, "GPU": 1})]
        # The form now suggests the next free name.
        page.wait_for_function("([el, old]) => el.placeholder && el.placeholder !== old",
                               arg=[panel.locator('input[name="name"]').element_handle(), suggested])
        panel.locator(f'section[data-cluster="{suggested}"][data-state="running"]').wait_for(
            timeout=START_TIMEOUT_MS)
        assert card.locator('[data-resource="GPU"]').count() == 1  # a group can have GPUs

        # Stop asks first (a dialog), then the card leaves the list.
        card.get_by_role("button", name="Stop").click()
        dialog = page.locator(".jp-Dialog")
        assert suggested in dialog.inner_text()
        dialog.get_by_role("button", name="Stop").click()
        card.wait_for(state="detached", timeout=120_000)
    finally:
        status, body = a100_lab.api("DELETE", f"raykube/api/clusters/{suggested}", timeout=120)
        assert status in (204, 404), body

