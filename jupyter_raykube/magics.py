"""`%raycluster start|stop|status|scale|list|attach`: a Ray cluster one line away.

The magic parses the line into a request, calls the cluster owner (manager or server) and connects `ray.init`
to the result. It owns no lifecycle logic. Bad arguments raise IPython's `UsageError`, which
prints the reason and the usage, not a traceback.
"""

from __future__ import annotations

import argparse
import html
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser
from IPython.display import display

from .backends.base import BackendError, ClusterNotFound
from .client import ClusterClient, Snapshot, default_client
from .connect import connect_driver, disconnect_driver
from .driver_events import follow as follow_events
from .display import ClusterStatus, ClusterTable
from .formatting import duration
from .scheduling import MARKET_TYPES
from .spec import SpecError, parse_cpus, parse_range



class _Parser(MagicArgumentParser):
    """Raises UsageError (reason + usage) instead of exiting; plain argparse formatting."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.HelpFormatter)
        super().__init__(**kwargs)

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
    start.add_argument("--image", help="container image of the cluster's Pods (Kubernetes)")
    start.add_argument("--gpu-type", metavar="TYPE", help="accelerator type of the gpu group's nodes, e.g. A100 "
                       "(Kubernetes, where your administrator allows it)")
    start.add_argument("--market", choices=MARKET_TYPES, help="spot or on-demand nodes for the cpu and gpu "
                       "groups (Kubernetes, where your administrator allows it)")
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
    """The `%raycluster` line magic. `client` is injectable for tests; by default it is the
    Jupyter server's API when the kernel runs under one, else an in-process manager."""

    def __init__(self, shell: Any = None, client: ClusterClient | None = None) -> None:
        super().__init__(shell)
        self._client = client
        self._current: str | None = None
        self._parser = _build_parser()

    @property
    def client(self) -> ClusterClient:
        if self._client is None:
            self._client = default_client()
        return self._client

    @line_magic
    def raycluster(self, line: str) -> Any:
        args = self._parser.parse_argstring(line)
        if args.command is None:
            raise UsageError(f"a command is required\n\n{self._parser.format_usage()}")
        try:
            return getattr(self, f"_{args.command}")(args)
        except SpecError as exc:
            raise UsageError(f"{exc}\n\n{_subcommand_usage(self._parser, args.command)}") from None
        except (BackendError, ClusterNotFound) as exc:
            raise UsageError(str(exc)) from None

    # --- commands ----------------------------------------------------------------------------

    def _start(self, args: Any) -> Any:
        request = _request_from_args(args.name, args)  # no name: the clusters' owner picks one
        title = f"Starting Ray cluster {args.name}" if args.name else "Starting a Ray cluster"
        snap = self._with_progress(title, lambda p: self.client.start(request, p))
        name = self._current = snap["name"]
        if not args.no_connect:
            self._connect(snap)
        return self._view(name, snap)

    def _attach(self, args: Any) -> Any:
        snap = self.client.attach(args.name)
        self._current = args.name
        if not args.no_connect:
            self._connect(snap)
        return self._view(args.name, snap)

    def _status(self, args: Any) -> Any:
        name = self._name(args.name)
        return self._view(name, self.client.status(name))

    def _scale(self, args: Any) -> Any:
        low, high = parse_range("size", args.size)
        name = self._name(args.name)
        snap = self._with_progress(f"Scaling {args.group} of {name} to {args.size}",
                                   lambda p: self.client.scale(name, args.group, low, high, p))
        return self._view(name, snap)

    def _stop(self, args: Any) -> None:
        """The driver lets go first: a Ray Client driver whose server vanishes under it tries to
        reconnect, and warns that the connection timed out, until it is shut down."""
        name = self._name(args.name)
        if name == self._current:
            self._current = None
            disconnect_driver()
        self.client.stop(name)
        print(f"Ray cluster {name} stopped.")

    def _list(self, args: Any) -> ClusterTable:
        return ClusterTable(self.client.list())

    # --- helpers -----------------------------------------------------------------------------

    def _connect(self, snap: Snapshot) -> None:
        """Connect this kernel's `ray` to the cluster, and print the autoscaler's decisions for
        it as `(raykube)` lines (RAYKUBE_DRIVER_EVENTS=0 turns them off)."""
        connect_driver(snap["address"], self.client.token, **_client_route(snap))
        follow_events(self.client, snap["name"])

    def _view(self, name: str, snap: dict[str, Any]) -> Any:
        """A live widget in a notebook, a text status in a terminal."""
        if getattr(self.shell, "kernel", None) is not None:
            from .widgets import ClusterWidget

            client = self.client
            return ClusterWidget(name, client.status, initial=snap, stop=client.stop, node_log=client.node_log,
                                 scale=lambda n, g, lo, hi: client.scale(n, g, lo, hi, _no_progress, wait=False))
        return ClusterStatus(snap)

    def _name(self, given: str | None) -> str:
        name = given or self._current
        if name is None:
            raise UsageError("no cluster given and none connected in this kernel: "
                             "name one, e.g. %raycluster status NAME (see %raycluster list)")
        return name

    def _with_progress(self, title: str, work: Any) -> Any:
        """Run `work(progress)` while one status line shows the current step. A notebook
        redraws the line in place (with the elapsed time); a terminal prints a new line per
        update, so there only a change of step is shown."""
        in_notebook = getattr(self.shell, "kernel", None) is not None
        started = time.monotonic()
        shown = [""]
        line = display(_progress_bundle(title, "", 0, 1, 0.0), raw=True, display_id=True)

        def progress(step: str, done: int, total: int) -> None:
            if line is not None and (in_notebook or step != shown[0]):
                shown[0] = step
                line.update(_progress_bundle(title, step, done, total, time.monotonic() - started), raw=True)

        result = work(progress)
        if line is not None:
            done = f"{title}: done in {duration(time.monotonic() - started)}"
            line.update({"text/plain": done, "text/html": f"<span>{html.escape(done)}</span>"}, raw=True)
        return result


