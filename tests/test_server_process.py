"""A real `jupyter server` process with the extension: kernels it starts use its API, clusters
survive kernel restarts, and no request body or path makes it answer 5xx (fuzzed)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jupyter_client import BlockingKernelClient

from jupyter_raykube.backends.local import _free_ports

from .conftest import cluster_processes, wait_for

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LiveServer:
    url: str
    token: str
    runtime_dir: Path
    proc: subprocess.Popen[bytes]

    def api(self, method: str, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.url}raykube/api/{path}", json=body, timeout=60,
                                headers={"Authorization": f"token {self.token}"}, **kwargs)

    def kernel_client(self, kernel_id: str) -> BlockingKernelClient:
        client = BlockingKernelClient(connection_file=str(self.runtime_dir / f"kernel-{kernel_id}.json"))
        client.load_connection_file()
        client.start_channels()
        client.wait_for_ready(timeout=120)
        return client


def _start_server(tmp: Path, *extra: str) -> LiveServer:
    port = _free_ports(1)[0]
    token = secrets.token_hex(16)
    runtime = tmp / "runtime"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), "JUPYTER_CONFIG_DIR": str(tmp / "config"),
           "PYTHONPATH": str(ROOT), "JUPYTER_PLATFORM_DIRS": "1"}
    env.pop("RAYKUBE_SERVER_URL", None)
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
                             f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
                             f"--ServerApp.root_dir={tmp}", *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    server = LiveServer(f"http://127.0.0.1:{port}/", token, runtime, proc)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if server.api("GET", "").status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    raise AssertionError((tmp / "server.log").read_text()[-4000:])


def _stop_server(server: LiveServer, log: Path) -> None:
    """SIGTERM, as a process manager stops Jupyter; the extension stops its clusters."""
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(90)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
        raise AssertionError("the server did not stop within 90 s:\n" + log.read_text()[-4000:]) from None


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    server = _start_server(tmp, "--ClusterManager.backend_class=tests.fakes.RefusingBackend")
    yield server
    _stop_server(server, tmp / "server.log")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**12) | st.sampled_from([10**400, -(10**60), 2**63])
    | st.floats(allow_nan=True) | st.text(max_size=20) | st.sampled_from(["1e400", "Infinity", "4Gi", "-1"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
_group = st.fixed_dictionaries({"name": st.sampled_from(["cpu", "gpu", "x", "Bad!", ""])},
                               optional={"min": _json_values, "max": _json_values, "cpus": _json_values,
                                         "gpus": _json_values, "memory": _json_values, "custom": _json_values,
                                         "cost": _json_values, "bogus": _json_values})
_post_body = st.one_of(
    _json_values,
    st.fixed_dictionaries({"name": st.text(max_size=50)},
                          optional={"groups": st.lists(_group, max_size=3) | _json_values,
                                    "idle_timeout_s": _json_values, "max_workers": _json_values,
                                    "head": _json_values, "backend": _json_values, "labels": _json_values,
                                    "env": _json_values, "image": _json_values}))
_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)


def _check_answer(response: requests.Response) -> None:
    """Never a 5xx; every refusal is JSON with a message, and no answer shows server internals."""
    assert response.status_code < 500, response.text[:2000]
    assert "Traceback" not in response.text and 'File "/' not in response.text, response.text[:2000]
    assert str(ROOT) not in response.text and sys.prefix not in response.text, response.text[:2000]
    if response.status_code >= 400 and response.request.method != "HEAD":
        assert response.json()["message"], response.text


def _clean_up_after(server: LiveServer, response: requests.Response) -> None:
    if response.status_code == 202:  # a valid body: the refusing backend fails it; clean up
        server.api("DELETE", f"clusters/{requests.utils.quote(response.json()['name'], safe='')}")


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_post_body)
def test_fuzz_post_never_5xx(refusing_server: LiveServer, body: Any) -> None:
    response = refusing_server.api("POST", "clusters", data=json.dumps(body).encode())
    _check_answer(response)
    _clean_up_after(refusing_server, response)


_deep = "[" * 1000 + "]" * 1000
_NASTY_BODIES = [
    _deep, '{"name": "a", "groups": ' + _deep + "}", '{"a":' * 2000 + "1" + "}" * 2000,
    '{"name": "a", "max_workers": ' + "9" * 5000 + "}",
    '{"name": "a", "groups": {"cpu": {"max": ' + "9" * 400 + "}}}",
    '{"name": "a", "idle_timeout_s": 1e400}', '{"name": "a", "idle_timeout_s": Infinity}',
    '{"name": "a", "idle_timeout_s": NaN}', '{"name": "a", "groups": {"cpu": {"cpus": 1e400}}}',
    '{"name": "a", "groups": {"cpu": {"cpus": "1e400"}}}', '{"name": "a", "groups": {"cpu": {"memory": "1e999999999"}}}',
    '{"name": "a", "groups": {"cpu": {"memory": 1e30}}}', '{"name": "a", "head": {"memory": "1e30"}}',
    '{"name": "a", "head": {"cpus": 1e400}}', '{"name": "a", "head": {"object_store_memory": -1}}',
    '{"name": "a", "groups": {"cpu": {"custom": {"TPU": 1e400}}}}', '{"name": "a", "groups": {"cpu": {"cost": 1e308}}}',
    '{"name": "a", "groups": {"cpu": {"idle_timeout_s": -Infinity}}}',
    '{"name": "a", "groups": [{"name": "cpu", "min": ' + "9" * 30 + ', "max": ' + "9" * 31 + "}]}",
    '{"name": "a", "groups": {"cpu": {"custom": {"' + "x" * 5000 + '": 1}}}}',
    '{"name": "' + "a" * 100_000 + '"}', "\xff\xfe", "",
]


@pytest.mark.parametrize("body", _NASTY_BODIES, ids=range(len(_NASTY_BODIES)))
def test_nasty_bodies_are_400_with_a_short_message(refusing_server: LiveServer, body: str) -> None:
    for method, path in (("POST", "clusters"), ("PATCH", "clusters/a")):
        response = refusing_server.api(method, path, data=body.encode("utf-8", "surrogateescape"))
        _check_answer(response)
        assert response.status_code in (400, 404), (method, response.text[:500])
        assert len(response.json()["message"]) < 600, response.json()["message"]
    assert refusing_server.api("GET", "clusters").json() == {"clusters": []}  # nothing half-created


_METHODS = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])


@st.composite
def _routes(draw: st.DrawFn) -> str:
    name = requests.utils.quote(draw(st.one_of(_names, st.just("ok-name"))), safe="")
    tail = draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=30))
    return draw(st.sampled_from([
        "raykube/api/", "raykube/api/clusters", f"raykube/api/clusters/{name}",
        f"raykube/api/clusters/{name}/events", f"raykube/clusters/{name}/dashboard/",
        f"raykube/clusters/{name}/dashboard/{requests.utils.quote(tail)}"]))


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=_routes(), method=_METHODS, body=_json_values)
def test_fuzz_every_route_and_method_never_5xx(refusing_server: LiveServer, route: str, method: str,
                                               body: Any) -> None:
    response = requests.request(method, f"{refusing_server.url}{route}", timeout=60, allow_redirects=False,
                                data=None if method in ("GET", "HEAD") else json.dumps(body).encode(),
                                headers={"Authorization": f"token {refusing_server.token}"})
    if response.status_code == 405:  # a method the route does not serve: tornado's own answer
        return
    _check_answer(response)
    _clean_up_after(refusing_server, response)


def test_after_the_fuzz_nothing_is_left_and_the_log_is_quiet(refusing_server: LiveServer) -> None:
    for method in ("GET", "POST"):  # without credentials: a login redirect or a 403, nothing logged
        response = requests.request(method, f"{refusing_server.url}raykube/clusters/x/dashboard/api/jobs/",
                                    allow_redirects=False, timeout=60)
        assert response.status_code in (302, 403)
    assert refusing_server.api("GET", "clusters").json() == {"clusters": []}
    assert not list((refusing_server.runtime_dir / "raykube" / "clusters").glob("*.json"))
    log = (refusing_server.runtime_dir.parent / "server.log").read_text()
    assert "Traceback" not in log and "TypeError" not in log, log[-3000:]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("live")
    server = _start_server(tmp)
    yield server
    _stop_server(server, tmp / "server.log")


def _run(client: BlockingKernelClient, code: str) -> str:
    chunks: list[str] = []

    def collect(msg: dict[str, Any]) -> None:
        content = msg["content"]
        if msg["msg_type"] == "stream":
            chunks.append(content["text"])
        elif msg["msg_type"] in ("execute_result", "display_data"):
            chunks.append(content["data"].get("text/plain", ""))
        elif msg["msg_type"] == "error":
            chunks.append("ERROR " + content["ename"] + ": " + content["evalue"])

    reply = client.execute_interactive(code, timeout=300, output_hook=collect)
    assert reply["content"]["status"] == "ok", "".join(chunks)
    return "".join(chunks)


def _start_cluster(server: LiveServer, body: dict[str, Any]) -> dict[str, Any]:
    """POST a cluster and wait until it runs; returns its snapshot."""
    created = server.api("POST", "clusters", body)
    assert created.status_code == 202, created.text
    deadline = time.monotonic() + 180
    while (snap := server.api("GET", f"clusters/{body['name']}").json())["state"] == "starting":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert snap["state"] == "running", snap
    return snap


def test_cluster_created_over_rest_survives_kernel_restart(live_server: LiveServer) -> None:
    _start_cluster(live_server, {"name": "k-rest", "groups": [{"name": "cpu", "max": 1}]})
    record = json.loads((live_server.runtime_dir / "raykube" / "clusters" / "k-rest.json").read_text())

    kernel = requests.post(f"{live_server.url}api/kernels", json={"name": "python3"}, timeout=60,
                           headers={"Authorization": f"token {live_server.token}"}).json()
    client = live_server.kernel_client(kernel["id"])
    try:
        out = _run(client, "import os; print(os.environ['RAYKUBE_SERVER_URL'])\n"
                           "%load_ext jupyter_raykube\n%raycluster list")
        assert live_server.url in out and "k-rest" in out
        restarted = requests.post(f"{live_server.url}api/kernels/{kernel['id']}/restart", timeout=120,
                                  headers={"Authorization": f"token {live_server.token}"})
        assert restarted.status_code == 200
        client.wait_for_ready(timeout=120)
        out = _run(client, "%load_ext jupyter_raykube\n%raycluster attach k-rest\n"
                           "import ray\nprint('ANSWER', ray.get(ray.remote(lambda: 6 * 7).remote()))")
        assert "ANSWER 42" in out
    finally:
        client.stop_channels()
        requests.delete(f"{live_server.url}api/kernels/{kernel['id']}", timeout=60,
                        headers={"Authorization": f"token {live_server.token}"})
    assert [c["name"] for c in live_server.api("GET", "clusters").json()["clusters"]] == ["k-rest"]
    assert live_server.api("DELETE", "clusters/k-rest").status_code == 204
    assert cluster_processes(record["uid"]) == []


def test_clusters_of_a_killed_server_are_reaped_when_the_next_one_starts(tmp_path: Path) -> None:
    """SIGKILL runs no cleanup at all: the next server's start finds the orphan and removes it."""
    first = _start_server(tmp_path)
    try:
        _start_cluster(first, {"name": "k-orphan", "groups": [{"name": "cpu", "max": 0}]})
        uid = json.loads((first.runtime_dir / "raykube" / "clusters" / "k-orphan.json").read_text())["uid"]
    finally:
        first.proc.kill()
        first.proc.wait()
    assert cluster_processes(uid), "the killed server's cluster should still be running until reaped"

    second = _start_server(tmp_path)
    try:
        wait_for(lambda: not cluster_processes(uid), 60, "the orphaned cluster's processes to be reaped")
        assert second.api("GET", "clusters").json()["clusters"] == []
        assert not (second.runtime_dir / "raykube" / "clusters" / "k-orphan.json").exists()
    finally:
        _stop_server(second, tmp_path / "server.log")


