"""`%raycluster start|stop|status|scale|list|attach`: a Ray cluster one line away.

The magic parses the line, builds a `ClusterSpec`, calls the manager and connects `ray.init`
to the result. It owns no lifecycle logic. Bad arguments raise IPython's `UsageError`, which
prints the reason and the usage, not a traceback.
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import replace
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser
from IPython.display import display

from .backends.base import BackendError, ClusterNotFound
from .blocking import BlockingManager, shared_manager
from .connect import connect_driver
from .display import ClusterStatus, ClusterTable
from .spec import ClusterSpec, SpecError, default_spec, parse_cpus, parse_range

_NAME_CHARS = re.compile(r"[^a-z0-9-]+")


class _Parser(MagicArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}\n\n{self.format_usage()}")


def _build_parser() -> _Parser:
    parser = _Parser(prog="%raycluster", description="Start, inspect, scale and stop Ray clusters.")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    start = commands.add_parser("start", help="start a cluster and connect ray.init to it")
    start.add_argument("name", nargs="?", help="cluster name (default: <user>-<n>)")
    start.add_argument("--cpu-workers", metavar="MIN:MAX", help="range of cpu worker nodes, e.g. 0:4")
    start.add_argument("--gpu-workers", metavar="MIN:MAX", help="range of gpu worker nodes, e.g. 0:1")
    start.add_argument("--worker-cpus", metavar="N", help="CPUs per cpu worker node")
    start.add_argument("--idle-timeout", metavar="S", help="seconds before an idle worker is removed")
    start.add_argument("--backend", choices=("local", "kubernetes"), default=None)
    start.add_argument("--no-connect", action="store_true", help="do not call ray.init")
    status = commands.add_parser("status", help="show a cluster's nodes, demand and events")
    status.add_argument("name", nargs="?")
    scale = commands.add_parser("scale", help="set a group's size: N, or MIN:MAX to autoscale")
    scale.add_argument("group")
    scale.add_argument("size", metavar="N|MIN:MAX")
    scale.add_argument("--cluster", dest="name")
    stop = commands.add_parser("stop", help="stop a cluster (default: the connected one)")
    stop.add_argument("name", nargs="?")
    commands.add_parser("list", help="list this user's clusters")
    attach = commands.add_parser("attach", help="connect to a running cluster by name")
    attach.add_argument("name")
    attach.add_argument("--no-connect", action="store_true")
    return parser


@magics_class
class RayClusterMagics(Magics):
    """The `%raycluster` line magic. `manager` is injectable for tests and servers."""

    def __init__(self, shell: Any = None, manager: BlockingManager | None = None) -> None:
        super().__init__(shell)
        self._manager = manager
        self._current: str | None = None
        self._parser = _build_parser()

    @property
    def manager(self) -> BlockingManager:
        if self._manager is None:
            self._manager = shared_manager()
        return self._manager

    @line_magic
    def raycluster(self, line: str) -> Any:
        args = self._parser.parse_argstring(line)
        if args.command is None:
            raise UsageError(f"a command is required\n\n{self._parser.format_usage()}")
        try:
            return getattr(self, f"_{args.command}")(args)
        except SpecError as exc:
            raise UsageError(f"{exc}\n\n{self._parser.format_usage()}") from None
        except (BackendError, ClusterNotFound) as exc:
            raise UsageError(str(exc)) from None

    # --- commands ----------------------------------------------------------------------------

    def _start(self, args: Any) -> ClusterStatus:
        mgr = self.manager
        name = args.name or self._default_name()
        spec = _spec_from_args(name, args, backend=args.backend or mgr.manager.backend.name)
        cluster = self._run_with_progress(f"Starting Ray cluster {name}",
                                          mgr.manager.create, spec)
        self._current = name
        if not args.no_connect:
            connect_driver(cluster.handle, mgr.manager.token)
        return ClusterStatus(cluster.snapshot())

    def _attach(self, args: Any) -> ClusterStatus:
        cluster = self.manager.call(self.manager.manager.attach, args.name)
        self._current = args.name
        if not args.no_connect:
            connect_driver(cluster.handle, self.manager.manager.token)
        return ClusterStatus(cluster.snapshot())

    def _status(self, args: Any) -> ClusterStatus:
        mgr = self.manager.manager
        cluster = self.manager.call(mgr.get, self._name(args.name))
        self.manager.call(mgr.refresh, cluster)
        return ClusterStatus(cluster.snapshot())

    def _scale(self, args: Any) -> ClusterStatus:
        low, high = parse_range("size", args.size)
        name = self._name(args.name)
        mgr = self.manager.manager
        cluster = self._run_with_progress(f"Scaling {args.group} of {name} to {args.size}",
                                          mgr.scale, name, args.group, low, high, wait=low == high)
        return ClusterStatus(cluster.snapshot())

    def _stop(self, args: Any) -> None:
        name = self._name(args.name)
        self.manager.call(self.manager.manager.stop, name)
        if name == self._current:
            self._current = None
            _disconnect_driver()
        print(f"Ray cluster {name} stopped.")

    def _list(self, args: Any) -> ClusterTable:
        clusters = self.manager.call(self.manager.manager.list)
        return ClusterTable([c.snapshot() for c in clusters])

    # --- helpers -----------------------------------------------------------------------------

    def _name(self, given: str | None) -> str:
        name = given or self._current
        if name is None:
            raise UsageError("no cluster given and none connected in this kernel: "
                             "name one, e.g. %raycluster status NAME (see %raycluster list)")
        return name

    def _default_name(self) -> str:
        owner = _NAME_CHARS.sub("-", self.manager.manager.owner.lower()).strip("-")[:30] or "ray"
        taken = {c.name for c in self.manager.call(self.manager.manager.list)}
        return next(f"{owner}-{n}" for n in range(1, 10_000) if f"{owner}-{n}" not in taken)

    def _run_with_progress(self, title: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a manager coroutine on the manager's loop while this (the kernel's main) thread
        keeps one status line up to date. Ctrl-C cancels, and the manager cleans up."""
        latest: list[tuple[str, int, int]] = [("", 0, 1)]
        future = self.manager.portal.start_task_soon(
            lambda: func(*args, progress=lambda s, d, t: latest.__setitem__(0, (s, d, t)), **kwargs))
        line = display(_progress_bundle(title, *latest[0], 0.0), raw=True, display_id=True)
        started = time.monotonic()
        try:
            while True:
                try:
                    result = future.result(timeout=0.25)
                    break
                except TimeoutError:
                    elapsed = time.monotonic() - started
                    if line is not None:
                        line.update(_progress_bundle(title, *latest[0], elapsed), raw=True)
        except KeyboardInterrupt:
            future.cancel()
            raise
        if line is not None:
            done = f"{title}: done in {time.monotonic() - started:.1f} s"
            line.update({"text/plain": done, "text/html": f"<span>{done}</span>"}, raw=True)
        return result