def _progress_bundle(title: str, step: str, done: int, total: int, elapsed: float) -> dict[str, str]:
    """A status line with a progress bar in notebooks, plain text in a terminal."""
    text = f"{title}: {step or 'working'} ({duration(elapsed)})"
    bar = f"<progress value='{done}' max='{max(total, 1)}'></progress>"
    return {"text/plain": text, "text/html": f"<div>{bar} {html.escape(text)}</div>"}


def _request_from_args(name: str | None, args: Any) -> dict[str, Any]:
    """The `start` flags as a request body: only what the user gave; the owner of the
    clusters (this kernel's manager or the Jupyter server) fills in its defaults. Flags are
    checked here so a typo gets the usage line before anything is sent."""
    request: dict[str, Any] = {"name": name} if name else {}
    if args.backend:
        request["backend"] = args.backend
    if args.image:
        request["image"] = args.image
    groups: dict[str, dict[str, Any]] = {}
    if args.worker_cpus is not None:
        groups["cpu"] = {"cpus": parse_cpus("--worker-cpus", args.worker_cpus)}
    for flag, group in (("cpu_workers", "cpu"), ("gpu_workers", "gpu")):
        value = getattr(args, flag)
        if value is not None:
            low, high = parse_range(f"--{flag.replace('_', '-')}", value)
            groups.setdefault(group, {}).update(min=low, max=high)
    if args.gpu_type is not None:
        groups.setdefault("gpu", {})["scheduling"] = {"accelerator_type": args.gpu_type}
    if args.market is not None:
        for group in ("cpu", "gpu"):
            groups.setdefault(group, {}).setdefault("scheduling", {})["market_type"] = args.market
    if groups:
        request["groups"] = groups
    if args.idle_timeout is not None:
        try:
            request["idle_timeout_s"] = float(args.idle_timeout)
        except ValueError:
            raise SpecError("--idle-timeout", args.idle_timeout, "a number of seconds") from None
    return request


def _subcommand_usage(parser: argparse.ArgumentParser, command: str) -> str:
    for action in parser._subparsers._group_actions if parser._subparsers else ():  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:  # noqa: SLF001
            return action.choices[command].format_usage()
    return parser.format_usage()


def _no_progress(step: str, done: int, total: int) -> None:
    """Widget buttons return at once; the widget's own refresh shows the progress."""


def _client_route(snap: dict[str, Any]) -> dict[str, str]:
    """On Kubernetes the kernel reaches the cluster through Ray Client, after a version check."""
    if snap.get("backend") != "kubernetes":
        return {}
    return {"client_address": snap.get("client_address", ""), "image": snap.get("image", "")}