def test_the_server_owns_defaults_and_names(refusing_server: LiveServer) -> None:
    """GET /raykube/api/ gives the whole default request with the next free name; POSTs
    without a name, even at once, each get their own `<owner>-<n>`, picked by the server."""
    defaults = refusing_server.api("GET", "").json()["defaults"]
    assert defaults["name"].endswith("-1") and [g["name"] for g in defaults["groups"]] == ["cpu", "gpu"]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: refusing_server.api("POST", "clusters", {}), range(4)))
    try:
        assert [r.status_code for r in responses] == [202] * 4, [r.text for r in responses]
        names = sorted(r.json()["name"] for r in responses)
        assert len(set(names)) == 4 and defaults["name"] in names, names
        taken = refusing_server.api("GET", "").json()["defaults"]["name"]
        assert taken not in names  # the next free name skips the four (failed) clusters
    finally:
        for response in responses:
            _clean_up_after(refusing_server, response)
    created = refusing_server.api("POST", "clusters", defaults)  # the defaults are a valid request
    assert created.status_code == 202 and created.json()["name"] == defaults["name"], created.text
    _clean_up_after(refusing_server, created)


LIST_RANGES = """
from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.manager import ClusterManager
bm = BlockingManager(lambda: ClusterManager(default_backend="local", stop_clusters_on_close=False))
try:
    for cluster in bm.call(bm.manager.list):
        print("RANGE", cluster.name, [(g.name, g.min, g.max) for g in cluster.spec.groups])
finally:
    bm.close()
"""


