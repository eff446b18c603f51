"""Ray jobs of a cluster, through Ray's own Jobs REST API on its dashboard (`/api/jobs/`,
`/api/packages/`). The server calls it with the cluster's dashboard address and Ray token, so a
kernel submits, follows and stops jobs through Jupyter's auth on both backends: no Ray Client,
no port-forward. This module checks what a client sends (400 naming the field) and turns Ray's
answers into one job JSON shape for the magic, the sidebar and REST:

    {"id": "raysubmit_…", "state": "RUNNING", "entrypoint": "python cell.py",
     "start_time": 1733540000.0, "end_time": null, "message": "…", "runtime_env": {…}}
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from tornado.websocket import WebSocketClientConnection

from .dashboard_api import DashboardRefused, RayDashboard, error_line
from .errors import BackendError, ClusterNotFound, SpecError

JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
PACKAGE_NAME = re.compile(r"^_ray_pkg_[0-9a-f]{16,64}\.zip$")  # content-addressed, as Ray names them
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_PIP_SPEC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-\[\],<>=!~ ]{0,199}$")
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
MAX_ENTRYPOINT_CHARS = 10_000
_REQUEST_TIMEOUT_S = 60.0


class JobNotFound(ClusterNotFound):
    """No job of that id on the cluster (REST: 404, like an unknown cluster)."""


def check_job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise SpecError("job id", job_id, "letters, digits, '_', '.' and '-' (at most 128), "
                                          "as Ray's submission ids, e.g. raysubmit_Ab12Cd34")
    return job_id


def check_package_name(name: str) -> str:
    if not PACKAGE_NAME.match(name):
        raise SpecError("package", name, "a content-addressed zip name, _ray_pkg_<hex>.zip")
    return name


def submit_body(request: Any) -> dict[str, Any]:
    """A POST jobs body checked field by field, as Ray's JobSubmitRequest: `entrypoint` (a shell
    command), optional `working_dir` (a package uploaded first), `pip` and `env`."""
    if not isinstance(request, dict):
        raise SpecError("body", request, 'an object, e.g. {"entrypoint": "python train.py"}')
    unknown = sorted(set(request) - {"entrypoint", "working_dir", "pip", "env", "submission_id"})
    if unknown:
        raise SpecError(unknown[0], request[unknown[0]], "one of entrypoint, working_dir, pip, env, submission_id")
    entrypoint = request.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint.strip() or len(entrypoint) > MAX_ENTRYPOINT_CHARS:
        raise SpecError("entrypoint", entrypoint, f"a shell command of 1 to {MAX_ENTRYPOINT_CHARS} characters")
    runtime_env: dict[str, Any] = {}
    working_dir = request.get("working_dir")
    if working_dir is not None:
        if not isinstance(working_dir, str) or not working_dir.startswith("gcs://") \
                or not PACKAGE_NAME.match(working_dir[len("gcs://"):]):
            raise SpecError("working_dir", working_dir, "gcs://_ray_pkg_<hex>.zip, a package uploaded first "
                                                        "with PUT .../packages/<name>")
        runtime_env["working_dir"] = working_dir
    pip = request.get("pip")
    if pip is not None:
        valid = isinstance(pip, list) and len(pip) <= 100
        if not valid or not all(isinstance(p, str) and _PIP_SPEC.match(p) for p in pip):
            raise SpecError("pip", pip, 'a list of requirement strings, e.g. ["emoji==2.12.1"]')
        if pip:
            runtime_env["pip"] = list(pip)
    env = request.get("env")
    if env is not None:
        if not isinstance(env, dict) or len(env) > 200:
            raise SpecError("env", env, 'an object of NAME -> value strings, e.g. {"DEBUG": "1"}')
        for key, value in env.items():
            if not _ENV_NAME.match(key) or not isinstance(value, str) or len(value) > 10_000:
                raise SpecError(f"env.{key}", value, "a variable name ([A-Za-z_][A-Za-z0-9_]*) with a string value")
        if env:
            runtime_env["env_vars"] = dict(env)
    body: dict[str, Any] = {"entrypoint": entrypoint, "runtime_env": runtime_env}
    submission_id = request.get("submission_id")
    if submission_id is not None:
        if not isinstance(submission_id, str):
            raise SpecError("submission_id", submission_id, "a string id")
        body["submission_id"] = check_job_id(submission_id)
    return body


def job_json(details: Mapping[str, Any]) -> dict[str, Any]:
    """Ray's JobDetails as our job shape (times in epoch seconds)."""

    def seconds(ms: Any) -> float | None:
        return ms / 1000.0 if isinstance(ms, (int, float)) and ms > 0 else None

    return {"id": details.get("submission_id") or details.get("job_id"), "state": details.get("status"),
            "entrypoint": details.get("entrypoint", ""), "start_time": seconds(details.get("start_time")),
            "end_time": seconds(details.get("end_time")), "message": details.get("message") or "",
            "runtime_env": details.get("runtime_env") or {}}


