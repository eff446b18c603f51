"""Administrator limits: caps refused up front with a clear 403 that creates nothing, the API
open to the clusters' owner only, and the idle rules (scale to 0, then stop) on real Ray."""

from __future__ import annotations

import json
from typing import Any

import pytest
import ray
from tornado.httpclient import HTTPClientError

from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.connect import connect_driver, disconnect_driver
from jupyter_raykube.manager import Cluster, ClusterManager
from jupyter_raykube.policy import POLICY_ENV, Policy, PolicyError
from jupyter_raykube.spec import ClusterSpec, HeadSpec, SpecError, WorkerGroup

from .conftest import cluster_processes, wait_for

LIMITS = {"max_cpus": 8, "max_gpus": 1, "max_workers": 6, "max_clusters": 2}


def _spec(name: str, cpu_max: int = 2, gpu_max: int = 0, cpus: int = 2) -> ClusterSpec:
    return ClusterSpec(name=name, head=HeadSpec(cpus=0), groups=(
        WorkerGroup("cpu", cpus=cpus, max=cpu_max), WorkerGroup("gpu", cpus=1, gpus=1, max=gpu_max)))


# --- the rules, without Ray ----------------------------------------------------------------


def test_caps_count_every_cluster_at_its_max_and_say_what_is_left() -> None:
    policy = Policy(**LIMITS)
    policy.check(_spec("a", cpu_max=2, gpu_max=1), [])  # 4 + 1 CPUs, 1 GPU, 3 workers: fits
    with pytest.raises(PolicyError, match=r"'b' could use up to 2 GPUs .* allows 1 GPUs in all, so at most 1 are left"):
        policy.check(_spec("b", cpu_max=0, gpu_max=2), [])
    with pytest.raises(PolicyError, match=r"'b' could use up to 6 CPUs and your other clusters 5; .* at most 3 are left"):
        policy.check(_spec("b", cpu_max=3), [_spec("a", cpu_max=2, gpu_max=1)])
    with pytest.raises(PolicyError, match="clusters"):
        policy.check(_spec("c", cpu_max=0), [_spec("a", cpu_max=0), _spec("b", cpu_max=0)])
    capped = ClusterSpec(name="d", max_workers=2, groups=(WorkerGroup("cpu", cpus=4, max=10),))
    Policy(max_cpus=8).check(capped, [])  # max_workers=2 bounds it to 8 CPUs, not 40


def test_idle_rules_scale_down_restore_and_stop() -> None:
    policy = Policy(idle_scale_down_s=60, idle_stop_s=600)
    assert policy.idle_action(idle_s=30, scaled_down=False) is None
    assert policy.idle_action(idle_s=60, scaled_down=False) == "scale_to_zero"
    assert policy.idle_action(idle_s=120, scaled_down=True) is None
    assert policy.idle_action(idle_s=0, scaled_down=True) == "restore"
    assert policy.idle_action(idle_s=600, scaled_down=True) == "stop"
    assert Policy().idle_action(idle_s=10**9, scaled_down=False) is None


def test_bad_policies_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLICY_ENV, '{"max_gpus": -1}')
    with pytest.raises(SpecError, match=r"policy.max_gpus=-1 .* a number >= 0"):
        Policy.from_env()
    monkeypatch.setenv(POLICY_ENV, '{"max_tpus": 1}')
    with pytest.raises(SpecError, match="policy.max_tpus.*known limits are"):
        Policy.from_env()
    monkeypatch.setenv(POLICY_ENV, "16 cpus")
    with pytest.raises(SpecError, match="RAYKUBE_POLICY"):
        Policy.from_env()
    monkeypatch.setenv(POLICY_ENV, json.dumps({**LIMITS, "idle_stop_s": 7200}))
    assert Policy.from_env().describe() == "at most 8 CPUs, 1 GPUs, 6 workers, 2 clusters; stopped after 2 h idle"


# --- through the REST API ------------------------------------------------------------------


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"jupyter_raykube": True},
                          "identity_provider_class": "tests.fakes.HeaderIdentityProvider"},
            "RayKube": {"restrict_to_owner": True},
            "ClusterManager": {"owner": "alice", "policy": LIMITS}}


async def _call(jp_fetch: Any, user: str, *path: str, **kwargs: Any) -> tuple[int, Any]:
    try:
        response = await jp_fetch("raykube", "api", *path, headers={"X-Test-User": user}, **kwargs)
    except HTTPClientError as err:
        return err.code, json.loads(err.response.body)
    return response.code, json.loads(response.body) if response.body else None