def test_a_scale_is_written_once_and_read_back_everywhere(tmp_path: Path) -> None:
    """Desired state is persisted before it is acted on: another process lists the new range,
    and a restarted server that adopts the cluster keeps it."""
    keep = "--ClusterManager.stop_clusters_on_close=False"  # adopt_on_start follows: True
    first = _start_server(tmp_path, keep)
    try:
        _start_cluster(first, {"name": "k-range", "groups": [{"name": "cpu", "max": 1}]})
        uid = json.loads((first.runtime_dir / "raykube" / "clusters" / "k-range.json").read_text())["uid"]
        patched = first.api("PATCH", "clusters/k-range", {"groups": {"cpu": {"min": 0, "max": 3}}})
        assert patched.status_code == 200, patched.text
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(first.runtime_dir), "PYTHONPATH": str(ROOT)}
        listed = subprocess.run([sys.executable, "-c", LIST_RANGES], env=env, capture_output=True,
                                text=True, timeout=120)
        assert "RANGE k-range [('cpu', 0, 3)]" in listed.stdout, listed.stdout + listed.stderr[-2000:]
    finally:
        _stop_server(first, tmp_path / "server.log")
    assert cluster_processes(uid), "with stop_clusters_on_close=False the cluster outlives its server"

    second = _start_server(tmp_path, keep)
    try:
        snap = second.api("GET", "clusters/k-range").json()
        assert snap["owned_here"] and [(g["name"], g["min"], g["max"]) for g in snap["groups"]] == [("cpu", 0, 3)]
        assert second.api("DELETE", "clusters/k-range").status_code == 204
    finally:
        _stop_server(second, tmp_path / "server.log")
    assert cluster_processes(uid) == []
