"""The kernel's side of Ray jobs: it zips a working dir (plus a cell's script), uploads it
through the Jupyter server into the cluster's GCS, submits, and reads logs and states back, all
over the server's REST API with the server's token (client.py), so it works the same for local
and Kubernetes clusters, after a kernel restart too (jobs live on the cluster, not here)."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .client import SERVER_TOKEN_ENV, SERVER_URL_ENV, ClientError, RestSession
from .errors import ClusterNotFound
from .jobs import FINAL_STATES, JobNotFound

Job = dict[str, Any]
CELL_SCRIPT = "_rayjob_cell.py"  # a %%rayjob cell, at the top of its working dir
_SKIPPED_DIRS = {".git", "__pycache__", ".ipynb_checkpoints", ".venv", "node_modules"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so equal contents give the same package name
FOLLOW_WAIT_S = 30  # how long the server holds each read of a followed job's logs for new output


def working_dir_package(directory: str | None, extra_files: Mapping[str, str]) -> tuple[str, bytes]:
    """A zip of `directory` (without VCS, caches, checkpoints) plus `extra_files`, named by its
    content as Ray names packages (`_ray_pkg_<hash>.zip`), so an unchanged dir is not sent twice."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(_files(Path(directory))) if directory else ():
            relative = path.relative_to(directory).as_posix()  # type: ignore[arg-type]
            if relative not in extra_files:
                archive.writestr(zipfile.ZipInfo(relative, _ZIP_TIME), path.read_bytes())
        for name, text in sorted(extra_files.items()):
            archive.writestr(zipfile.ZipInfo(name, _ZIP_TIME), text)
    data = buffer.getvalue()
    return f"_ray_pkg_{hashlib.sha256(data).hexdigest()[:32]}.zip", data


def _files(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        raise ClientError(f"--working-dir {str(root)!r} is not a directory")
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        for name in names:
            if not name.endswith(".pyc"):
                yield Path(folder, name)


class JobClient(RestSession):
    """Ray jobs through the Jupyter server's `/raykube/api/clusters/{name}/jobs` routes."""

    @classmethod
    def from_environment(cls) -> JobClient | None:
        """The server that started this kernel, if it has the extension."""
        url = os.environ.get(SERVER_URL_ENV)
        return cls(url, os.environ.get(SERVER_TOKEN_ENV, "")) if url else None

    def running_clusters(self) -> list[str]:
        clusters = self._request("GET", "/clusters")["clusters"]
        return [c["name"] for c in clusters if c["state"] == "running"]

    def submit(self, cluster: str, entrypoint: str, *, working_dir: str | None = None,
               extra_files: Mapping[str, str] | None = None, pip: list[str] | None = None,
               env: Mapping[str, str] | None = None) -> Job:
        body: dict[str, Any] = {"entrypoint": entrypoint, "env": dict(env or {})}
        if pip:
            body["pip"] = list(pip)
        if working_dir or extra_files:
            name, data = working_dir_package(working_dir, extra_files or {})
            body["working_dir"] = self._request("PUT", f"/clusters/{quote(cluster)}/packages/{name}", data=data,
                                                timeout=300)["uri"]
        return self._request("POST", f"/clusters/{quote(cluster)}/jobs", body)

    def list(self, cluster: str) -> list[Job]:
        return self._request("GET", f"/clusters/{quote(cluster)}/jobs")["jobs"]

    def get(self, cluster: str, job_id: str) -> Job:
        return self._request("GET", f"/clusters/{quote(cluster)}/jobs/{quote(job_id, safe='')}")

    def logs(self, cluster: str, job_id: str, *, offset: int = 0, tail: int | None = None,
             wait_s: int = 0) -> dict[str, Any]:
        """What the job printed from `offset` on (held up to `wait_s` until there is some), or its
        last `tail` lines."""
        query = f"tail={tail}" if tail is not None else f"offset={offset}&wait={wait_s}"
        return self._request("GET", f"/clusters/{quote(cluster)}/jobs/{quote(job_id, safe='')}/logs?{query}",
                             timeout=wait_s + 60)

    def stop(self, cluster: str, job_id: str) -> Job:
        return self._request("POST", f"/clusters/{quote(cluster)}/jobs/{quote(job_id, safe='')}/stop")["job"]

    def find(self, job_id: str, cluster: str | None = None) -> tuple[str, Job]:
        """The cluster that runs `job_id` (any running one of this user's, unless named)."""
        for name in [cluster] if cluster else self.running_clusters():
            try:
                return name, self.get(name, job_id)
            except ClusterNotFound:
                continue
        where = f"cluster {cluster!r}" if cluster else "any running cluster"
        raise JobNotFound(f"no job {job_id!r} on {where} (see %rayjob list)")

    def log_pages(self, cluster: str, job_id: str, offset: int = 0) -> Iterator[dict[str, Any]]:
        """The job's output as it comes, one page per new piece, until a page says it ended: each
        read waits on the server for more (no polling here; Ctrl-C interrupts the wait)."""
        while True:
            page = self.logs(cluster, job_id, offset=offset, wait_s=FOLLOW_WAIT_S)
            yield page
            if page["job"]["state"] in FINAL_STATES:  # the server says so once the logs are complete
                return
            offset = page["next_offset"]

    def follow(self, cluster: str, job_id: str, write: Callable[[str], None], offset: int = 0) -> Job:
        """Write the job's output as it comes until the job ends; returns its final record."""
        job: Job = {}
        for page in self.log_pages(cluster, job_id, offset):
            write(page_text(page))
            job = page["job"]
        return job


def page_text(page: Mapping[str, Any]) -> str:
    """A logs page as shown: its output, after a note if the server no longer had some of it."""
    dropped = int(page.get("dropped") or 0)
    note = f"[... {dropped} characters of output not kept by the server ...]\n" if dropped else ""
    return note + page["logs"]
