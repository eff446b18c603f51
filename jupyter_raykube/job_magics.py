"""`%rayjob submit|list|status|logs|stop|attach` and the `%%rayjob` cell magic: Ray jobs from a
notebook, through the Jupyter server (job_client.py), with the job's output streamed into the cell
while it runs. A job lives on its cluster, so any kernel (a restarted one too) can list, follow
or stop it by id.

    %%rayjob --cluster alice-1 --working-dir ./src --pip emoji
    import mymodule; mymodule.train()
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from IPython.core.error import StdinNotImplementedError, UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from .backends.base import BackendError, ClusterNotFound
from .formatting import duration
from .job_client import CELL_SCRIPT, Job, JobClient, page_text
from .magics import _Parser

ERROR_TAIL_LINES = 15


class RayJobFailed(Exception):
    """A job ended FAILED or STOPPED: the cell fails (so "Run all" stops) with a short report
    instead of a kernel traceback."""

    def __init__(self, report: str) -> None:
        super().__init__(report)
        self.report = report

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return self.report.splitlines()


def _build_parser() -> _Parser:
    parser = _Parser(prog="%rayjob", description="Submit, follow and stop Ray jobs on your clusters.")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    submit = commands.add_parser("submit", help="submit CMD as a job and stream its output: submit [opts] -- CMD")
    _add_submit_options(submit)
    submit.add_argument("--no-wait", action="store_true", help="return once submitted")
    submit.add_argument("entrypoint", nargs=argparse.REMAINDER, help="the command, after --")
    listing = commands.add_parser("list", help="jobs of a cluster (default: every running cluster)")
    listing.add_argument("--cluster")
    for command, text in (("status", "a job's state"), ("stop", "stop a job"),
                          ("attach", "follow a job's output until it ends")):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("job_id")
        sub.add_argument("--cluster")
    logs = commands.add_parser("logs", help="a job's output so far")
    logs.add_argument("job_id")
    logs.add_argument("--cluster")
    logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    return parser


def _add_submit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", help="cluster name (default: the only running one)")
    parser.add_argument("--working-dir", help="a directory shipped to the job as its working dir")
    parser.add_argument("--pip", nargs="+", default=[], metavar="PKG", help="pip packages the job needs")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="an environment variable")


def _cell_parser() -> _Parser:
    parser = _Parser(prog="%%rayjob", description="Run this cell as a Ray job on a cluster.")
    _add_submit_options(parser)
    parser.add_argument("--no-wait", action="store_true", help="return once submitted")
    return parser


@magics_class
class RayJobMagics(Magics):
    """`%rayjob` and `%%rayjob`. `client` is injectable; by default the server that started
    this kernel (jobs need the Jupyter server extension)."""

    def __init__(self, shell: Any = None, client: JobClient | None = None) -> None:
        super().__init__(shell)
        self._client = client
        self._parser = _build_parser()
        self._cell = _cell_parser()

    @property
    def client(self) -> JobClient:
        if self._client is None:
            self._client = JobClient.from_environment()
            if self._client is None:
                raise UsageError("%rayjob runs jobs through the Jupyter server's Ray clusters extension; "
                                 "this kernel was not started by such a server (use `ray job submit` here)")
        return self._client

    @line_cell_magic
    def rayjob(self, line: str, cell: str | None = None) -> None:
        try:
            words = shlex.split(line)
        except ValueError as exc:  # an unclosed quote
            raise UsageError(f"{exc} in: {line}") from None
        try:
            if cell is not None:
                self._run_cell(self._cell.parse_args(words), cell)
                return
            args = self._parser.parse_args(words)
            if args.command is None:
                raise UsageError(f"a command is required\n\n{self._parser.format_usage()}")
            getattr(self, f"_{args.command}")(args)
        except (BackendError, ClusterNotFound) as exc:
            raise UsageError(str(exc)) from None

    # --- commands ----------------------------------------------------------------------------

    def _run_cell(self, args: Any, cell: str) -> None:
        self._submit_and_follow(args, "python -u " + CELL_SCRIPT, {CELL_SCRIPT: cell})

    def _submit(self, args: Any) -> None:
        command = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
        if not command:
            raise UsageError("give the command after --, e.g. %rayjob submit --working-dir . -- python train.py")
        self._submit_and_follow(args, shlex.join(command), {})

    def _list(self, args: Any) -> None:
        clusters = [args.cluster] if args.cluster else self.client.running_clusters()
        rows = [(name, job) for name in clusters for job in self.client.list(name)]
        if not rows:
            print("No Ray jobs on " + (f"cluster {args.cluster}." if args.cluster else "your running clusters."))
            return
        print(f"{'JOB':<30} {'CLUSTER':<16} {'STATE':<10} {'STARTED':<20} ENTRYPOINT")
        for name, job in rows:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["start_time"])) if job["start_time"] else ""
            print(f"{job['id']:<30} {name:<16} {job['state']:<10} {started:<20} {job['entrypoint'][:60]}")

    def _status(self, args: Any) -> None:
        cluster, job = self.client.find(args.job_id, args.cluster)
        print(_summary(job, cluster))

    def _logs(self, args: Any) -> None:
        cluster, _ = self.client.find(args.job_id, args.cluster)
        _write(page_text(self.client.logs(cluster, args.job_id, tail=args.tail)))

    def _stop(self, args: Any) -> None:
        cluster, _ = self.client.find(args.job_id, args.cluster)
        print(_summary(self.client.stop(cluster, args.job_id), cluster))

    def _attach(self, args: Any) -> None:
        cluster, _ = self.client.find(args.job_id, args.cluster)
        self._follow(cluster, args.job_id)

    # --- helpers -----------------------------------------------------------------------------

    def _submit_and_follow(self, args: Any, entrypoint: str, files: dict[str, str]) -> None:
        env = dict(_env_pair(item) for item in args.env)
        env.setdefault("PYTHONUNBUFFERED", "1")  # prints reach the cell as they happen
        cluster = self._cluster(args.cluster)
        job = self.client.submit(cluster, entrypoint, working_dir=args.working_dir, extra_files=files,
                                 pip=args.pip, env=env)
        print(f"Ray job {job['id']} submitted to {cluster}.", flush=True)
        if args.no_wait:
            print(f"Follow it with %rayjob attach {job['id']}; stop it with %rayjob stop {job['id']}.")
            return
        self._follow(cluster, job["id"])

    def _follow(self, cluster: str, job_id: str) -> Job:
        """Stream the output until the job ends. Ctrl-C (interrupt) asks: stop the job or detach."""
        offset = 0
        try:
            for page in self.client.log_pages(cluster, job_id):
                _write(page_text(page))
                offset, job = page["next_offset"], page["job"]
        except KeyboardInterrupt:
            if self._ask_stop(job_id):
                job = self.client.stop(cluster, job_id)
                print(f"\nStopping Ray job {job_id}.")
                job = self.client.follow(cluster, job_id, lambda _: None, offset=offset)
            else:
                print(f"\nDetached; Ray job {job_id} keeps running. Follow it with %rayjob attach {job_id}, "
                      f"stop it with %rayjob stop {job_id}.")
                return self.client.get(cluster, job_id)
        if job["state"] == "SUCCEEDED":
            print(_summary(job, cluster))
            return job
        tail = "\n".join(self.client.logs(cluster, job_id, tail=ERROR_TAIL_LINES)["logs"].splitlines())
        raise RayJobFailed(f"{_summary(job, cluster)}\n{job['message'][:500]}\n"
                           f"Last lines of its output:\n{tail}")

    def _ask_stop(self, job_id: str) -> bool:
        """True to stop; a kernel that cannot ask (no stdin: nbconvert, papermill) detaches."""
        try:
            answer = input(f"Stop Ray job {job_id}? [s]top / [d]etach: ")
        except (StdinNotImplementedError, EOFError, KeyboardInterrupt):
            return False
        return answer.strip().lower().startswith("s")

    def _cluster(self, given: str | None) -> str:
        if given:
            return given
        running = self.client.running_clusters()
        if len(running) != 1:
            found = ", ".join(running) if running else "none is running (start one: %raycluster start)"
            raise UsageError(f"name the cluster with --cluster NAME; your running clusters: {found}")
        return running[0]


def _write(text: str) -> None:
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def _env_pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"--env {item!r}: give it as NAME=VALUE")
    return key, value


def _summary(job: Job, cluster: str) -> str:
    took = ""
    if job.get("start_time"):
        took = f" in {duration((job.get('end_time') or time.time()) - job['start_time'])}"
    return f"Ray job {job['id']} on {cluster}: {job['state']}{took}"
