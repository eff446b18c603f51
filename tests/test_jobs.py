"""Ray jobs from a notebook, against a real `jupyter server` started from the venv's Python with
a PATH that does not name the venv (as `.venv/bin/jupyter server` runs), a real local cluster
and real kernels: `%%rayjob` streams a job's output into the cell while it runs, the job's
python is the cluster's own, a failing job fails the cell with its error, and a restarted kernel
reads the same job's logs. REST refusals are checked against the same server."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from jupyter_client import BlockingKernelClient
from tornado.httpclient import HTTPClientError

from jupyter_raykube.blocking import BlockingManager
from jupyter_raykube.errors import SpecError
from jupyter_raykube.job_client import working_dir_package
from jupyter_raykube.job_logs import JobLogFollowers, LogBuffer, read_job_log
from jupyter_raykube.jobs import RayJobs, submit_body
from jupyter_raykube.spec import ClusterSpec, WorkerGroup

from .conftest import wait_for
from .test_server_process import LiveServer, _start_cluster, _start_server, _stop_server

UPLOAD_LIMIT = 4096  # c.RayKube.max_upload_bytes of the server under test

CLUSTER = "jobs-1"


@pytest.fixture(scope="module")
def job_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The server runs the venv's Python, but `python` on its PATH is not the venv's."""
    tmp = tmp_path_factory.mktemp("jobs")
    venv_bin = os.path.dirname(sys.executable)
    saved = os.environ["PATH"]
    os.environ["PATH"] = os.pathsep.join(p for p in saved.split(os.pathsep) if os.path.abspath(p) != venv_bin)
    try:
        server = _start_server(tmp, f"--RayKube.max_upload_bytes={UPLOAD_LIMIT}")
    finally:
        os.environ["PATH"] = saved
    try:
        _start_cluster(server, {"name": CLUSTER, "groups": [{"name": "cpu", "min": 0, "max": 0}]})
        yield server
    finally:
        server.api("DELETE", f"clusters/{CLUSTER}")
        _stop_server(server, tmp / "server.log")


@pytest.fixture
def kernel(job_server: LiveServer) -> Iterator[tuple[str, BlockingKernelClient]]:
    headers = {"Authorization": f"token {job_server.token}"}
    started = requests.post(f"{job_server.url}api/kernels", json={"name": "python3"}, headers=headers, timeout=60)
    kernel_id = started.json()["id"]
    client = job_server.kernel_client(kernel_id)
    try:
        yield kernel_id, client
    finally:
        client.stop_channels()
        requests.delete(f"{job_server.url}api/kernels/{kernel_id}", headers=headers, timeout=60)


def _execute(client: BlockingKernelClient, code: str,
             on_text: Callable[[str], None] = lambda _: None) -> tuple[str, str]:
    """Run a cell; returns (reply status, everything it showed), calling `on_text` per output."""
    chunks: list[str] = []

    def collect(msg: dict[str, Any]) -> None:
        content = msg["content"]
        text = ""
        if msg["msg_type"] == "stream":
            text = content["text"]
        elif msg["msg_type"] in ("execute_result", "display_data"):
            text = content["data"].get("text/plain", "")
        elif msg["msg_type"] == "error":
            text = "\n".join(content["traceback"]) + "\n"
        if text:
            chunks.append(text)
            on_text("".join(chunks))

    reply = client.execute_interactive(code, timeout=300, output_hook=collect, allow_stdin=False)
    return reply["content"]["status"], "".join(chunks)


def _job_id(output: str) -> str:
    return output.split("Ray job ", 1)[1].split()[0]


