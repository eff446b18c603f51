"""Browser-test fixtures: a real `jupyter lab` (with this package's server and lab extensions,
as installed by `pip install -e .`) and Debian's Chromium driven by Playwright's sync API.

Environment:
  UI_CHROMIUM   the browser binary (default /usr/bin/chromium; `apt-get install chromium`)
  UI_ARTIFACTS  where screenshots and the server log go (default /tmp/raykube-ui-artifacts)
  RAYKUBE_UPDATE_DOC_SCREENSHOTS=1  also rewrite the README's screenshots in docs/screenshots
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("UI_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("UI_ARTIFACTS", "/tmp/raykube-ui-artifacts"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BUILT_LABEXTENSION = Path(__file__).resolve().parents[2] / "jupyter_raykube" / "labextension"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 90.0  # the server stops its Ray clusters before it exits


def _require_browser() -> None:
    """Without Chromium and Playwright these tests cannot run: skip locally, fail in CI."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright)")
    if missing:
        reason = "UI tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


# pytest-jupyter's server plugin, when loaded, adds autouse fixtures that close the asyncio
# loop at teardown; under Playwright's sync API that fails ("Cannot close a running event
# loop"). These tests start their own server, so both are no-ops here.
@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> Iterator[None]:
    yield None


@pytest.fixture(autouse=True)
def jp_server_cleanup() -> Iterator[None]:
    yield None


@dataclass
class Lab:
    """A running `jupyter lab`: its base URL (ends with /), token and REST helper."""

    url: str
    token: str
    root: Path

    def api(self, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        """Call `{url}{path}` with the token; returns (status, decoded JSON or None)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                status, raw = reply.status, reply.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        return status, (json.loads(raw) if raw else None)

    def lab_url(self) -> str:
        """The Lab page with a fresh workspace (?reset) and the token for the cookie."""
        return f"{self.url}lab?reset&token={self.token}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(settings_dir: Path) -> None:
    files = {
        # The "get notified about Jupyter news?" toast covers the bottom right corner.
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
            {"fetchNews": "false", "checkForUpdates": False},
        # Faster sidebar refreshes than the default, to keep the tests short.
        "jupyter-raykube/plugin.jupyterlab-settings": {"pollInterval": 1000},
    }
    for name, content in files.items():
        path = settings_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The Lab most tests share: the server's built-in defaults."""
    with running_lab() as server:
        yield server


@contextmanager
def running_lab(server_config: dict[str, Any] | None = None, name: str = "jupyter-lab") -> Iterator[Lab]:
    """Start `python -m jupyterlab` on a free port with private Jupyter dirs; stop it after.

    `server_config` goes into the private config dir as jupyter_server_config.json (e.g.
    `{"ClusterManager": {"default_groups": [...]}}`), as an administrator would set it.
    Only the user-level dirs are private: the venv's share/jupyter (sys.prefix), where
    `pip install` put the lab extension, stays on the data path. The dirs are not under
    pytest's basetemp: another pytest run on the machine prunes old basetemps, and this
    server's runtime dir (Ray cluster records, kernel files) must outlive them.
    """
    home = Path(tempfile.mkdtemp(prefix="raykube-ui-"))
    dirs = {name: home / name for name in ("config", "data", "runtime", "ipython", "settings",
                                           "workspaces", "root")}
    for d in dirs.values():
        d.mkdir()
    _write_settings(dirs["settings"])
    # The sidebar as `npm run build` last wrote it, not the copy `pip install` made into the
    # venv: Lab looks in `extra_labextensions_path` first (see the command below).
    (dirs["data"] / "labextensions").mkdir()
    (dirs["data"] / "labextensions" / "jupyter-raykube").symlink_to(BUILT_LABEXTENSION, target_is_directory=True)
    if server_config:
        (dirs["config"] / "jupyter_server_config.json").write_text(json.dumps(server_config))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_DATA_DIR=str(dirs["data"]),
               JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), IPYTHONDIR=str(dirs["ipython"]),
               JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
               JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]))
    env.pop("JUPYTER_PATH", None)
    token, port = secrets.token_hex(16), _free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = (ARTIFACTS / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--ServerApp.root_dir={dirs['root']}",
         f"--LabApp.extra_labextensions_path={dirs['data'] / 'labextensions'}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    server = Lab(url=f"http://127.0.0.1:{port}/", token=token, root=dirs["root"])
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}; see {log.name}")
            try:
                if server.api("GET", "api/status", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"jupyter lab did not answer in {START_TIMEOUT_S}s; see {log.name}")
            time.sleep(0.3)
        yield server
    finally:
        _stop_server(proc)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the server shuts down kernels and its extension stops its Ray clusters."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session started for this server only
            proc.wait(10)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def page(browser: Any, lab: Lab, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context on the shared Lab's page, JupyterLab fully started."""
    yield from lab_page(browser, lab, request)


def lab_page(browser: Any, lab: Lab, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Open `lab` in a fresh browser context; a failing test leaves a screenshot behind."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto(lab.lab_url())
    page.locator("#jp-main-dock-panel").wait_for()
    page.locator("#jupyterlab-splash").wait_for(state="detached")
    page.locator(".jp-LauncherCard").first.wait_for()  # the reset layout is in place
    try:
        yield page
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            page.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"))
        context.close()
