"""REST routes for a cluster's Ray jobs and its nodes' logs. They only parse, check and delegate:
to Ray's Jobs API and log API on the cluster's dashboard (jobs.py, node_logs.py), with the
cluster's Ray token, so kernels and the sidebar never need the dashboard's address, a Ray Client
or a port-forward. Same rules as every route (guard.py): owner only, 400 naming the field,
404 for an unknown cluster, job or node, 409 while the cluster is not running."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..job_logs import WAIT_MAX_S, JobLogFollowers, read_job_log, read_job_tail
from ..jobs import RayJobs, check_package_name
from ..manager import Cluster
from ..node_logs import check_lines, check_log_file, read_node_log
from .handlers import RayKubeHandler, mapped_errors, query_int

UPLOAD_LIMIT_SETTING = "raykube_max_upload_bytes"
JOB_LOGS_SETTING = "raykube_job_logs"  # the server's JobLogFollowers


class ClusterApiHandler(RayKubeHandler):
    """Reaches a running cluster's dashboard on the caller's behalf."""

    async def running(self, name: str) -> Cluster:
        return await self.manager.running(name, "jobs and logs need it running")

    async def jobs(self, name: str) -> RayJobs:
        return ray_jobs(await self.running(name), self.manager.token)


def ray_jobs(cluster: Cluster, token: str) -> RayJobs:
    assert cluster.handle is not None
    return RayJobs(cluster.handle.dashboard_address, token)


class JobsHandler(ClusterApiHandler):
    @web.authenticated
    @authorized
    @mapped_errors
    async def get(self, name: str) -> None:
        self.reply({"jobs": await (await self.jobs(name)).list()})

    @web.authenticated
    @authorized
    @mapped_errors
    async def post(self, name: str) -> None:
        """`{"entrypoint": "python x.py", "working_dir": "gcs://…", "pip": [...], "env": {...}}`"""
        body = self.json_body()
        self.reply(await (await self.jobs(name)).submit(body), status=201)


class JobHandler(ClusterApiHandler):
    @web.authenticated
    @authorized
    @mapped_errors
    async def get(self, name: str, job: str) -> None:
        self.reply(await (await self.jobs(name)).get(job))


class JobLogsHandler(ClusterApiHandler):
    @web.authenticated
    @authorized
    @mapped_errors
    async def get(self, name: str, job: str) -> None:
        """`?offset=N&wait=S`: what the job printed from character N on, at once if there is
        some, else held up to S seconds for more or for the job's end; with the next offset
        and the job (job_logs.py). `?tail=N`: its last N lines, and the offset to follow from."""
        tail = self.get_query_argument("tail", None)
        lines = check_lines(tail) if tail is not None else None
        offset = query_int(self, "offset", 0, 10**15) or 0
        wait = query_int(self, "wait", 0, WAIT_MAX_S) or 0
        cluster = await self.running(name)
        followers: JobLogFollowers = self.settings[JOB_LOGS_SETTING]
        jobs = ray_jobs(cluster, self.manager.token)
        if lines is None:
            self.reply(await read_job_log(followers, cluster, jobs, job, offset=offset, wait_s=wait))
        else:
            self.reply(await read_job_tail(followers, cluster, jobs, job, lines))


class JobStopHandler(ClusterApiHandler):
    @web.authenticated
    @authorized
    @mapped_errors
    async def post(self, name: str, job: str) -> None:
        jobs = await self.jobs(name)
        stopped = await jobs.stop(job)
        self.reply({"stopped": stopped, "job": await jobs.get(job)})


class PackageHandler(ClusterApiHandler):
    """PUT a working dir's zip into the cluster's GCS (Ray's package upload), so a job can name it
    as `working_dir`. The only route whose body is not JSON, with its own limit
    (`c.RayKube.max_upload_bytes`)."""

    @web.authenticated
    @authorized
    @mapped_errors
    async def put(self, name: str, package: str) -> None:
        check_package_name(package)
        limit = int(self.settings[UPLOAD_LIMIT_SETTING])
        size = len(self.request.body)
        if not 0 < size <= limit:
            raise web.HTTPError(400, f"the package is {size} bytes; 1 to {limit} are allowed "
                                     "(c.RayKube.max_upload_bytes); leave large data out of the working dir")
        uri = await (await self.jobs(name)).upload_package(package, self.request.body)
        self.reply({"uri": uri}, status=201)


class NodeLogsHandler(ClusterApiHandler):
    @web.authenticated
    @authorized
    @mapped_errors
    async def get(self, name: str, node: str) -> None:
        """`?file=raylet.out&lines=N`: the file's last lines; without `file`: the node's log files."""
        lines = check_lines(self.get_query_argument("lines", None))
        filename = self.get_query_argument("file", None)
        if filename is not None:
            check_log_file(filename)
        self.reply(await read_node_log(self.manager, await self.running(name), node, filename, lines))
