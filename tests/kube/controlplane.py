"""A real Kubernetes control plane on 127.0.0.1 for the tests: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, built from Go modules by ``testenv/k8s/build.sh``.

Why real components: admission (PodSecurity, ResourceQuota, LimitRanger, ServiceAccount), RBAC,
the scheduler's placement and messages, and the garbage collector are exactly what a user's
cluster enforces and what an emulator of our own gets subtly wrong. Only the kubelet stays ours.

Every process carries the session's leak-check markers (see ``tests/conftest.py``), runs in its
own process group, and is stopped by PID: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import base64
import ctypes
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
import psutil
import yaml

from jupyter_raykube.backends import processes

from .pki import CertificateAuthority, write_signing_key_pair

K8S_VERSION = "v1.37.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "testenv" / "k8s" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
KUBECTL = "/usr/bin/kubectl"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service: first address of the range
ADMISSION_PLUGINS = "NodeRestriction,PodSecurity,ResourceQuota,LimitRanger,ServiceAccount,NamespaceLifecycle"
# Marker value on every control-plane process; with the session tag the leak check finds them.
MARKER_PREFIX = "kube-control-plane-"

Progress = Callable[[str], None]


def cache_bin_dir() -> Path:
    """Where build.sh puts the binaries (same rule as the script)."""
    cache = os.environ.get("RAYKUBE_K8S_CACHE")
    if cache:
        return Path(cache) / "bin"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "jupyter-raykube" / f"k8s-{K8S_VERSION}" / "bin"


def ensure_binaries(progress: Progress = print) -> Path:
    """The binaries' folder, after build.sh: instant ("cached") when the cache matches its inputs,
    several minutes on a first run, so its lines are passed to ``progress`` as they come."""
    proc = subprocess.Popen(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-40:]
        if not line.startswith("go: downloading"):
            progress(line)
    if proc.wait() != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed ({proc.returncode}):\n" + "\n".join(tail))
    bin_dir = cache_bin_dir()
    missing = [name for name in BINARIES if not (bin_dir / name).is_file()]
    if missing:
        raise RuntimeError(f"{BUILD_SCRIPT} succeeded but {missing} are not in {bin_dir}")
    return bin_dir


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies without a teardown
    (killed, or Ctrl-C twice), so an apiserver never outlives its session."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A port free on 127.0.0.1 now (the component binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@dataclass
class Component:
    """One control-plane process: its argv, its log file and, once started, its Popen."""

    name: str
    argv: list[str]
    log_file: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, env: Mapping[str, str]) -> None:
        with self.log_file.open("ab") as log:
            # Own session = own process group, so stop() signals only this component's tree.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=dict(env), start_new_session=True, preexec_fn=_die_with_parent)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self, grace_s: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(10)

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)  # pgid == pid: started with start_new_session
        except ProcessLookupError:
            pass


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on random 127.0.0.1 ports.

    ``start()`` generates the PKI into a temp dir, starts the four processes and waits until the
    apiserver's ``/readyz`` passes, both controllers answer ``/healthz`` and the controller-manager
    has created the ``default`` ServiceAccount. ``stop()`` ends them all and removes the temp dir.
    """

    def __init__(self, *, workdir: Path | None = None, bin_dir: Path | None = None,
                 progress: Progress = print, start_timeout_s: float = 120.0) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="raykube-k8s-")) if workdir is None else workdir
        self._bin_dir = bin_dir
        self._progress = progress
        self._start_timeout_s = start_timeout_s
        self.marker = MARKER_PREFIX + uuid.uuid4().hex[:12]
        self.components: list[Component] = []
        self.port = 0
        self.start_seconds = 0.0
        self._node_credentials: dict[str, tuple[Path, Path]] = {}

    # ------------------------------------------------------------------ properties
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def pki_dir(self) -> Path:
        return self.workdir / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ControlPlane:
        started = time.monotonic()
        bin_dir = self._bin_dir or ensure_binaries(self._progress)
        self.port = free_port()
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority(self.pki_dir)
        self._write_pki()
        self.components = self._components(bin_dir)
        env = {**os.environ, processes.CLUSTER_MARKER: self.marker}
        try:
            # The controllers read their authentication config from the apiserver at start-up,
            # so they start once it is ready.
            for component in self.components:
                if component.name in ("kube-controller-manager", "kube-scheduler"):
                    self._wait_ready(started, self._apiserver_checks())
                component.start(env)
            self._wait_ready(started, self._apiserver_checks() + self._controller_checks())
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        self._progress(f"kube control plane {K8S_VERSION} ready at {self.url} in {self.start_seconds:.1f}s "
                       f"(logs in {self.workdir})")
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every component (scheduler first, etcd last), check none is left, remove the temp dir."""
        for component in reversed(self.components):
            component.stop(grace_s)
        leftovers = self.leftover_processes()
        for proc in leftovers:
            try:
                proc.kill()
            except Exception:  # noqa: BLE001 - already gone is fine
                pass
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if leftovers:
            raise AssertionError(f"control-plane processes outlived stop(): {[p.pid for p in leftovers]}")

    def leftover_processes(self) -> list[psutil.Process]:
        """Processes still carrying this control plane's marker (empty after a clean stop)."""
        return processes.find_marked(processes.CLUSTER_MARKER, self.marker)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients
    def admin_api_client(self) -> kubernetes.client.ApiClient:
        """A new official-client ``ApiClient`` as cluster admin (the caller closes it)."""
        return kubernetes.config.new_client_from_config(config_file=str(self.admin_kubeconfig))

    def write_kubeconfig(self, path: Path, *, token: str | None = None, cert: Path | None = None,
                         key: Path | None = None, namespace: str = "default", server: str | None = None) -> Path:
        """A self-contained kubeconfig (credentials embedded, mode 0600) for a token or a client cert.

        ``server`` overrides the apiserver URL, e.g. the fault proxy's ``http://`` URL (no CA then).
        """
        server = server or self.url
        cluster: dict[str, object] = {"server": server}
        if server.startswith("https://"):
            cluster["certificate-authority-data"] = _b64(self.ca_file)
        user: dict[str, str] = {}
        if token is not None:
            user["token"] = token
        if cert is not None and key is not None:
            user["client-certificate-data"] = _b64(cert)
            user["client-key-data"] = _b64(key)
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "raykube-test", "cluster": cluster}],
            "users": [{"name": "user", "user": user}],
            "contexts": [{"name": "raykube-test",
                          "context": {"cluster": "raykube-test", "user": "user", "namespace": namespace}}],
            "current-context": "raykube-test",
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def node_credentials(self, node_name: str) -> tuple[Path, Path]:
        """(cert, key) for a kubelet: CN=system:node:NAME, O=system:nodes (Node authorizer +
        NodeRestriction then limit it to its own Node, Lease and Pods, as on a real cluster)."""
        if node_name not in self._node_credentials:
            self._node_credentials[node_name] = self.ca.issue(
                f"node-{node_name}", f"system:node:{node_name}", ("system:nodes",))
        return self._node_credentials[node_name]

    def issue_serving_cert(self, stem: str, *, ip_addresses: Iterable[str] = ("127.0.0.1",),
                           dns_names: Iterable[str] = ("localhost",)) -> tuple[Path, Path]:
        """A serving certificate signed by the cluster CA (e.g. for a kubelet's HTTPS endpoint)."""
        return self.ca.issue(stem, stem, dns_names=tuple(dns_names), ip_addresses=tuple(ip_addresses), server=True)

    def service_account_token(self, namespace: str, name: str, *, expiration_s: int = 3600) -> str:
        """A bound token for ServiceAccount ``namespace/name`` from the TokenRequest API; the
        ServiceAccount is created first if missing. Expiry is at least 600 s (apiserver minimum)."""
        with self.admin_api_client() as api_client:
            core = kubernetes.client.CoreV1Api(api_client)
            try:
                core.create_namespaced_service_account(
                    namespace, kubernetes.client.V1ServiceAccount(metadata=kubernetes.client.V1ObjectMeta(name=name)))
            except kubernetes.client.ApiException as exc:
                if exc.status != 409:
                    raise
            request = kubernetes.client.AuthenticationV1TokenRequest(
                spec=kubernetes.client.V1TokenRequestSpec(audiences=[], expiration_seconds=max(600, expiration_s)))
            return core.create_namespaced_service_account_token(name, namespace, request).status.token

    def new_namespace(self, prefix: str = "test", labels: Mapping[str, str] | None = None,
                      *, timeout_s: float = 30.0) -> str:
        """Create a namespace ``<prefix>-<random>`` and wait for its ``default`` ServiceAccount
        (Pods are refused until the controller-manager made it). Delete it with ``delete_namespace``
        (the ``kube_namespace`` fixture does)."""
        base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40] or "test"
        name = f"{base}-{uuid.uuid4().hex[:6]}"
        with self.admin_api_client() as api_client:
            core = kubernetes.client.CoreV1Api(api_client)
            core.create_namespace(kubernetes.client.V1Namespace(
                metadata=kubernetes.client.V1ObjectMeta(name=name, labels=dict(labels or {}))))
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    core.read_namespaced_service_account("default", name)
                    return name
                except kubernetes.client.ApiException as exc:
                    if exc.status != 404 or time.monotonic() > deadline:
                        raise
                time.sleep(0.1)

    def delete_namespace(self, name: str) -> None:
        """Start deleting a namespace (the namespace controller empties and removes it)."""
        with self.admin_api_client() as api_client:
            try:
                kubernetes.client.CoreV1Api(api_client).delete_namespace(name)
            except kubernetes.client.ApiException as exc:
                if exc.status != 404:
                    raise

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl`` as admin against this control plane; output captured as text."""
        cmd = [KUBECTL, f"--kubeconfig={self.admin_kubeconfig}", f"--cache-dir={self.workdir / 'kubectl-cache'}",
               *args]
        result = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout_s)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    # ------------------------------------------------------------------ internals
    def _write_pki(self) -> None:
        ca = self.ca
        self._serving = ca.issue("apiserver", "kube-apiserver", server=True,
                                 dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                            "kubernetes.default.svc.cluster.local"),
                                 ip_addresses=("127.0.0.1", SERVICE_IP))
        self._sa_key, self._sa_pub = write_signing_key_pair(self.pki_dir)
        self._kubelet_client = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client")
        admin = ca.issue("admin", "kubernetes-admin", ("system:masters",))
        controller_manager = ca.issue("controller-manager", "system:kube-controller-manager")
        scheduler = ca.issue("scheduler", "system:kube-scheduler")
        self.write_kubeconfig(self.admin_kubeconfig, cert=admin[0], key=admin[1])
        self._cm_kubeconfig = self.write_kubeconfig(self.workdir / "controller-manager.kubeconfig",
                                                    cert=controller_manager[0], key=controller_manager[1])
        self._sched_kubeconfig = self.write_kubeconfig(self.workdir / "scheduler.kubeconfig",
                                                       cert=scheduler[0], key=scheduler[1])
        self._admin_cert = admin

    def _components(self, bin_dir: Path) -> list[Component]:
        etcd_client, etcd_peer = free_port(), free_port()
        self._cm_port, self._sched_port = free_port(), free_port()
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        etcd = [
            str(bin_dir / "etcd"), "--name=default", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync", "--log-level=warn",
        ]
        apiserver = [
            str(bin_dir / "kube-apiserver"),
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            # The lease reconciler refuses a loopback advertise address (the `kubernetes` Service's
            # endpoint); nothing in these tests reaches the apiserver through that Service.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={self._serving[0]}", f"--tls-private-key-file={self._serving[1]}",
            f"--client-ca-file={self.ca_file}",
            f"--etcd-servers=http://127.0.0.1:{etcd_client}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self._sa_pub}", f"--service-account-signing-key-file={self._sa_key}",
            "--authorization-mode=Node,RBAC", f"--enable-admission-plugins={ADMISSION_PLUGINS}",
            "--allow-privileged=true",  # as on real clusters: PodSecurity, not this flag, refuses them
            f"--kubelet-client-certificate={self._kubelet_client[0]}",
            f"--kubelet-client-key={self._kubelet_client[1]}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--profiling=false", "--v=1",
        ]
        controller_manager = [
            str(bin_dir / "kube-controller-manager"),
            *_kubeconfig_flags(self._cm_kubeconfig),
            "--bind-address=127.0.0.1", f"--secure-port={self._cm_port}",
            f"--cert-dir={self.workdir / 'controller-manager-certs'}",
            "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self._sa_key}", f"--root-ca-file={self.ca_file}",
            f"--cluster-signing-cert-file={self.ca_file}", f"--cluster-signing-key-file={self.ca.key_file}",
            "--kube-api-qps=100", "--kube-api-burst=200", "--profiling=false", "--v=1",
        ]
        scheduler = [
            str(bin_dir / "kube-scheduler"),
            *_kubeconfig_flags(self._sched_kubeconfig),
            "--bind-address=127.0.0.1", f"--secure-port={self._sched_port}",
            f"--cert-dir={self.workdir / 'scheduler-certs'}",
            "--leader-elect=false", "--kube-api-qps=100", "--kube-api-burst=200", "--profiling=false", "--v=1",
        ]
        return [Component(argv[0].rsplit("/", 1)[-1], argv, logs / f"{Path(argv[0]).name}.log")
                for argv in (etcd, apiserver, controller_manager, scheduler)]

    def _apiserver_checks(self) -> list[tuple[str, Callable[[], bool]]]:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(*self._admin_cert)
        return [("kube-apiserver /readyz", lambda: _http_ok(f"{self.url}/readyz", context))]

    def _controller_checks(self) -> list[tuple[str, Callable[[], bool]]]:
        insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the controllers serve /healthz self-signed
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(*self._admin_cert)
        return [
            ("kube-controller-manager /healthz", lambda: _http_ok(f"https://127.0.0.1:{self._cm_port}/healthz", insecure)),
            ("kube-scheduler /healthz", lambda: _http_ok(f"https://127.0.0.1:{self._sched_port}/healthz", insecure)),
            ("the controller-manager's ServiceAccount default/default", lambda: _http_ok(
                f"{self.url}/api/v1/namespaces/default/serviceaccounts/default", context)),
        ]

    def _wait_ready(self, started: float, checks: list[tuple[str, Callable[[], bool]]]) -> None:
        """Poll until every check passes; on a dead component or timeout, raise with log tails."""
        deadline = started + self._start_timeout_s
        last_report = 0.0
        for what, check in checks:
            while not check():
                for component in self.components:
                    if component.exited() is not None:
                        raise RuntimeError(f"{component.name} exited with {component.exited()} during start-up; "
                                           f"last log lines ({component.log_file}):\n{component.log_tail()}")
                now = time.monotonic()
                if now > deadline:
                    tails = "\n".join(f"--- {c.name} ({c.log_file})\n{c.log_tail(15)}" for c in self.components)
                    raise TimeoutError(f"kube control plane: no {what} after {self._start_timeout_s:.0f}s\n{tails}")
                if now - last_report > 5:
                    self._progress(f"kube control plane: waiting for {what} ({now - started:.0f}s)")
                    last_report = now
                time.sleep(0.1)


def _kubeconfig_flags(kubeconfig: Path) -> list[str]:
    """A controller's API access and the delegated authn/authz of its own /healthz, one identity."""
    return [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}"]


def _http_ok(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False