class RayJobs:
    """Ray's Jobs API of one cluster: its dashboard `host:port` and Ray token."""

    def __init__(self, dashboard_address: str, token: str) -> None:
        self.dashboard = RayDashboard(dashboard_address, token)

    async def submit(self, request: Any) -> dict[str, Any]:
        body = submit_body(request)
        answer = await self._call("POST", "/api/jobs/", json.dumps(body).encode())
        return await self.get(json.loads(answer)["submission_id"])

    async def list(self) -> list[dict[str, Any]]:
        """Submitted jobs, newest first (drivers of notebooks are Ray jobs too, but not these)."""
        jobs = json.loads(await self._call("GET", "/api/jobs/"))
        submitted = [job_json(j) for j in jobs if j.get("type") == "SUBMISSION"]
        return sorted(submitted, key=lambda j: j["start_time"] or 0.0, reverse=True)

    async def get(self, job_id: str) -> dict[str, Any]:
        return job_json(json.loads(await self._call("GET", f"/api/jobs/{quote(check_job_id(job_id))}")))

    async def logs(self, job_id: str) -> str:
        """Everything the job's driver printed so far, in one answer: Ray reads the whole file
        each time, so this is for a finished job read once (job_logs.py follows running ones)."""
        answer = await self._call("GET", f"/api/jobs/{quote(check_job_id(job_id))}/logs")
        return str(json.loads(answer).get("logs", ""))

    async def open_log_stream(self, job_id: str, on_text: Callable[[str | bytes | None], None]
                              ) -> WebSocketClientConnection:
        """Ray's log tail of the job (`/api/jobs/{id}/logs/tail`, a websocket): the whole log
        from its first character, then each new piece as the driver writes it; `on_text` gets
        None when Ray closes it, after the job has ended and its last output was sent."""
        path = f"/api/jobs/{quote(check_job_id(job_id))}/logs/tail"
        try:
            return await self.dashboard.open_websocket(path, on_text)
        except DashboardRefused as refused:
            raise self._refusal(refused.code, path, refused.detail) from None

    async def stop(self, job_id: str) -> bool:
        answer = await self._call("POST", f"/api/jobs/{quote(check_job_id(job_id))}/stop", b"")
        return bool(json.loads(answer).get("stopped"))

    async def upload_package(self, name: str, data: bytes) -> str:
        """Store a working-dir zip in the cluster's GCS, as `ray job submit` does; returns its URI."""
        path = f"/api/packages/gcs/{check_package_name(name)}"
        await self._call("PUT", path, data)
        return f"gcs://{name}"

    async def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        response = await self.dashboard.fetch(method, path, body, timeout_s=_REQUEST_TIMEOUT_S)
        if response.code >= 300:
            raise self._refusal(response.code, path, error_line(response.body))
        return response.body or b"null"

    @staticmethod
    def _refusal(code: int, path: str, detail: str) -> Exception:
        job = path.split("/")[3] if path.startswith("/api/jobs/") and path.count("/") >= 3 else ""
        if code == 404:
            return JobNotFound(f"no job {job!r} on this cluster (see GET .../jobs)" if job else "not found")
        if code == 400:
            return SpecError("job", job, detail)
        return BackendError(f"Ray's Jobs API answered {code}: {detail}")