def test_cell_job_streams_live_succeeds_and_its_logs_outlive_the_kernel(
        job_server: LiveServer, kernel: tuple[str, BlockingKernelClient], tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "progress.py").write_text("def line(i):\n    return f'progress step {i}'\n")
    gate = tmp_path / "gate"
    cell = textwrap.dedent(f"""\
        %%rayjob --cluster {CLUSTER} --working-dir {project} --env GREETING=hello
        import os, pathlib, sys, time
        import ray, progress
        print("python", sys.executable, "ray", ray.__version__, os.environ["GREETING"])
        print(progress.line(0))
        deadline = time.time() + 120
        while not pathlib.Path({str(gate)!r}).exists() and time.time() < deadline:
            time.sleep(0.2)
        for i in range(1, 3):
            print(progress.line(i))
        """)
    seen_while_running: list[str] = []

    def open_gate_once_the_first_line_shows(text: str) -> None:
        """The job waits for the gate, so its first line can only be here before it ends."""
        if "progress step 0" in text and not gate.exists():
            job = job_server.api("GET", f"clusters/{CLUSTER}/jobs/{_job_id(text)}").json()
            seen_while_running.append(job["state"])
            gate.touch()

    kernel_id, client = kernel
    status, out = _execute(client, "%load_ext jupyter_raykube")
    assert status == "ok", out
    status, out = _execute(client, cell, open_gate_once_the_first_line_shows)
    assert status == "ok", out
    assert seen_while_running == ["RUNNING"], out
    assert f"python {Path(sys.executable).parent}" in out and "ray 2." in out and "hello" in out, out
    assert out.index("progress step 0") < out.index("progress step 2") < out.index("SUCCEEDED"), out
    job_id = _job_id(out)
    assert job_server.api("GET", f"clusters/{CLUSTER}/jobs/{job_id}").json()["state"] == "SUCCEEDED"

    restarted = requests.post(f"{job_server.url}api/kernels/{kernel_id}/restart", timeout=120,
                              headers={"Authorization": f"token {job_server.token}"})
    assert restarted.status_code == 200
    client.wait_for_ready(timeout=120)
    status, out = _execute(client, f"%load_ext jupyter_raykube\n%rayjob logs {job_id}")
    assert status == "ok" and "progress step 0" in out and "progress step 2" in out, out
    status, out = _execute(client, "%rayjob list")
    assert status == "ok" and job_id in out and "SUCCEEDED" in out, out
    status, out = _execute(client, f"%rayjob status {job_id}")
    assert status == "ok" and f"Ray job {job_id} on {CLUSTER}: SUCCEEDED" in out, out


def test_a_failing_job_fails_the_cell_with_the_tail_of_its_error(
        job_server: LiveServer, kernel: tuple[str, BlockingKernelClient]) -> None:
    _, client = kernel
    _execute(client, "%load_ext jupyter_raykube")
    status, out = _execute(client, f"%%rayjob --cluster {CLUSTER}\nprint('before the error')\n"
                                   "raise ValueError('the answer is not 41')\n")
    assert status == "error", out
    assert "FAILED" in out and "ValueError: the answer is not 41" in out, out
    report = out[out.index("FAILED"):]
    assert "ValueError: the answer is not 41" in report, out  # the tail is repeated in the report


def test_submit_a_command_and_stop_a_running_job(job_server: LiveServer,
                                                 kernel: tuple[str, BlockingKernelClient]) -> None:
    _, client = kernel
    _execute(client, "%load_ext jupyter_raykube")
    status, out = _execute(client, "%rayjob submit --no-wait -- python -c "
                                   "\"import time; print('sleeping', flush=True); time.sleep(600)\"")
    assert status == "ok", out
    job_id = _job_id(out)
    status, out = _execute(client, f"%rayjob stop {job_id}")
    assert status == "ok" and job_id in out, out
    for _ in range(120):
        if job_server.api("GET", f"clusters/{CLUSTER}/jobs/{job_id}").json()["state"] == "STOPPED":
            break
        time.sleep(0.5)
    assert job_server.api("GET", f"clusters/{CLUSTER}/jobs/{job_id}").json()["state"] == "STOPPED"


