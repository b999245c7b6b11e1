"""A real Kubernetes control plane (etcd + kube-apiserver) as two local processes, the way envtest runs one.

controller-runtime's envtest starts the real ``etcd`` and ``kube-apiserver`` binaries on free loopback ports, with a
throw-away CA, and talks to them as a ``system:masters`` user. No kubelet, scheduler or controller-manager runs, so
nothing reconciles Pods, garbage-collects owned objects or finishes namespace deletion -- but everything the API
server itself does is real: OpenAPI/structural schemas, CEL validation, subresources, RBAC, TokenRequest and
TokenReview, admission, watches. That is exactly the surface an operator talks to.

Flags (kube-apiserver), envtest's defaults first:

* ``--etcd-servers``, ``--secure-port`` on a free port, ``--bind-address=127.0.0.1`` and
  ``--advertise-address=127.0.0.1`` (without it the server looks for a default route and fails on a host without
  one), ``--cert-dir`` inside the work folder.
* ``--service-cluster-ip-range=10.0.0.0/24`` (required), ``--allow-privileged=true``.
* ``--disable-admission-plugins=ServiceAccount``: no controller-manager runs to create the ``default``
  ServiceAccount, so with that plugin on every Pod create would be rejected.
* ``--authorization-mode=RBAC``: the bootstrap roles are created by the API server itself, so RBAC is real.
* ``--client-ca-file`` (client-certificate authentication; ``admin`` is in ``system:masters``),
  ``--tls-cert-file``/``--tls-private-key-file`` (a serving certificate for 127.0.0.1/localhost from our CA).
* ``--service-account-key-file``/``--service-account-signing-key-file``/``--service-account-issuer``/
  ``--api-audiences``: TokenRequest needs a signing key and an issuer. The issuer is the in-cluster name a real
  cluster uses (envtest uses the server URL), so token audiences look like a real cluster's.

envtest also passes ``--insecure-port=0`` to old servers; that flag was removed in 1.24 and is not passed.
Beyond envtest: ``--endpoint-reconciler-type=none`` (the ``kubernetes`` Service's endpoints would point at a
loopback address, which the API server itself rejects and logs every few seconds), etcd's
``--unsafe-no-fsync`` (the data is thrown away, and fsync dominates etcd's latency on slow test disks), and an
audit log of every write (``--audit-policy-file``/``--audit-log-path``, metadata only: no request bodies, so no
Secret data): tests and the benchmark count the operator's writes from it, exactly, by user agent.

Nothing may outlive the test run: every child gets its own process group (a terminal's Ctrl-C reaches only us,
and we stop the whole group), ``PR_SET_PDEATHSIG`` (the kernel kills the child when its parent dies, even by
SIGKILL), and an ``atexit`` hook plus a SIGTERM/SIGHUP handler stop whatever is still running.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime as dt
import fcntl
import functools
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.envtest.binaries import Binaries, ensure_binaries, expected_paths

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger("tests.envtest")

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
START_TIMEOUT = float(os.environ.get("OCTOCONN_ENVTEST_START_TIMEOUT", "120"))
STOP_TIMEOUT = 15.0
_BIND_ATTEMPTS = 5
_BIND_RACE_MARKERS = ("address already in use", "bind: address")
# Writes only, at the Metadata level: who wrote what, never the body (a Secret's data must not land in a log).
_AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
"""


class ControlPlaneError(RuntimeError):
    """The control plane could not be started; the message carries the tail of the failing process's log."""


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call whose message includes what kubectl printed, so test failures explain themselves."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


# --- shared client-side helpers -------------------------------------------------------------------------------