async def test_over_the_gpu_cap_is_403_and_creates_nothing(jp_fetch: Any, jp_serverapp: Any) -> None:
    await jp_serverapp._post_start()
    body = {"name": "greedy", "groups": {"gpu": {"gpus": 1, "max": 2}}}
    status, reply = await _call(jp_fetch, "alice", "clusters", method="POST", body=json.dumps(body))
    assert status == 403, reply
    assert "could use up to 2 GPUs" in reply["message"] and "allows 1 GPUs" in reply["message"]
    assert (await _call(jp_fetch, "alice", "clusters")) == (200, {"clusters": []})
    manager: ClusterManager = jp_serverapp.web_app.settings["raykube_manager"]
    assert await manager.list() == []


async def test_a_patch_over_a_cap_is_403_and_changes_no_group(jp_fetch: Any, jp_serverapp: Any) -> None:
    """The policy is checked for the whole change before any of it is applied."""
    await jp_serverapp._post_start()
    body = {"name": "capped", "groups": [{"name": "cpu", "max": 0}, {"name": "big", "cpus": 2, "max": 0}]}
    assert (await _call(jp_fetch, "alice", "clusters", method="POST", body=json.dumps(body)))[0] == 202
    try:
        change = {"groups": {"cpu": {"max": 2}, "big": {"max": 4}}}  # 2 + 8 CPUs: over the 8 allowed
        status, reply = await _call(jp_fetch, "alice", "clusters", "capped", method="PATCH", body=json.dumps(change))
        assert status == 403 and "CPUs" in reply["message"], reply
        status, snap = await _call(jp_fetch, "alice", "clusters", "capped")
        assert [(g["name"], g["min"], g["max"]) for g in snap["groups"]] == [("cpu", 0, 0), ("big", 0, 0)]
    finally:
        await _call(jp_fetch, "alice", "clusters", "capped", method="DELETE")


async def test_only_the_owner_may_use_the_api(jp_fetch: Any, jp_serverapp: Any) -> None:
    await jp_serverapp._post_start()
    assert (await _call(jp_fetch, "alice", "clusters"))[0] == 200
    for method, path, body in (("GET", ("clusters",), None), ("POST", ("clusters",), '{"name": "x"}'),
                               ("DELETE", ("clusters", "x"), None)):
        status, reply = await _call(jp_fetch, "bob", *path, method=method, body=body)
        assert status == 403 and "belong to 'alice'; 'bob' may not" in reply["message"], (method, reply)


# --- idle rules on a real cluster ----------------------------------------------------------


def _events(bm: BlockingManager, cluster: Cluster) -> list[str]:
    async def read() -> list[str]:
        return [f"{e['kind']}: {e['message']}" for e in cluster.events.to_json()]

    return bm.call(read)


def _cpu_nodes(bm: BlockingManager, cluster: Cluster) -> int:
    async def read() -> int:
        return next(g["nodes"] + g["starting"] for g in cluster.snapshot()["groups"] if g["name"] == "cpu")

    return bm.call(read)


def test_an_idle_cluster_scales_to_zero_comes_back_for_work_then_stops_with_a_driver_attached() -> None:
    """Idle means no real work: a driver that stays connected without running anything (a
    notebook left open) neither brings the workers back nor keeps the cluster from stopping."""
    policy = Policy(idle_scale_down_s=3, idle_stop_s=15)
    bm = BlockingManager(lambda: ClusterManager(policy=policy, autoscale_interval_s=0.5))
    try:
        spec = ClusterSpec(name="t-idle", groups=(WorkerGroup("cpu", cpus=1, min=1, max=1),))
        cluster = bm.call(bm.manager.create, spec)
        assert cluster.handle is not None
        uid = cluster.handle.details["uid"]
        assert _cpu_nodes(bm, cluster) == 1

        wait_for(lambda: any("every group scaled to 0 workers" in e for e in _events(bm, cluster)), 30,
                 "the idle scale-down")
        wait_for(lambda: _cpu_nodes(bm, cluster) == 0, 60, "the min=1 worker to be drained while idle")

        connect_driver(cluster.handle.address, bm.manager.token)  # someone attaches, and works
        assert ray.get(ray.remote(num_cpus=1)(lambda: "ran").remote(), timeout=120) == "ran"
        assert any("in use again: group ranges restored (cpu 1..1" in e for e in _events(bm, cluster))

        # The driver stays attached, doing nothing: the cluster is idle all the same.
        wait_for(lambda: cluster.state == "stopped", 90, "the idle cluster to be stopped, a driver attached")
        events = _events(bm, cluster)
        assert any(e.startswith("info: stopping the cluster: idle for") for e in events), events
        assert any(e.startswith("stopped: cluster stopped: idle for") for e in events), events
        wait_for(lambda: not cluster_processes(uid), 60, "the stopped cluster's processes to exit")
    finally:
        disconnect_driver()
        bm.close()