def test_rest_refusals_name_the_field(job_server: LiveServer) -> None:
    jobs = f"clusters/{CLUSTER}/jobs"
    cases = [
        ("POST", jobs, {"entrypoint": ""}, 400, "entrypoint"),
        ("POST", jobs, {"entrypoint": "python x.py", "working_dir": "/etc"}, 400, "working_dir"),
        ("POST", jobs, {"entrypoint": "python x.py", "env": {"1BAD": "x"}}, 400, "env.1BAD"),
        ("POST", jobs, {"entrypoint": "python x.py", "pip": "numpy"}, 400, "pip"),
        ("POST", jobs, {"entrypoint": "python x.py", "cpus": 2}, 400, "cpus"),
        ("POST", jobs, [1], 400, "body"),
        ("GET", f"{jobs}/raysubmit_doesnotexist", None, 404, "raysubmit_doesnotexist"),
        ("GET", f"{jobs}/bad%20id!", None, 400, "job id"),
        ("GET", f"{jobs}/raysubmit_doesnotexist/logs?offset=-1", None, 400, "offset"),
        ("GET", f"{jobs}/raysubmit_doesnotexist/logs?offset=0&wait=61", None, 400, "wait"),
        ("GET", f"{jobs}/raysubmit_doesnotexist/logs?wait=soon", None, 400, "wait"),
        ("GET", f"{jobs}/raysubmit_doesnotexist/logs?wait=5", None, 404, "raysubmit_doesnotexist"),
        ("POST", f"{jobs}/raysubmit_doesnotexist/stop", None, 404, "raysubmit_doesnotexist"),
        ("GET", "clusters/nosuch/jobs", None, 404, "nosuch"),
        ("GET", f"clusters/{CLUSTER}/nodes/nosuch/logs", None, 404, "nosuch"),
        ("GET", f"clusters/{CLUSTER}/nodes/{CLUSTER}-head/logs?lines=0", None, 400, "lines"),
        ("GET", f"clusters/{CLUSTER}/nodes/{CLUSTER}-head/logs?file=../x", None, 400, "file"),
    ]
    for method, path, body, code, named in cases:
        response = job_server.api(method, path, body)
        assert response.status_code == code, (method, path, response.text)
        assert named in response.json()["message"], (method, path, response.text)
    upload = job_server.api("PUT", f"clusters/{CLUSTER}/packages/notazip", data=b"x")
    assert upload.status_code == 400 and "package" in upload.json()["message"], upload.text
    package = f"clusters/{CLUSTER}/packages/_ray_pkg_0123456789abcdef.zip"
    for data in (b"", b"x" * (UPLOAD_LIMIT + 1)):  # the server's own limit, named in the message
        upload = job_server.api("PUT", package, data=data)
        assert upload.status_code == 400 and "c.RayKube.max_upload_bytes" in upload.json()["message"], upload.text
    # A cluster that is not running (yet): its jobs and logs are a 409 that says so
    assert job_server.api("POST", "clusters", {"name": "t-starting"}).status_code == 202
    try:
        for path in ("clusters/t-starting/jobs", "clusters/t-starting/nodes/t-starting-head/logs"):
            response = job_server.api("GET", path)
            assert response.status_code == 409 and "is starting" in response.json()["message"], response.text
    finally:
        job_server.api("DELETE", "clusters/t-starting")


def test_node_logs_through_rays_log_api(job_server: LiveServer) -> None:
    head = f"{CLUSTER}-head"
    listed = job_server.api("GET", f"clusters/{CLUSTER}/nodes/{head}/logs")
    assert listed.status_code == 200, listed.text
    files = [f for names in listed.json()["files"].values() for f in names]
    assert "raylet.out" in files and "gcs_server.out" in files, files
    tail = job_server.api("GET", f"clusters/{CLUSTER}/nodes/{head}/logs?file=raylet.out&lines=5")
    assert tail.status_code == 200 and 0 < len(tail.json()["logs"].splitlines()) <= 5, tail.text


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"jupyter_raykube": True},
                          "identity_provider_class": "tests.fakes.HeaderIdentityProvider"},
            "RayKube": {"restrict_to_owner": True},
            "ClusterManager": {"owner": "alice", "backend_class": "tests.fakes.RefusingBackend"}}


@pytest.mark.parametrize("method,path", [
    ("GET", "clusters/c/jobs"), ("POST", "clusters/c/jobs"), ("GET", "clusters/c/jobs/raysubmit_x"),
    ("GET", "clusters/c/jobs/raysubmit_x/logs"), ("POST", "clusters/c/jobs/raysubmit_x/stop"),
    ("PUT", "clusters/c/packages/_ray_pkg_0123456789abcdef.zip"), ("GET", "clusters/c/nodes/n/logs")])
async def test_a_non_owner_gets_403_from_every_job_route(jp_fetch: Any, method: str, path: str) -> None:
    body = None if method == "GET" else json.dumps({"entrypoint": "python x.py"})
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("raykube", "api", *path.split("/"), method=method, body=body,
                       headers={"X-Test-User": "mallory"})
    assert refused.value.code == 403
    assert "alice" in json.loads(refused.value.response.body)["message"]


def test_submit_body_becomes_rays_runtime_env() -> None:
    body = submit_body({"entrypoint": "python x.py", "working_dir": "gcs://_ray_pkg_0123456789abcdef.zip",
                        "pip": ["emoji==2.12.1"], "env": {"A": "1"}})
    assert body == {"entrypoint": "python x.py", "runtime_env": {
        "working_dir": "gcs://_ray_pkg_0123456789abcdef.zip", "pip": ["emoji==2.12.1"], "env_vars": {"A": "1"}}}
    for bad, field in (({"entrypoint": "x", "pip": ["-e /etc"]}, "pip"), ({"entrypoint": "x", "env": []}, "env"),
                       ({"entrypoint": "x", "working_dir": "gcs://../x.zip"}, "working_dir"), (None, "body")):
        with pytest.raises(SpecError) as refused:
            submit_body(bad)
        assert refused.value.field == field


