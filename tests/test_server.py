"""The server extension's REST API and dashboard proxy, through a real Jupyter server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from jupyter_raykube.backends.local import LocalBackend

from .conftest import cluster_processes


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"jupyter_raykube": True}},
            "ClusterManager": {"max_clusters": 1}}  # the manager's own setting reaches it


async def _json(jp_fetch: Any, *path: str, **kwargs: Any) -> Any:
    response = await jp_fetch("raykube", "api", *path, **kwargs)
    return json.loads(response.body) if response.body else None


async def _error(jp_fetch: Any, *path: str, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("raykube", "api", *path, **kwargs)
    return err.value.code, json.loads(err.value.response.body)["message"]


async def _wait_state(jp_fetch: Any, name: str, states: set[str], timeout: float = 180) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        snap = await _json(jp_fetch, "clusters", name)
        if snap["state"] in states:
            return snap
        await asyncio.sleep(0.5)
    raise AssertionError(f"{name} never reached {states}: {snap}")


async def test_info_and_empty_list(jp_fetch: Any) -> None:
    info = await _json(jp_fetch)
    assert info["backend"] == "local" and info["max_clusters"] == 1
    assert await _json(jp_fetch, "clusters") == {"clusters": []}


@pytest.mark.parametrize("body,status,fragment", [
    ("not json", 400, "not valid JSON"),
    (json.dumps([1, 2]), 400, '"name" string'),
    (json.dumps({"name": "Bad_Name"}), 400, "name='Bad_Name'"),
    (json.dumps({"name": "a", "groups": [{"name": "cpu", "min": 5, "max": 2}]}), 400, "groups.cpu.max=2"),
    (json.dumps({"name": "a", "idle_timeout_s": "soon"}), 400, "idle_timeout_s='soon'"),
    (json.dumps({"name": "a", "backend": "yarn"}), 400, "backend='yarn'"),
    (json.dumps({"name": "a", "surprise": 1}), 400, "surprise=1"),
    (json.dumps({"name": "a", "groups": {"cpu": {"scheduling": {"market_type": "cheap"}}}}), 400,
     "groups.cpu.scheduling.market_type='cheap'"),
    # the admin's policy (none here) opens no scheduling field to users
    (json.dumps({"name": "a", "groups": {"cpu": {"scheduling": {"market_type": "spot"}}}}), 403,
     "groups.cpu.scheduling.market_type='spot': your administrator lets users set none of them"),
])
async def test_post_rejects_bad_bodies(jp_fetch: Any, body: str, status: int, fragment: str,
                                       jp_runtime_dir: Any) -> None:
    code, message = await _error(jp_fetch, "clusters", method="POST", body=body)
    assert (code, fragment in message) == (status, True), message
    assert await _json(jp_fetch, "clusters") == {"clusters": []}  # nothing half-created


async def test_unknown_cluster_is_404(jp_fetch: Any) -> None:
    for method, body in (("GET", None), ("PATCH", json.dumps({"groups": {"cpu": {"max": 1}}})), ("DELETE", None)):
        code, message = await _error(jp_fetch, "clusters", "nope", method=method, body=body)
        assert code == 404 and "nope" in message
    code, _ = await _error(jp_fetch, "clusters", "nope", "events")
    assert code == 404


async def test_unauthenticated_requests_are_refused(jp_fetch: Any, jp_http_port: int, jp_base_url: str) -> None:
    code, _ = await _error(jp_fetch, "clusters", headers={"Authorization": "token wrong"})
    assert code == 403
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}raykube/api/clusters"
    for method, body in (("GET", None), ("POST", "{}")):
        with pytest.raises(HTTPClientError) as err:
            await AsyncHTTPClient().fetch(url, method=method, body=body)
        assert err.value.code == 403
    with pytest.raises(HTTPClientError) as err:  # the dashboard proxy is guarded too
        await AsyncHTTPClient().fetch(f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
                                      "raykube/clusters/x/dashboard/", follow_redirects=False)
    assert err.value.code in (302, 403)


async def test_cluster_lifecycle_over_rest_with_dashboard_proxy(jp_fetch: Any, jp_serverapp: Any) -> None:
    await jp_serverapp._post_start()  # what start_ioloop() runs: starts the extension's loops
    snap = await _json(jp_fetch, "clusters", method="POST",
                       body=json.dumps({"name": "rest-1", "groups": [{"name": "cpu", "max": 1}]}))
    assert snap["state"] == "starting" and snap["step"]
    code, message = await _error(jp_fetch, "clusters", method="POST", body=json.dumps({"name": "rest-1"}))
    assert code == 409 and "already exists" in message
    code, message = await _error(jp_fetch, "clusters", method="POST", body=json.dumps({"name": "rest-2"}))
    assert code == 403 and "at most 1 cluster may run" in message  # c.ClusterManager.max_clusters = 1
    snap = await _wait_state(jp_fetch, "rest-1", {"running", "failed"})
    assert snap["state"] == "running", snap["error"]
    assert snap["dashboard_url"].endswith("/raykube/clusters/rest-1/dashboard/")
    uid = LocalBackend().store.read("rest-1")["uid"]

    version = await jp_fetch("raykube", "clusters", "rest-1", "dashboard", "api", "version")
    assert json.loads(version.body)["ray_version"] == snap["ray_version"]

    code, message = await _error(jp_fetch, "clusters", "rest-1", method="PATCH",
                                 body=json.dumps({"groups": {"cpu": {"min": 3, "max": 1}}}))
    assert code == 400 and "groups.cpu.max=1" in message
    code, message = await _error(jp_fetch, "clusters", "rest-1", method="PATCH",
                                 body=json.dumps({"groups": {"tpu": {"max": 1}}}))
    assert code == 400 and "group='tpu'" in message
    # A follower (a kernel's "(raykube)" lines) asks for what comes after the last event it saw,
    # and the server holds the answer until the next decision
    last_id = (await _json(jp_fetch, "clusters", "rest-1", "events"))["events"][-1]["id"]
    follow = asyncio.ensure_future(_json(jp_fetch, "clusters", "rest-1", "events",
                                         params={"after": str(last_id), "wait": "60"}, request_timeout=90))
    await asyncio.sleep(1)
    assert not follow.done()
    code, message = await _error(jp_fetch, "clusters", "rest-1", "events", params={"after": "-1"})
    assert code == 400 and "after='-1'" in message and "whole number" in message
    snap = await _json(jp_fetch, "clusters", "rest-1", method="PATCH",
                       body=json.dumps({"groups": {"cpu": {"min": 1, "max": 1}}}))
    cpu = next(g for g in snap["groups"] if g["name"] == "cpu")
    assert (cpu["min"], cpu["max"]) == (1, 1)
    news = (await asyncio.wait_for(follow, 30))["events"]
    assert news and news[0]["id"] == last_id + 1 and news[0]["kind"] == "scaled", news
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while loop.time() < deadline:
        cpu = next(g for g in (await _json(jp_fetch, "clusters", "rest-1"))["groups"] if g["name"] == "cpu")
        if cpu["nodes"] == 1:
            break
        await asyncio.sleep(0.5)
    assert cpu["nodes"] == 1
    events = (await _json(jp_fetch, "clusters", "rest-1", "events"))["events"]
    assert any(e["kind"] == "scale_up" for e in events)

    listed = await _json(jp_fetch, "clusters")
    assert [c["name"] for c in listed["clusters"]] == ["rest-1"]
    response = await jp_fetch("raykube", "api", "clusters", "rest-1", method="DELETE")
    assert response.code == 204
    assert cluster_processes(uid) == []
    assert await _json(jp_fetch, "clusters") == {"clusters": []}


async def test_created_then_deleted_at_once_never_comes_back(jp_fetch: Any, jp_serverapp: Any) -> None:
    """A DELETE right behind the POST (before the head is even up) stops the start: the list
    never shows the cluster again, no process is left, and the name is free at once."""
    await jp_serverapp._post_start()
    backend = LocalBackend()
    for round_ in range(20):
        body = json.dumps({"name": "flash", "groups": [{"name": "cpu", "max": 0}]})
        assert (await _json(jp_fetch, "clusters", method="POST", body=body))["state"] == "starting"
        if round_ % 2:  # half the rounds give the start a moment to spawn the head first
            await asyncio.sleep(0.3)
        response = await jp_fetch("raykube", "api", "clusters", "flash", method="DELETE")
        assert response.code == 204
        for _ in range(3):
            assert await _json(jp_fetch, "clusters") == {"clusters": []}, f"round {round_}"
            await asyncio.sleep(0.1)
        assert "flash" not in backend.store.names()
    assert backend.store.names() == []


async def test_a_refused_patch_changes_nothing(jp_fetch: Any, jp_serverapp: Any) -> None:
    """All or nothing: a PATCH whose second group is refused leaves the first as it was."""
    await jp_serverapp._post_start()
    groups = [{"name": "cpu", "max": 1}, {"name": "big", "cpus": 2, "max": 1}]
    await _json(jp_fetch, "clusters", method="POST", body=json.dumps({"name": "atomic", "groups": groups}))
    try:
        snap = await _wait_state(jp_fetch, "atomic", {"running", "failed"})
        assert snap["state"] == "running", snap["error"]
        for second in ({"min": 3, "max": 1}, {"max": 10**400}, {"min": "two"}):
            code, message = await _error(jp_fetch, "clusters", "atomic", method="PATCH",
                                         body=json.dumps({"groups": {"cpu": {"max": 3}, "big": second}}))
            assert code == 400 and "groups.big." in message, message
        code, message = await _error(jp_fetch, "clusters", "atomic", method="PATCH",
                                     body=json.dumps({"groups": {"cpu": {"max": 3}, "tpu": {"max": 1}}}))
        assert code == 400 and "group='tpu'" in message
        snap = await _json(jp_fetch, "clusters", "atomic")
        assert [(g["name"], g["min"], g["max"]) for g in snap["groups"]] == [("cpu", 0, 1), ("big", 0, 1)]
        events = (await _json(jp_fetch, "clusters", "atomic", "events"))["events"]
        assert not [e for e in events if e["kind"] == "scaled"]
    finally:
        await jp_fetch("raykube", "api", "clusters", "atomic", method="DELETE")


async def test_a_start_ray_refuses_fails_with_one_line_and_no_paths(jp_fetch: Any, jp_serverapp: Any) -> None:
    """Ray refuses an object store larger than /dev/shm: the cluster ends `failed` with Ray's
    reason on one line (its log and traceback go to the server log), and nothing runs."""
    await jp_serverapp._post_start()
    body = {"name": "too-big", "head": {"object_store_memory": "60Ti"}, "groups": [{"name": "cpu", "max": 0}]}
    await _json(jp_fetch, "clusters", method="POST", body=json.dumps(body))
    snap = await _wait_state(jp_fetch, "too-big", {"running", "failed"})
    try:
        assert snap["state"] == "failed"
        assert "object store" in snap["error"] and "\n" not in snap["error"], snap["error"]
        assert "Traceback" not in json.dumps(snap) and "/site-packages/" not in json.dumps(snap)
        assert LocalBackend().store.names() == []
    finally:
        await jp_fetch("raykube", "api", "clusters", "too-big", method="DELETE")
    assert await _json(jp_fetch, "clusters") == {"clusters": []}