class ClusterAccess:
    """What tests need from any cluster: its URL, an admin kubeconfig, kubectl and Python clients."""

    url: str
    kubeconfig: str
    ca_file: str | None
    admin_cert_file: str | None
    admin_key_file: str | None
    binaries: Binaries | None

    def start(self) -> ClusterAccess:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _kubectl_path(self) -> str:
        raise NotImplementedError

    def _kubectl_flags(self) -> list[str]:
        return []

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as the admin of this cluster; raise :class:`KubectlError` on failure when ``check``."""
        cmd = [self._kubectl_path(), f"--kubeconfig={self.kubeconfig}", *self._kubectl_flags(), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def audit_writes(self, user_agent: str = "") -> list[dict[str, Any]]:
        """Every write the API server has completed so far (audit events), optionally only from clients whose
        User-Agent starts with ``user_agent``. Raises when this cluster keeps no audit log (an external one)."""
        raise ControlPlaneError("this cluster keeps no audit log the tests can read")

    def kubernetes_api_client(self) -> ApiClient:
        """A ``kubernetes.client.ApiClient`` authenticated as the admin. The caller closes it."""
        # Imported on use: the client's models take a while to import, and the CLI never needs them.
        from kubernetes import config

        api: ApiClient = config.new_client_from_config(config_file=self.kubeconfig)  # type: ignore[no-untyped-call]
        return api

    def kubeconfig_for_token(self, token: str, path: str | Path) -> str:
        """Write a kubeconfig for this cluster that authenticates with a bearer token (e.g. a ServiceAccount's)."""
        cluster = _current_cluster(_load_kubeconfig(self.kubeconfig))
        # A relative file reference means "next to the source kubeconfig", which the new file need not be.
        if cluster.get("certificate-authority"):
            cluster["certificate-authority"] = str(
                (Path(self.kubeconfig).parent / cluster["certificate-authority"]).resolve()
            )
        doc = _kubeconfig_doc(cluster, "token-user", {"token": token})
        return _write_kubeconfig(Path(path), doc)


def _load_kubeconfig(path: str) -> dict[str, Any]:
    with open(path) as f:
        doc: dict[str, Any] = yaml.safe_load(f)
    return doc


def _current_cluster(cfg: dict[str, Any]) -> dict[str, Any]:
    return _named(cfg, "clusters", _current_context(cfg)["cluster"])


def _current_context(cfg: dict[str, Any]) -> dict[str, Any]:
    name = cfg.get("current-context")
    if not name:
        raise ValueError("kubeconfig has no current-context")
    return _named(cfg, "contexts", name)


def _named(cfg: dict[str, Any], section: str, name: str) -> dict[str, Any]:
    for entry in cfg.get(section) or []:
        if entry.get("name") == name:
            return dict(entry[section[:-1]])
    raise ValueError(f"kubeconfig has no {section[:-1]} named {name!r}")


def _kubeconfig_doc(cluster: dict[str, Any], user_name: str, user: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": cluster}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": user_name}}],
        "current-context": "envtest",
        "preferences": {},
    }