def _progress_bundle(title: str, step: str, done: int, total: int, elapsed: float) -> dict[str, str]:
    """A status line with a progress bar in notebooks, plain text in a terminal."""
    text = f"{title}: {step or 'working'} ({elapsed:.0f} s)"
    bar = f"<progress value='{done}' max='{max(total, 1)}'></progress>"
    return {"text/plain": text, "text/html": f"<div>{bar} {html.escape(text)}</div>"}


def _spec_from_args(name: str, args: Any, *, backend: str) -> ClusterSpec:
    """The cluster the `start` flags describe, on top of the default groups."""
    spec = default_spec(name, backend)
    groups = {g.name: g for g in spec.groups}
    if args.worker_cpus is not None:
        groups["cpu"] = replace(groups["cpu"], cpus=parse_cpus("--worker-cpus", args.worker_cpus))
    for flag, group in (("cpu_workers", "cpu"), ("gpu_workers", "gpu")):
        value = getattr(args, flag)
        if value is not None:
            low, high = parse_range(f"--{flag.replace('_', '-')}", value)
            groups[group] = replace(groups[group], min=low, max=high)
    values: dict[str, Any] = {"groups": tuple(groups.values())}
    if args.idle_timeout is not None:
        try:
            values["idle_timeout_s"] = float(args.idle_timeout)
        except ValueError:
            raise SpecError("--idle-timeout", args.idle_timeout, "a number of seconds") from None
    return replace(spec, **values)


def _disconnect_driver() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