def test_working_dir_package_is_named_by_its_content(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text("X = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    name, data = working_dir_package(str(tmp_path), {"_rayjob_cell.py": "print(1)"})
    assert re.fullmatch(r"_ray_pkg_[0-9a-f]{32}\.zip", name)
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["mod.py", "_rayjob_cell.py"]
    assert working_dir_package(str(tmp_path), {"_rayjob_cell.py": "print(1)"})[0] == name
    assert working_dir_package(str(tmp_path), {"_rayjob_cell.py": "print(2)"})[0] != name


def test_interrupt_without_stdin_detaches_and_says_how_to_stop(
        job_server: LiveServer, kernel: tuple[str, BlockingKernelClient]) -> None:
    kernel_id, client = kernel
    _execute(client, "%load_ext jupyter_raykube")
    interrupted: list[str] = []

    def interrupt_once_running(text: str) -> None:
        if "waiting" in text and not interrupted:
            interrupted.append(_job_id(text))
            requests.post(f"{job_server.url}api/kernels/{kernel_id}/interrupt", timeout=60,
                          headers={"Authorization": f"token {job_server.token}"})

    status, out = _execute(client, f"%%rayjob --cluster {CLUSTER}\nimport time\nprint('waiting')\n"
                                   "time.sleep(600)\n", interrupt_once_running)
    assert status == "ok", out
    job_id = interrupted[0]
    assert f"Detached; Ray job {job_id} keeps running" in out and f"%rayjob stop {job_id}" in out, out
    assert job_server.api("GET", f"clusters/{CLUSTER}/jobs/{job_id}").json()["state"] == "RUNNING"
    status, out = _execute(client, f"%rayjob stop {job_id}")
    assert status == "ok", out


TICKER = ("python -u -c \"import time\nfor i in range(100000):\n    print(f'tick {i}', flush=True)\n"
          "    time.sleep(0.2)\"")


def test_a_held_logs_read_over_rest_answers_with_the_next_output(job_server: LiveServer) -> None:
    submitted = job_server.api("POST", f"clusters/{CLUSTER}/jobs", {"entrypoint": TICKER})
    assert submitted.status_code == 201, submitted.text
    logs = f"clusters/{CLUSTER}/jobs/{submitted.json()['id']}/logs"
    try:
        page = job_server.api("GET", f"{logs}?offset=0&wait=30").json()
        seen = page["logs"]
        while "\ntick 1\n" not in seen:
            page = job_server.api("GET", f"{logs}?offset={page['next_offset']}&wait=30").json()
            seen += page["logs"]
        started = time.monotonic()
        held = job_server.api("GET", f"{logs}?offset={page['next_offset']}&wait=45")
        assert held.status_code == 200 and time.monotonic() - started < 30, held.text
        last_tick = int(re.findall(r"^tick (\d+)$", seen, re.M)[-1])
        assert held.json()["logs"].startswith(f"tick {last_tick + 1}\n"), held.text
        assert held.json()["next_offset"] > page["next_offset"] and held.json()["dropped"] == 0
        past = job_server.api("GET", f"{logs}?offset={held.json()['next_offset'] + 10**6}")
        assert past.status_code == 400 and "offset" in past.json()["message"], past.text
    finally:
        stopped = job_server.api("POST", logs.replace("/logs", "/stop"))
    assert stopped.status_code == 200, stopped.text
    final = job_server.api("GET", f"{logs}?offset={held.json()['next_offset']}&wait=45").json()
    while final["job"]["state"] not in ("STOPPED", "FAILED", "SUCCEEDED"):
        final = job_server.api("GET", f"{logs}?offset={final['next_offset']}&wait=45").json()
    assert final["job"]["state"] == "STOPPED", final


def test_a_running_jobs_log_is_followed_once_and_held_reads_wake_on_new_output(
        blocking_manager: BlockingManager) -> None:
    """Real cluster and Ray's own log tail, driven as the logs route drives it."""
    manager = blocking_manager.manager
    cluster = blocking_manager.call(manager.create, ClusterSpec(
        name="t-joblogs", groups=(WorkerGroup("cpu", cpus=1, min=0, max=0),)))
    followers = blocking_manager.call(_followers, 60.0)
    forgetful = blocking_manager.call(_followers, 1.0)  # drops a follower nobody read for 1 s
    try:
        jobs = RayJobs(cluster.handle.dashboard_address, manager.token)
        ticker = blocking_manager.call(jobs.submit, {"entrypoint": TICKER})["id"]

        def read(offset: int, wait_s: float, registry: JobLogFollowers = followers) -> dict[str, Any]:
            return blocking_manager.call(read_job_log, registry, cluster, jobs, ticker, offset=offset, wait_s=wait_s)

        page = read(0, 30)
        seen = page["logs"]
        while "tick 2" not in seen:
            page = read(page["next_offset"], 30)
            seen += page["logs"]
        assert page["job"]["state"] == "RUNNING" and page["dropped"] == 0, page
        assert "\ntick 0\ntick 1\n" in seen, seen

        # A held read answers with the next output, long before its wait is over.
        started = time.monotonic()
        following = read(page["next_offset"], 60)
        assert time.monotonic() - started < 30, "the read was held to its wait"
        last_tick = int(re.findall(r"^tick (\d+)$", seen, re.M)[-1])
        assert following["logs"].startswith(f"tick {last_tick + 1}\n"), (seen, following)
        assert following["next_offset"] == page["next_offset"] + len(following["logs"])

        # Every reader, from any offset, is served by the one follower and its one Ray tail.
        whole = read(0, 0)
        assert whole["logs"].startswith(seen + following["logs"]), whole
        for offset in range(0, whole["next_offset"], max(1, whole["next_offset"] // 20)):
            assert read(offset, 0)["logs"].startswith(whole["logs"][offset:offset + 8])
        assert len(followers) == 1 and followers.streams_opened == 1 and followers.tasks == 1

        with pytest.raises(SpecError) as refused:  # past what the job has printed
            read(whole["next_offset"] + 10**6, 0)
        assert refused.value.field == "offset"

        # Nobody reads it: the follower goes; a later read starts another that re-reads Ray's tail.
        assert "\ntick 0\n" in read(0, 0, forgetful)["logs"]
        wait_for(lambda: len(forgetful) == 0 and forgetful.tasks == 0, 30, "the unread follower to end")
        assert "\ntick 0\n" in read(0, 0, forgetful)["logs"] and forgetful.streams_opened == 2

        # A finished job: its follower ends once Ray closed the tail; a new read reads it whole.
        done = blocking_manager.call(jobs.submit, {"entrypoint": "python -c \"print('only line')\""})["id"]
        first = blocking_manager.call(read_job_log, followers, cluster, jobs, done, offset=0, wait_s=30)
        while first["job"]["state"] not in ("SUCCEEDED", "FAILED"):
            first = blocking_manager.call(read_job_log, followers, cluster, jobs, done, offset=0, wait_s=30)
        assert first["job"]["state"] == "SUCCEEDED" and first["logs"].endswith("\nonly line\n"), first
        wait_for(lambda: followers.tasks == 1, 30, "the finished job's follower to end")
        length = first["next_offset"]
        again = blocking_manager.call(read_job_log, followers, cluster, jobs, done, offset=length - 5, wait_s=30)
        assert again["logs"] == "line\n" and again["next_offset"] == length, again
        with pytest.raises(SpecError) as refused:
            blocking_manager.call(read_job_log, followers, cluster, jobs, done, offset=length + 1, wait_s=0)
        assert refused.value.field == "offset"
    finally:
        blocking_manager.call(manager.stop, "t-joblogs")
    # Stopping the cluster ends its followers: no task, no open tail.
    wait_for(lambda: followers.tasks == 0 and len(followers) == 0, 60, "the followers to end with the cluster")
    wait_for(lambda: forgetful.tasks == 0, 60, "the other follower to end with the cluster")


async def _followers(idle_s: float) -> JobLogFollowers:
    return JobLogFollowers(idle_s=idle_s)


def test_the_log_buffer_keeps_the_newest_characters_and_says_what_was_dropped() -> None:
    buffer = LogBuffer(max_chars=10)
    for piece in ("0123", "4567", "89ab", "cdef"):
        buffer.append(piece)
    assert (buffer.start, buffer.end) == (4, 16)
    assert buffer.since(0) == ("456789abcdef", 4)  # 4 characters after offset 0 are gone
    assert buffer.since(6) == ("6789abcdef", 0)
    assert buffer.since(14) == ("ef", 0) and buffer.since(16) == ("", 0)
