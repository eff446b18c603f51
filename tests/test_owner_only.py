"""Owner-only means every route: with `restrict_to_owner`, a user the server lets in who is not
the clusters' owner (a Hub admin, another user with access) gets 403 from the REST API, the
dashboard proxy over HTTP (including Ray's job submission, which runs code on the cluster) and
the proxy's websocket, against a real running cluster the owner can use."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_raykube.backends.local import LocalBackend

from .conftest import cluster_processes


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"jupyter_raykube": True},
                          "identity_provider_class": "tests.fakes.HeaderIdentityProvider"},
            "RayKube": {"restrict_to_owner": True},
            "ClusterManager": {"owner": "alice"}}


async def _call(jp_fetch: Any, user: str, *path: str, **kwargs: Any) -> tuple[int, Any]:
    try:
        response = await jp_fetch(*path, headers={"X-Test-User": user}, **kwargs)
    except HTTPClientError as err:
        return err.code, json.loads(err.response.body) if err.response and err.response.body else None
    return response.code, json.loads(response.body) if response.body else None


async def _wait_running(jp_fetch: Any, name: str, timeout: float = 180) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, snap = await _call(jp_fetch, "alice", "raykube", "api", "clusters", name)
        assert status == 200, snap
        if snap["state"] in ("running", "failed"):
            break
        assert loop.time() < deadline, f"{name} never started: {snap}"
        await asyncio.sleep(0.5)
    assert snap["state"] == "running", snap["error"]


async def test_a_non_owner_gets_403_on_every_route(jp_fetch: Any, jp_ws_fetch: Any, jp_serverapp: Any) -> None:
    await jp_serverapp._post_start()
    api = ("raykube", "api")
    status, _ = await _call(jp_fetch, "alice", *api, "clusters", method="POST",
                            body=json.dumps({"name": "mine", "groups": [{"name": "cpu", "max": 0}]}))
    assert status == 202
    dashboard = ("raykube", "clusters", "mine", "dashboard")
    try:
        await _wait_running(jp_fetch, "mine")
        uid = LocalBackend().store.read("mine")["uid"]
        assert (await _call(jp_fetch, "alice", *dashboard, "api", "version"))[0] == 200

        job = json.dumps({"entrypoint": shlex.join([sys.executable, "-c", "print('pwned')"])})
        routes: list[tuple[str, tuple[str, ...], str | None]] = [
            ("GET", api, None), ("GET", (*api, "clusters"), None),
            ("POST", (*api, "clusters"), json.dumps({"name": "theirs"})),
            ("GET", (*api, "clusters", "mine"), None),
            ("PATCH", (*api, "clusters", "mine"), json.dumps({"groups": {"cpu": {"max": 1}}})),
            ("DELETE", (*api, "clusters", "mine"), None),
            ("GET", (*api, "clusters", "mine", "events"), None),
            ("GET", (*dashboard, "api", "version"), None),
            ("GET", (*dashboard, "api", "jobs/"), None),
            ("POST", (*dashboard, "api", "jobs/"), job),
            ("DELETE", (*dashboard, "api", "jobs", "raysubmit_x"), None),
            ("PUT", (*dashboard, "api", "packages", "gcs", "x.zip"), "zip"),
        ]
        for method, path, body in routes:
            status, reply = await _call(jp_fetch, "bob", *path, method=method, body=body)
            assert status == 403, (method, path, status, reply)
            assert "belong to 'alice'; 'bob' may not" in reply["message"], (method, path, reply)

        with pytest.raises(HTTPClientError) as err:  # the job-log websocket too
            await jp_ws_fetch(*dashboard, "api", "jobs", "raysubmit_x", "logs", "tail",
                              headers={"X-Test-User": "bob"})
        assert err.value.code == 403

        status, jobs = await _call(jp_fetch, "alice", *dashboard, "api", "jobs/")
        assert status == 200 and jobs == [], jobs  # bob's submission never reached Ray
        status, snap = await _call(jp_fetch, "alice", *api, "clusters", "mine")
        assert snap["state"] == "running" and snap["groups"][0]["max"] == 0  # bob changed nothing
    finally:
        await jp_fetch(*api, "clusters", "mine", method="DELETE", headers={"X-Test-User": "alice"},
                       raise_error=False)
    assert cluster_processes(uid) == []