def _write_kubeconfig(path: Path, doc: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Credentials inside: readable by the owner only, from the moment the file exists.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return str(path)


# --- certificates --------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: list[x509.ObjectIdentifier] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Back-dated so a client whose clock is a little behind still accepts the certificate.
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
        )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def generate_pki(pki: Path) -> dict[str, Path]:
    """Write a CA, a serving certificate, an admin client certificate and a service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(_name("octoconn-envtest-ca"), ca_key, None, ca=True)
    files["ca.crt"], files["ca.key"] = _pem_cert(ca_cert), _pem_key(ca_key)

    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        # The first address of the service range is the in-cluster ``kubernetes`` Service's ClusterIP.
        x509.IPAddress(next(ipaddress.IPv4Network(SERVICE_CLUSTER_IP_RANGE).hosts())),
        *(
            x509.DNSName(n)
            for n in (
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            )
        ),
    ]
    serving = _issue(
        _name("kube-apiserver"), serving_key, (ca_cert, ca_key), usage=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans
    )
    files["apiserver.crt"], files["apiserver.key"] = _pem_cert(serving), _pem_key(serving_key)

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _issue(
        _name("admin", "system:masters"), admin_key, (ca_cert, ca_key), usage=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    files["admin.crt"], files["admin.key"] = _pem_cert(admin), _pem_key(admin_key)

    # RSA, not EC: RS256 is the one algorithm every JWT consumer of ServiceAccount tokens supports.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files["sa.key"] = _pem_key(sa_key)
    files["sa.pub"] = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    paths = {}
    for name, data in files.items():
        path = pki / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        paths[name] = path
    return paths


# --- processes -----------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc: Any = None
if sys.platform == "linux":
    # Loaded in the parent: after fork only async-signal-safe work is allowed, and dlopen is not.
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(None, use_errno=True)


def child_preexec(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel kill the child when ``parent_pid``'s spawning thread dies (Linux)."""
    if _libc is None:
        return None
    prctl = _libc.prctl

    def preexec() -> None:
        # Kernel-enforced: SIGKILL this child when the thread that spawned it dies, however it dies.
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would deliver the signal.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class _Process:
    """One child process whose output goes to a log file and which is stopped with its whole process group."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log_offset = 0  # where this run's output starts in a log shared with earlier attempts
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self._log_offset = log_file.tell()
            log_file.write(f"--- {' '.join(self.argv)}\n".encode())
            log_file.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=child_preexec(os.getpid()),  # the only way to set PDEATHSIG in the child
            )

    def exited(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        popen, self.popen = self.popen, None
        if popen is not None and popen.poll() is None:
            self._signal_group(popen, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing it", self.name, popen.pid, timeout)
                self._signal_group(popen, signal.SIGKILL)
                popen.wait()
        if popen is not None:
            # A grandchild left in the group would keep ports or files busy; it gets no grace.
            self._signal_group(popen, signal.SIGKILL)

    @staticmethod
    def _signal_group(popen: subprocess.Popen[bytes], sig: int) -> None:
        # The child leads its own session, so its pid names the group, which outlives the reaped leader while any
        # member (a grandchild) is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, sig)

    def _this_run_log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self._this_run_log().splitlines()[-lines:]) or "(empty log)"

    def lost_bind_race(self) -> bool:
        text = self._this_run_log().lower()
        return any(marker in text for marker in _BIND_RACE_MARKERS)


def _free_ports(count: int) -> list[int]:
    # All sockets stay open until every port is chosen, so the OS cannot hand out the same port twice.
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --- process-wide cleanup ------------------------------------------------------------------------------------

_live: set[ControlPlane] = set()
# Re-entrant: the signal handler runs on the main thread, possibly while that thread holds the lock.
_live_lock = threading.RLock()
_hooks_installed = False


def _stop_all() -> None:
    with _live_lock:
        planes = list(_live)
    for plane in planes:
        with contextlib.suppress(Exception):
            plane.stop()


def _on_fatal_signal(signum: int, frame: FrameType | None) -> None:
    _stop_all()
    # Die of the same signal, as if we had never handled it, so our own parent sees the true cause.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_cleanup_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        # Someone else's handler (a CLI, a test runner) already decides what these mean; it must not be replaced.
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _on_fatal_signal)


# --- the control plane ---------------------------------------------------------------------------------------


class ControlPlane(ClusterAccess):
    """etcd + kube-apiserver on free loopback ports, with an admin kubeconfig. Use as a context manager.

    ``workdir`` holds certificates, logs, etcd data and the kubeconfig. When it is ``None`` a temporary folder is
    used and removed by :meth:`stop`; a given folder is kept (logs stay readable), and only this class's own
    entries in it are replaced at the next start.

    Call :meth:`start` from a thread that lives as long as the control plane should (normally the main thread):
    ``PR_SET_PDEATHSIG`` fires when the *thread* that started a child exits, not only when the process does.
    """

    def __init__(
        self, workdir: Path | None = None, *, binaries: Binaries | None = None, start_timeout: float = START_TIMEOUT
    ) -> None:
        self._given_workdir = Path(workdir).resolve() if workdir is not None else None
        self.workdir: Path | None = self._given_workdir
        self.binaries: Binaries | None = binaries
        self.start_timeout = start_timeout
        self.url = ""
        self.kubeconfig = ""
        self.ca_file: str | None = None
        self.admin_cert_file: str | None = None
        self.admin_key_file: str | None = None
        self.startup_seconds: float | None = None
        self.audit_log: Path | None = None
        self.etcd: _Process | None = None
        self.etcd_url = ""
        self.apiserver: _Process | None = None
        self._lock_fd: int | None = None
        self._stop_lock = threading.RLock()  # stop() may re-enter from a signal handler

    # -- public API

    @property
    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in (self.etcd, self.apiserver) if p is not None and p.pid is not None}

    def start(self) -> ControlPlane:
        if self.pids:
            raise ControlPlaneError(f"already running at {self.url}")
        started = time.monotonic()
        self.binaries = self.binaries or ensure_binaries()
        workdir = self._prepare_workdir()
        _install_cleanup_hooks()
        with _live_lock:
            _live.add(self)
        try:
            pki = generate_pki(workdir / "pki")
            self.ca_file = str(pki["ca.crt"])
            self.admin_cert_file = str(pki["admin.crt"])
            self.admin_key_file = str(pki["admin.key"])
            etcd_url = self.etcd_url = self._start_etcd(workdir)
            self._start_apiserver(workdir, pki, etcd_url)
            self.kubeconfig = self._write_admin_kubeconfig(workdir / "kubeconfig")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        log.info("control plane ready in %.1fs at %s (workdir %s)", self.startup_seconds, self.url, workdir)
        return self

    def stop(self) -> None:
        """Stop kube-apiserver, then etcd; idempotent and safe to call from signal handlers and atexit."""
        with self._stop_lock:
            # The API server first: stopped before its storage, it shuts down without etcd connection errors.
            for proc in (self.apiserver, self.etcd):
                if proc is not None:
                    proc.stop()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            if self._given_workdir is None and self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None
            elif self.workdir is not None:
                # etcd preallocates 64 MiB WAL segments, and a kept folder is for reading logs, not for reuse.
                shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
            with _live_lock:
                _live.discard(self)

    def restart(self, component: str, *, kill: bool = False, down_for: float = 0.0) -> float:
        """Stop ``etcd`` or ``kube-apiserver`` (SIGKILL when ``kill``, else SIGTERM), keep it down ``down_for``
        seconds, and start it again on the same port and data; return the seconds it was away. For the fault tier:
        clients see the same URL come back."""
        proc = {"etcd": self.etcd, "kube-apiserver": self.apiserver}[component]
        if proc is None or proc.popen is None:
            raise ControlPlaneError(f"{component} is not running")
        started = time.monotonic()
        if kill:
            _Process._signal_group(proc.popen, signal.SIGKILL)
            proc.popen.wait()
        proc.stop()
        time.sleep(down_for)
        proc.start()
        if component == "etcd":
            probe: Callable[[httpx.Client], bool] = functools.partial(_etcd_healthy, url=self.etcd_url)
            verify = None
        else:
            probe = lambda c: _apiserver_ready(c, self.url)  # noqa: E731
            assert self.ca_file
            assert self.admin_cert_file
            assert self.admin_key_file
            verify = ssl.create_default_context(cafile=self.ca_file)
            verify.load_cert_chain(self.admin_cert_file, self.admin_key_file)
        if not self._wait_ready(proc, probe, verify=verify):
            raise ControlPlaneError(f"{component} exited after its restart:\n{proc.log_tail()}")
        return time.monotonic() - started

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def kubernetes_api_client(self) -> ApiClient:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = self.ca_file
        cfg.cert_file = self.admin_cert_file
        cfg.key_file = self.admin_key_file
        return client.ApiClient(cfg)

    def audit_writes(self, user_agent: str = "") -> list[dict[str, Any]]:
        if self.audit_log is None:
            raise ControlPlaneError("the control plane is not running")
        events = []
        with contextlib.suppress(FileNotFoundError), self.audit_log.open() as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # the API server is still writing this one
                event = json.loads(line)
                if event.get("stage") == "ResponseComplete" and event.get("userAgent", "").startswith(user_agent):
                    events.append(event)
        return events

    def _kubectl_path(self) -> str:
        return str((self.binaries or expected_paths()).kubectl)

    def _kubectl_flags(self) -> list[str]:
        # kubectl caches discovery per host:port for hours; a later cluster on a reused port would inherit it.
        return [f"--cache-dir={self.workdir / 'kubectl-cache'}"] if self.workdir else []

    # -- internals

    def _prepare_workdir(self) -> Path:
        if self._given_workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="octoconn-envtest-"))
            return self.workdir
        workdir = self._given_workdir
        workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(workdir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ControlPlaneError(f"another control plane is running in {workdir}") from None
        self._lock_fd = fd
        # A fresh cluster every start: an old etcd would hold objects signed by a CA that no longer exists.
        for entry in ("etcd", "pki", "apiserver-certs", "logs", "kubeconfig", "kubectl-cache", "audit-policy.yaml"):
            path = workdir / entry
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return workdir

    def _start_etcd(self, workdir: Path) -> str:
        assert self.binaries is not None
        for attempt in range(1, _BIND_ATTEMPTS + 1):
            client_port, peer_port = _free_ports(2)
            client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
            data_dir = workdir / "etcd"
            shutil.rmtree(data_dir, ignore_errors=True)
            self.etcd = _Process(
                "etcd",
                [
                    str(self.binaries.etcd),
                    "--name=envtest",
                    f"--data-dir={data_dir}",
                    f"--listen-client-urls={client_url}",
                    f"--advertise-client-urls={client_url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=envtest={peer_url}",
                    "--initial-cluster-state=new",
                    "--unsafe-no-fsync=true",
                    "--log-level=warn",
                ],
                workdir / "logs" / "etcd.log",
            )
            self.etcd.start()
            if self._wait_ready(self.etcd, functools.partial(_etcd_healthy, url=client_url), verify=None):
                return client_url
            self._retry_or_raise(self.etcd, attempt)
        raise AssertionError("unreachable")

    def _start_apiserver(self, workdir: Path, pki: dict[str, Path], etcd_url: str) -> None:
        assert self.binaries is not None
        audit_policy = workdir / "audit-policy.yaml"
        audit_policy.write_text(_AUDIT_POLICY)
        self.audit_log = workdir / "logs" / "audit.log"
        for attempt in range(1, _BIND_ATTEMPTS + 1):
            (port,) = _free_ports(1)
            self.url = f"https://127.0.0.1:{port}"
            self.apiserver = _Process(
                "kube-apiserver",
                [
                    str(self.binaries.kube_apiserver),
                    f"--etcd-servers={etcd_url}",
                    f"--secure-port={port}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--cert-dir={workdir / 'apiserver-certs'}",
                    f"--tls-cert-file={pki['apiserver.crt']}",
                    f"--tls-private-key-file={pki['apiserver.key']}",
                    f"--client-ca-file={pki['ca.crt']}",
                    f"--service-account-key-file={pki['sa.pub']}",
                    f"--service-account-signing-key-file={pki['sa.key']}",
                    f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                    f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
                    "--authorization-mode=RBAC",
                    "--disable-admission-plugins=ServiceAccount",
                    f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                    "--allow-privileged=true",
                    "--endpoint-reconciler-type=none",
                    f"--audit-policy-file={audit_policy}",
                    f"--audit-log-path={self.audit_log}",
                    "--audit-log-format=json",
                    "--audit-log-mode=blocking",
                ],
                workdir / "logs" / "kube-apiserver.log",
            )
            self.apiserver.start()
            ctx = ssl.create_default_context(cafile=str(pki["ca.crt"]))
            ctx.load_cert_chain(str(pki["admin.crt"]), str(pki["admin.key"]))
            if self._wait_ready(self.apiserver, lambda c: _apiserver_ready(c, self.url), verify=ctx):
                return
            self._retry_or_raise(self.apiserver, attempt)

    def _wait_ready(self, proc: _Process, probe: Callable[[httpx.Client], bool], verify: ssl.SSLContext | None) -> bool:
        """Poll until ``probe`` passes (True) or the process exits (False); raise when the deadline passes."""
        deadline = time.monotonic() + self.start_timeout
        delay = 0.05
        with httpx.Client(verify=verify if verify is not None else True, timeout=5.0) as client:
            while True:
                if proc.exited() is not None:
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if probe(client):
                        return True
                if time.monotonic() > deadline:
                    raise ControlPlaneError(
                        f"{proc.name} was not ready after {self.start_timeout:.0f}s; last lines of "
                        f"{proc.log_path}:\n{proc.log_tail()}"
                    )
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)

    def _retry_or_raise(self, proc: _Process, attempt: int) -> None:
        code = proc.exited()
        tail = proc.log_tail()
        lost_race = proc.lost_bind_race()
        proc.stop()
        if lost_race and attempt < _BIND_ATTEMPTS:
            log.info("%s lost a port race (attempt %d); retrying on new ports", proc.name, attempt)
            return
        raise ControlPlaneError(f"{proc.name} exited with code {code}; last lines of {proc.log_path}:\n{tail}")

    def _write_admin_kubeconfig(self, path: Path) -> str:
        assert self.ca_file
        assert self.admin_cert_file
        assert self.admin_key_file
        cluster = {"server": self.url, "certificate-authority-data": _b64(Path(self.ca_file).read_bytes())}
        user = {
            "client-certificate-data": _b64(Path(self.admin_cert_file).read_bytes()),
            "client-key-data": _b64(Path(self.admin_key_file).read_bytes()),
        }
        return _write_kubeconfig(path, _kubeconfig_doc(cluster, "admin", user))


def _etcd_healthy(client: httpx.Client, url: str) -> bool:
    resp = client.get(f"{url}/health")
    return resp.status_code == 200 and resp.json().get("health") == "true"


def _apiserver_ready(client: httpx.Client, url: str) -> bool:
    # /readyz turns 200 only once every post-start hook (RBAC bootstrap roles, CRD controllers...) has finished.
    if client.get(f"{url}/readyz").status_code != 200:
        return False
    return client.get(f"{url}/livez").status_code == 200


# --- an existing cluster -------------------------------------------------------------------------------------


class ExternalCluster(ClusterAccess):
    """A cluster started elsewhere (kind, a CI service), reached through its kubeconfig; nothing is started.

    Embedded credentials are copied to files in a private temporary folder so that ``ca_file`` and the admin
    certificate paths mean the same as for :class:`ControlPlane` (``None`` where the kubeconfig has no such item,
    e.g. token or exec authentication).
    """

    def __init__(self, kubeconfig: str | Path) -> None:
        self.kubeconfig = str(Path(kubeconfig).expanduser().resolve())
        cfg = _load_kubeconfig(self.kubeconfig)
        cluster = _current_cluster(cfg)
        user = _named(cfg, "users", _current_context(cfg)["user"])
        self.url = str(cluster["server"])
        built = expected_paths()
        self.binaries = built if built.kubectl.exists() else None
        self.startup_seconds: float | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="octoconn-external-"))
        base = Path(self.kubeconfig).parent
        self.ca_file = self._material(cluster, "certificate-authority", base, "ca.crt")
        self.admin_cert_file = self._material(user, "client-certificate", base, "admin.crt")
        self.admin_key_file = self._material(user, "client-key", base, "admin.key")

    def _material(self, section: dict[str, Any], key: str, base: Path, filename: str) -> str | None:
        if section.get(f"{key}-data"):
            path = self._tmp / filename
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(base64.b64decode(section[f"{key}-data"]))
            return str(path)
        if section.get(key):
            return str((base / section[key]).resolve())
        return None

    def _kubectl_path(self) -> str:
        found = shutil.which("kubectl")
        if found:
            return found
        if self.binaries is not None:
            return str(self.binaries.kubectl)
        raise FileNotFoundError("kubectl is neither on PATH nor built; run `python -m tests.envtest.binaries`")

    def start(self) -> ExternalCluster:
        return self

    def stop(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns something truthy; raise ``TimeoutError`` (with the last error) if not."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last error: {last_error!r}")
        time.sleep(interval)
