"""davserver against plain WsgiDAV over HTTP: the same workloads on three servers in one run.

Run ``python -m bench.dav_vs_wsgidav [--size-mib N] [--quick] [--json FILE] [--workdir DIR]``.

The servers, each a child process on a free port with the same cheroot thread count:

* ``dav-durable``: ``davserver serve`` with its default durable commits;
* ``dav-relaxed``: ``davserver serve`` with ``durable = false`` (page cache only, no fsync);
* ``wsgidav``: WsgiDAV's FilesystemProvider over a temp folder (``bench.wsgidav_server``),
  1 MiB block size, Basic auth, in-memory lock storage, logging off.

The three servers run side by side and the workloads are interleaved: each step (a large-file
round, the small files, a PROPFIND folder, the tree operations) runs on every server before the
next step starts, in an order rotated from step to step, so the ratios compare figures taken
minutes apart at most however the machine's speed drifts (``--sequential``: one server's whole
set, then the next's). The workloads (keep-alive ``http.client`` connections):

1. PUT then GET of a large file (``--size-mib``, default 1024; 3 rounds, median; the page cache
   is flushed with ``sync`` before each PUT, untimed), incompressible
   (``os.urandom``) and compressible (log-like text, ~12x with zstd, never constant and never repeating a
   content-defined block, so deduplication cannot flatter davserver); uploads are streamed
   from a file with ``sendfile``, downloads are compared with the source file as they arrive;
2. N x 4 KiB PUT, then GET (compared), with 4 concurrent clients, each on its own connection;
   then N/4 files written the way a mounted drive writes them: LOCK, PUT with the token, UNLOCK
   (information: the issue sets no target for it);
3. PROPFIND Depth 1 (allprop, and a named-property list) on folders of 2000 and 10000 files;
4. MKCOL of a folder, then COPY, MOVE and DELETE of a 500-file folder (results checked);
5. the server process's RSS, sampled every 50 ms: peak while PUT/GETting 1 MiB files against
   peak while PUT/GETting the large files (flat memory means the two are close).

It also measures this disk's durable write rate in the same folder (1 MiB writes of random data:
one ``fdatasync`` at the end; one every 64 MiB; a file per 1 MiB block with ``fdatasync``, rename
and folder fsync, from 1 and from 3 threads), twice before and twice after the
servers (it varies a lot on virtual disks). The "durable PUT / disk" target ratios use the median
of the "every 64 MiB" figures; the ratio to the 3-thread block-file figure is information.

Nothing a phase wrote is deleted before the run ends (so it needs more free disk). Deleting the
disk probes' 2048 block files and each server's folder right before the next server started made
that server's file creation slow on this VM's ext4 without a journal, whose inode allocator steps
over recently deleted inodes (creating an empty file: 20 us after a pause, 0.5-0.9 ms for minutes
after a clean-up); davserver, which ran first and creates a file per block, paid for it.

Prints one table with the issue's targets (PASS/FAIL). Rates: MB = 10**6 bytes of file content.
Nothing asserts a timing; the exit status is 0 unless a workload failed (or returned wrong data).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import platform
import re
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
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from bench import add_common_options
from bench.storage_throughput import (
    cpu_seconds,
    machine_busy_seconds,
    raise_interrupt,
    text_pieces,
    text_pool,
    text_stream,
)
from bench.wsgidav_server import PASSWORD_ENV
from davserver import config as config_mod
from storage.config import PasswordHashing
from storage.engine import Engine
from storage.keys import MasterKey

MiB = 1 << 20
MB = 1_000_000
REPO = Path(__file__).resolve().parent.parent
USER = "bench"
#: argon2 parameters for the bench account (the server caches verified credentials anyway)
CHEAP_HASHING = PasswordHashing(time_cost=1, memory_cost_kib=8, parallelism=1)
_READY = re.compile(r"serving (https?://\S+?)/dav/")
_RESPONSE = re.compile(rb"<(?:[A-Za-z0-9_.-]+:)?response[\s>]")
PROPFIND_NAMED = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<D:propfind xmlns:D="DAV:"><D:prop>'
    b"<D:resourcetype/><D:getcontentlength/><D:getlastmodified/><D:getetag/><D:getcontenttype/>"
    b"</D:prop></D:propfind>"
)
LOCKINFO = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
    b"</D:lockscope><D:locktype><D:write/></D:locktype><D:owner>bench</D:owner></D:lockinfo>"
)
#: growth of the server's peak RSS from 1 MiB transfers to large ones that still counts as flat
RSS_FLAT_SLACK = 64 * MiB

#: davserver's block writer threads (storage.config.StorageConfig.workers), for the disk probe
BLOCK_WRITERS = 3

SERVERS = ("durable", "relaxed", "wsgidav")
LARGE_KINDS = ("incompressible", "compressible")
LABELS = {"durable": "dav-durable", "relaxed": "dav-relaxed", "wsgidav": "wsgidav"}


class BenchError(RuntimeError):
    """A workload failed or the server answered wrongly: the figures cannot count."""


# -- parameters -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    size_mib: int = 1024
    threads: int = 8
    clients: int = 4
    small_count: int = 2000
    small_size: int = 4096
    propfind_sizes: tuple[int, ...] = (2000, 10000)
    propfind_reps: int = 5
    tree_files: int = 500
    tree_reps: int = 3
    mkcol_reps: int = 5
    rss_small_files: int = 32
    #: PUT+GET rounds of each large file (the median is reported)
    large_reps: int = 3
    #: disk measurements before and after the servers (the median is the reference)
    disk_reps: int = 2

    @property
    def size(self) -> int:
        return self.size_mib * MiB


QUICK = Params(
    size_mib=64,
    small_count=200,
    propfind_sizes=(200, 1000),
    propfind_reps=3,
    tree_files=100,
    tree_reps=2,
    mkcol_reps=3,
    rss_small_files=8,
    large_reps=1,
    disk_reps=1,
)


# -- test data ------------------------------------------------------------------------------------


@dataclass
class Sources:
    """Test files, one per round and kind: a file uploaded twice would be stored once
    (deduplication), which would flatter every round after the first."""

    randoms: list[Path]
    texts: list[Path]
    size: int

    @classmethod
    def make(cls, root: Path, size: int, rounds: int = 1) -> Sources:
        randoms, texts = [], []
        for r in range(max(rounds, 1)):
            random_path, text_path = root / f"source-random-{r}.bin", root / f"source-text-{r}.log"
            with open(random_path, "wb") as f:
                left = size
                while left:
                    n = min(MiB, left)
                    f.write(os.urandom(n))
                    left -= n
            stream = text_stream(text_pieces(text_pool()), size)  # salted: unique blocks per stream
            with open(text_path, "wb") as f:
                while chunk := stream.read(MiB):
                    f.write(chunk)
            randoms.append(random_path)
            texts.append(text_path)
        return cls(randoms, texts, size)

    @property
    def random(self) -> Path:
        return self.randoms[0]

    def path(self, kind: str, round_: int = 0) -> Path:
        return (self.randoms if kind == "incompressible" else self.texts)[round_]


# -- the disk -------------------------------------------------------------------------------------


@dataclass
class DiskRun:
    label: str
    #: MB/s for each variant
    end_only: float = 0.0
    every_64mib: float = 0.0
    per_block_file: float = 0.0
    per_block_file_parallel: float = 0.0


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def measure_disk(root: Path, source: Path, size: int, label: str) -> DiskRun:
    """This disk's durable write rate for ``size`` bytes of random data, three ways."""
    run = DiskRun(label)
    target = root / "disk-probe"
    src = os.open(source, os.O_RDONLY)
    try:
        for variant, sync_every in (("end_only", 0), ("every_64mib", 64 * MiB)):
            os.sync()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                start = time.perf_counter()
                for off in range(0, size, MiB):
                    _write_all(fd, os.pread(src, MiB, off))
                    if sync_every and (off + MiB) % sync_every == 0:
                        os.fdatasync(fd)
                os.fdatasync(fd)
                setattr(run, variant, size / (time.perf_counter() - start) / MB)
            finally:
                os.close(fd)
                target.unlink()
        # a temp file per block, fdatasync, rename, fsync the folder (davserver syncs its block
        # files 64 MiB at a time instead); one thread, then BLOCK_WRITERS threads
        for variant, threads in (("per_block_file", 1), ("per_block_file_parallel", BLOCK_WRITERS)):
            # Kept until the run ends (see the module's text on deleting between phases).
            folder = root / f"disk-probe-blocks-{label}-{variant}"
            folder.mkdir()
            os.sync()
            dfd = os.open(folder, os.O_RDONLY)
            try:

                def put_block(i: int, folder: Path = folder, dfd: int = dfd) -> None:
                    tmp = folder / f".tmp-{i}"
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    try:
                        _write_all(fd, os.pread(src, MiB, i * MiB))
                        os.fdatasync(fd)
                    finally:
                        os.close(fd)
                    os.replace(tmp, folder / f"block-{i}")
                    os.fsync(dfd)

                start = time.perf_counter()
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(put_block, range(size // MiB)))
                setattr(run, variant, size / (time.perf_counter() - start) / MB)
            finally:
                os.close(dfd)
    finally:
        os.close(src)
        os.sync()
    return run


# -- server processes -----------------------------------------------------------------------------


class ServerProcess:
    """A server child process that prints ``... serving http://HOST:PORT/dav/`` on stderr."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None
        self.log: deque[str] = deque(maxlen=400)
        self._pump_thread: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        found = threading.Event()
        self._pump_thread = threading.Thread(target=self._pump, args=(found,), daemon=True)
        self._pump_thread.start()
        if not found.wait(timeout) or not self.url:
            self.stop()
            raise BenchError(f"{self.name} did not start:\n" + "".join(self.log))

    def _pump(self, found: threading.Event) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if not self.url and (m := _READY.search(line)):
                self.url = m.group(1)
                found.set()
        found.set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    def problems(self) -> list[str]:
        """Log lines that look like errors (davserver logs INFO lines at start)."""
        return [
            line.rstrip() for line in self.log if re.search(r"\b(ERROR|CRITICAL|Traceback|Exception)\b", line)
        ]


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAVSERVER_")}
    env.pop(PASSWORD_ENV, None)
    env.update(extra or {})
    return env


def davserver_process(data_dir: Path, *, durable: bool, threads: int, password: str) -> ServerProcess:
    """A fresh data folder (config, master key, SQLite, one account) and its ``serve`` process."""
    data_dir.mkdir(parents=True)
    (data_dir / config_mod.CONFIG_NAME).write_text(
        f"durable = {'true' if durable else 'false'}\nthreads = {threads}\n", encoding="utf-8"
    )
    MasterKey.generate().save(data_dir / config_mod.MASTER_KEY_NAME)
    cfg = config_mod.load(data_dir=data_dir, env={})
    with Engine.open(cfg.storage_config(password_hashing=CHEAP_HASHING, auto_migrate=True)) as engine:
        engine.accounts.create(USER, password)
    argv = [sys.executable, "-m", "davserver.cli", "serve", "--data-dir", str(data_dir), "--port", "0"]
    name = "dav-durable" if durable else "dav-relaxed"
    return ServerProcess(name, argv, _child_env())


def wsgidav_process(root: Path, *, threads: int, password: str) -> ServerProcess:
    root.mkdir(parents=True)
    argv = [
        sys.executable,
        "-m",
        "bench.wsgidav_server",
        "--root",
        str(root),
        "--port",
        "0",
        "--threads",
        str(threads),
        "--user",
        USER,
    ]
    return ServerProcess("wsgidav", argv, _child_env({PASSWORD_ENV: password}))


# -- watching the server --------------------------------------------------------------------------


@dataclass
class PhaseStats:
    peak_rss: int = 0
    server_cpu: float = 0.0
    #: CPU seconds of this (client) process, sampler included
    client_cpu: float = 0.0
    wall: float = 0.0

    @property
    def cores(self) -> float:
        return self.server_cpu / self.wall if self.wall else 0.0

    @property
    def client_cores(self) -> float:
        return self.client_cpu / self.wall if self.wall else 0.0


class Monitor:
    """Samples the server's RSS every ``interval`` seconds; keeps peaks and CPU per phase."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._proc = psutil.Process(pid)
        self._interval = interval
        self._lock = threading.Lock()
        self._phase: str | None = None
        self.phases: dict[str, PhaseStats] = {}
        self.peak_rss = 0
        self.idle_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> Monitor:
        self.idle_rss = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _rss(self) -> int:
        try:
            return int(self._proc.memory_info().rss)
        except psutil.Error:
            return 0

    def _cpu(self) -> float:
        try:
            t = self._proc.cpu_times()
        except psutil.Error:
            return 0.0
        return float(t.user + t.system)

    def sample(self) -> None:
        rss = self._rss()
        with self._lock:
            self.peak_rss = max(self.peak_rss, rss)
            if self._phase is not None:
                stats = self.phases.setdefault(self._phase, PhaseStats())
                stats.peak_rss = max(stats.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with self._lock:
            self._phase = name
        self.sample()
        cpu0, own0, t0 = self._cpu(), cpu_seconds(), time.perf_counter()
        try:
            yield
        finally:
            wall, cpu, own = time.perf_counter() - t0, self._cpu() - cpu0, cpu_seconds() - own0
            self.sample()
            with self._lock:
                self._phase = None
                stats = self.phases.setdefault(name, PhaseStats())
                stats.server_cpu += cpu
                stats.client_cpu += own
                stats.wall += wall

    def peak(self, *names: str) -> int:
        return max((self.phases[n].peak_rss for n in names if n in self.phases), default=0)

    def phase_table(self) -> dict[str, dict[str, float]]:
        """Each phase's peak RSS (MiB), server and client cores, and seconds (for JSON)."""
        return {
            name: {
                "peak_rss_mib": st.peak_rss / MiB,
                "server_cores": st.cores,
                "client_cores": st.client_cores,
                "seconds": st.wall,
            }
            for name, st in self.phases.items()
        }


# -- the client -----------------------------------------------------------------------------------


class Client:
    """One keep-alive HTTP connection with Basic credentials."""

    def __init__(self, url: str, password: str, timeout: float = 600.0) -> None:
        parts = urlsplit(url)
        self.origin = url.rstrip("/")
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
        token = base64.b64encode(f"{USER}:{password}".encode()).decode()
        self.auth = f"Basic {token}"

    def close(self) -> None:
        self.conn.close()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        hdrs = {"Authorization": self.auth, **(headers or {})}
        if body is None and method in ("PUT", "PROPFIND", "MKCOL", "COPY", "MOVE"):
            hdrs.setdefault("Content-Length", "0")
        self.conn.request(method, path, body=body, headers=hdrs)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, data

    def expect(
        self,
        method: str,
        path: str,
        statuses: Sequence[int],
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        status, data = self.request(method, path, body, headers)
        if status not in statuses:
            raise BenchError(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        return data

    def lock(self, path: str) -> str:
        """LOCK ``path`` (exclusive, depth 0, 60 s), creating it if missing; returns the token."""
        headers = {
            "Authorization": self.auth,
            "Timeout": "Second-60",
            "Depth": "0",
            "Content-Type": "application/xml; charset=utf-8",
        }
        self.conn.request("LOCK", path, body=LOCKINFO, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        token = resp.getheader("Lock-Token")
        if resp.status not in (200, 201) or not token:
            raise BenchError(f"LOCK {path}: HTTP {resp.status}: {data[:300]!r}")
        return token

    def put_file(self, path: str, source: Path, size: int, offset: int = 0) -> None:
        """PUT ``size`` bytes of ``source`` from ``offset`` with ``sendfile`` (no copy through Python)."""
        self.conn.putrequest("PUT", path, skip_accept_encoding=True)
        self.conn.putheader("Authorization", self.auth)
        self.conn.putheader("Content-Length", str(size))
        self.conn.putheader("Content-Type", "application/octet-stream")
        self.conn.endheaders()
        assert self.conn.sock is not None
        with open(source, "rb") as f:
            sent = self.conn.sock.sendfile(f, offset, size)
        if sent != size:
            raise BenchError(f"PUT {path}: sent {sent} of {size} bytes")
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status not in (200, 201, 204):
            raise BenchError(f"PUT {path}: HTTP {resp.status}: {data[:300]!r}")

    def get_compare(self, path: str, source: Path, size: int, offset: int = 0) -> None:
        """GET ``path``; compare every byte with ``source`` from ``offset`` as it arrives (1 MiB buffer)."""
        self.conn.putrequest("GET", path, skip_accept_encoding=True)
        self.conn.putheader("Authorization", self.auth)
        self.conn.endheaders()
        resp = self.conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"GET {path}: HTTP {resp.status}: {resp.read()[:300]!r}")
        buf = bytearray(MiB)
        view = memoryview(buf)
        got = 0
        fd = os.open(source, os.O_RDONLY)
        try:
            while True:
                n = resp.readinto(view)
                if not n:
                    break
                if got + n > size:
                    raise BenchError(f"GET {path}: more than the {size} bytes stored")
                # bytearray == bytes is a memcmp (a memoryview compares item by item, ~15x slower)
                got_bytes = buf if n == len(buf) else view[:n].tobytes()
                if got_bytes != os.pread(fd, n, offset + got):
                    raise BenchError(f"GET {path}: content differs from what was PUT near offset {got}")
                got += n
        except BaseException:
            self.conn.close()  # the rest of the body is unread: the connection is unusable
            raise
        finally:
            os.close(fd)
        if got != size:
            raise BenchError(f"GET {path}: {got} bytes, expected {size}")


def count_responses(xml: bytes) -> int:
    return len(_RESPONSE.findall(xml))


def run_parallel(
    make_client: Callable[[], Client], clients: int, items: Sequence[Any], fn: Callable[[Client, Any], None]
) -> float:
    """Seconds for ``clients`` threads, each on its own connection, to apply ``fn`` to ``items``.

    Every thread connects (and authenticates, with an OPTIONS) before the clock starts.
    """
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        client = make_client()
        try:
            client.expect("OPTIONS", "/dav/", (200,))
            barrier.wait()
            for item in items[t::clients]:
                fn(client, item)
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(clients)]
    for th in threads:
        th.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    start = time.perf_counter()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


# -- workloads ------------------------------------------------------------------------------------


@dataclass
class ServerResult:
    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    others_cpu_cores: float | None = None
    seconds: float = 0.0
    log_problems: list[str] = field(default_factory=list)


class Workloads:
    """The workloads against one running server; figures go to ``self.m``."""

    def __init__(self, server: ServerProcess, params: Params, sources: Sources, password: str) -> None:
        self.server = server
        self.params = params
        self.sources = sources
        self.password = password
        self.m: dict[str, float] = {}
        #: Seconds of each large PUT and GET so far, per kind (:meth:`large_round`).
        self._large: dict[str, tuple[list[float], list[float]]] = {}

    def client(self) -> Client:
        return Client(self.server.url, self.password)

    @contextlib.contextmanager
    def connection(self) -> Iterator[Client]:
        c = self.client()
        try:
            yield c
        finally:
            c.close()

    def run(self, mon: Monitor) -> None:
        for _, step in self.steps():
            step(self, mon)

    def steps(self) -> list[tuple[str, Callable[[Workloads, Monitor], None]]]:
        """Every workload in order, as steps another server's can be interleaved with."""
        p = self.params
        steps: list[tuple[str, Callable[[Workloads, Monitor], None]]] = [
            ("memory baseline", Workloads.memory_baseline)
        ]
        for r in range(p.large_reps):
            for kind in LARGE_KINDS:
                steps.append((f"large {kind} #{r + 1}", _step(Workloads.large_round, kind, r)))
        steps.append(("small files", Workloads.small))
        steps.append(("small files, locked", Workloads.locked_small))
        for n in p.propfind_sizes:
            steps.append((f"PROPFIND {n}", _step(Workloads.propfind, n)))
        steps.append(("tree operations", Workloads.tree))
        return steps

    # 5. the RSS baseline: 1 MiB files PUT and GET
    def memory_baseline(self, mon: Monitor) -> None:
        src, size = self.sources.random, self.sources.size
        count = self.params.rss_small_files if size >= MiB else 0
        with self.connection() as c:
            c.expect("OPTIONS", "/dav/", (200,))
            with mon.phase("rss-1mib"):
                for i in range(count):
                    off = i * MiB % (size - MiB + 1)
                    c.put_file(f"/dav/one-{i}.bin", src, MiB, off)
                    c.get_compare(f"/dav/one-{i}.bin", src, MiB, off)
            for i in range(count):
                c.expect("DELETE", f"/dav/one-{i}.bin", (200, 204))

    # 1. large PUT then GET
    def large_round(self, mon: Monitor, kind: str, r: int) -> None:
        """One PUT then GET of round ``r``'s ``kind`` file; the figures are the rounds' median."""
        size = self.sources.size
        puts, gets = self._large.setdefault(kind, ([], []))
        src = self.sources.path(kind, r)
        path = f"/dav/large-{kind}-{r}.bin"
        # Untimed: the page cache's dirty data (an earlier upload's, any server's) is written
        # back now, not during this upload.
        os.sync()
        with self.connection() as c:
            with mon.phase(f"large-put-{kind}"):
                start = time.perf_counter()
                c.put_file(path, src, size)
                puts.append(time.perf_counter() - start)
            with mon.phase(f"large-get-{kind}"):
                start = time.perf_counter()
                c.get_compare(path, src, size)
                gets.append(time.perf_counter() - start)
            c.expect("DELETE", path, (200, 204))
        self.m[f"large_put_{kind}_mbps"] = size / statistics.median(puts) / MB
        self.m[f"large_get_{kind}_mbps"] = size / statistics.median(gets) / MB
        self.m[f"large_put_{kind}_mbps_min"] = size / max(puts) / MB
        self.m[f"large_put_{kind}_mbps_max"] = size / min(puts) / MB
        self.m[f"large_get_{kind}_mbps_min"] = size / max(gets) / MB
        self.m[f"large_get_{kind}_mbps_max"] = size / min(gets) / MB

    # 2. small files, concurrent clients
    def small(self, mon: Monitor) -> None:
        p = self.params
        items = [(f"/dav/small/f{i:05d}.bin", os.urandom(p.small_size)) for i in range(p.small_count)]
        with self.connection() as c:
            c.expect("MKCOL", "/dav/small/", (201,))

        def put(cl: Client, item: tuple[str, bytes]) -> None:
            cl.expect("PUT", item[0], (200, 201, 204), item[1])

        def get(cl: Client, item: tuple[str, bytes]) -> None:
            data = cl.expect("GET", item[0], (200,))
            if data != item[1]:
                raise BenchError(f"GET {item[0]}: wrong content ({len(data)} bytes)")

        with mon.phase("small-put"):
            self.m["small_put_ops"] = len(items) / run_parallel(self.client, p.clients, items, put)
        with mon.phase("small-get"):
            self.m["small_get_ops"] = len(items) / run_parallel(self.client, p.clients, items, get)

    # 2b. small files written the way a mounted drive writes them (davfs2, Finder, Windows)
    def locked_small(self, mon: Monitor) -> None:
        """LOCK (which creates the file), PUT with the token in If, UNLOCK; a quarter as many."""
        p = self.params
        items = [(f"/dav/locked/f{i:05d}.bin", os.urandom(p.small_size)) for i in range(p.small_count // 4)]
        with self.connection() as c:
            c.expect("MKCOL", "/dav/locked/", (201,))

        def write(cl: Client, item: tuple[str, bytes]) -> None:
            token = cl.lock(item[0])
            cl.expect("PUT", item[0], (200, 201, 204), item[1], {"If": f"({token})"})
            cl.expect("UNLOCK", item[0], (204,), None, {"Lock-Token": token})

        with mon.phase("locked-put"):
            self.m["locked_put_ops"] = len(items) / run_parallel(self.client, p.clients, items, write)

    # 3. PROPFIND Depth 1 on a folder of n files
    def propfind(self, mon: Monitor, n: int) -> None:
        folder = f"/dav/list{n}/"
        items = [(f"{folder}e{i:05d}.txt", b"entry %d\n" % i) for i in range(n)]
        with self.connection() as c:
            c.expect("MKCOL", folder, (201,))

        def put(cl: Client, item: tuple[str, bytes]) -> None:
            cl.expect("PUT", item[0], (200, 201, 204), item[1])

        with mon.phase(f"propfind-{n}-populate"):
            self.m[f"populate_{n}_ops"] = n / run_parallel(self.client, self.params.clients, items, put)
        with self.connection() as c, mon.phase(f"propfind-{n}"):
            for variant, body in (("allprop", None), ("named", PROPFIND_NAMED)):
                headers = {"Depth": "1"}
                if body is not None:
                    headers["Content-Type"] = "application/xml; charset=utf-8"
                times = []
                for _ in range(self.params.propfind_reps):
                    start = time.perf_counter()
                    xml = c.expect("PROPFIND", folder, (207,), body, headers)
                    times.append(time.perf_counter() - start)
                    if (got := count_responses(xml)) != n + 1:
                        raise BenchError(f"PROPFIND {folder}: {got} responses, expected {n + 1}")
                    del xml
                self.m[f"propfind_{n}_{variant}_ms"] = statistics.median(times) * 1000

    # 4. MKCOL, then COPY, MOVE and DELETE of a folder of files
    def tree(self, mon: Monitor) -> None:
        p = self.params
        items = [(f"/dav/tree/t{i:04d}.bin", os.urandom(p.small_size)) for i in range(p.tree_files)]
        probe_name, probe = items[len(items) // 2]
        probe_name = probe_name.rsplit("/", 1)[1]
        origin = self.server.url
        mkcols: list[float] = []
        copies: list[float] = []
        moves: list[float] = []
        deletes: list[float] = []
        with self.connection() as c:
            with mon.phase("tree-ops"):
                for i in range(p.mkcol_reps):
                    start = time.perf_counter()
                    c.expect("MKCOL", f"/dav/mk{i}/", (201,))
                    mkcols.append(time.perf_counter() - start)
            c.expect("MKCOL", "/dav/tree/", (201,))

            def put(cl: Client, item: tuple[str, bytes]) -> None:
                cl.expect("PUT", item[0], (200, 201, 204), item[1])

            with mon.phase("tree-populate"):
                run_parallel(self.client, p.clients, items, put)
            del items
            for r in range(p.tree_reps):
                copy, moved = f"/dav/tree-c{r}/", f"/dav/tree-m{r}/"
                with mon.phase("tree-ops"):
                    start = time.perf_counter()
                    c.expect(
                        "COPY",
                        "/dav/tree/",
                        (201, 204),
                        headers={"Destination": origin + copy, "Depth": "infinity", "Overwrite": "F"},
                    )
                    copies.append(time.perf_counter() - start)
                _check_tree(c, copy, p.tree_files, probe_name, probe)
                with mon.phase("tree-ops"):
                    start = time.perf_counter()
                    c.expect(
                        "MOVE", copy, (201, 204), headers={"Destination": origin + moved, "Overwrite": "F"}
                    )
                    moves.append(time.perf_counter() - start)
                _check_gone(c, copy)
                _check_tree(c, moved, p.tree_files, probe_name, probe)
                with mon.phase("tree-ops"):
                    start = time.perf_counter()
                    c.expect("DELETE", moved, (200, 204))
                    deletes.append(time.perf_counter() - start)
                _check_gone(c, moved)
        self.m["mkcol_ms"] = statistics.median(mkcols) * 1000
        self.m["copy_ms"] = statistics.median(copies) * 1000
        self.m["move_ms"] = statistics.median(moves) * 1000
        self.m["delete_ms"] = statistics.median(deletes) * 1000


LARGE_PHASES = tuple(f"large-{op}-{k}" for op in ("put", "get") for k in LARGE_KINDS)


def _step(method: Callable[..., None], *args: Any) -> Callable[[Workloads, Monitor], None]:
    """A workload method with its arguments bound, run as ``step(workloads, monitor)``."""
    return lambda w, mon: method(w, mon, *args)


def _record_monitor(result: ServerResult, mon: Monitor) -> None:
    """The server's memory figures and per-phase statistics, from its monitor."""
    m = result.metrics
    m["rss_idle_mib"] = mon.idle_rss / MiB
    m["rss_1mib_peak_mib"] = mon.peak("rss-1mib") / MiB
    m["rss_large_peak_mib"] = mon.peak(*LARGE_PHASES) / MiB
    m["rss_peak_mib"] = mon.peak_rss / MiB
    result.phases = mon.phase_table()


def run_servers(
    servers: dict[str, ServerProcess], params: Params, sources: Sources, password: str
) -> tuple[dict[str, ServerResult], list[str]]:
    """Start ``servers``, run every workload step on each before the next step, stop them.

    With one server, that is its whole set of workloads (``--sequential`` runs them so).

    A virtual machine's speed drifts over minutes (neighbours, the host's disk): running one
    server's whole set and then the next's compared them at different times, and the ratios
    moved by a third from one run to the next. Here step *i* runs on the servers in an order
    rotated by *i*, so no server is always first after a step that leaves the disk busy, and
    each ratio compares figures taken minutes apart at most. Idle servers wait on their sockets.
    ``servers`` is keyed like the results (``durable``, ``relaxed``, ``wsgidav``).
    """
    failed: list[str] = []
    t_start, busy0, own0 = time.perf_counter(), machine_busy_seconds(), cpu_seconds()
    with contextlib.ExitStack() as stack:
        for key, server in list(servers.items()):
            try:
                server.start()
            except BenchError as exc:
                failed.append(f"{server.name}: {exc}")
                print(f"  {server.name} FAILED to start: {exc}", file=sys.stderr, flush=True)
                servers = {k: s for k, s in servers.items() if k != key}
                continue
            stack.callback(server.stop)
        results = {key: ServerResult(s.name) for key, s in servers.items()}
        cpu0 = {key: _proc_cpu(s.pid) for key, s in servers.items()}
        work = {key: Workloads(s, params, sources, password) for key, s in servers.items()}
        mons = {key: stack.enter_context(Monitor(s.pid)) for key, s in servers.items()}
        for key, w in work.items():
            results[key].metrics = w.m
        live = list(servers)
        steps = next(iter(work.values())).steps() if work else []
        for i, (label, step) in enumerate(steps):
            print(f"  {label}", flush=True)
            turn = i % len(live) if live else 0
            for key in live[turn:] + live[:turn]:
                try:
                    step(work[key], mons[key])
                    if not servers[key].alive():
                        raise BenchError("the server exited")
                except BenchError as exc:
                    failed.append(f"{servers[key].name}: {label}: {exc}")
                    print(f"  {servers[key].name} FAILED ({label}): {exc}", file=sys.stderr, flush=True)
                    for line in list(servers[key].log)[-30:]:
                        print(f"    | {line.rstrip()}", file=sys.stderr)
                    live.remove(key)
        seconds = time.perf_counter() - t_start
        servers_cpu = 0.0
        for key, server in servers.items():
            results[key].seconds = seconds
            _record_monitor(results[key], mons[key])
            if server.alive():
                servers_cpu += _proc_cpu(server.pid) - cpu0[key]
        busy1 = machine_busy_seconds()
        if busy0 is not None and busy1 is not None:
            # The other bench servers are not "others": only processes outside the bench.
            others = max(0.0, busy1 - busy0 - (cpu_seconds() - own0) - servers_cpu) / seconds
            for result in results.values():
                result.others_cpu_cores = others
    for key, server in servers.items():
        results[key].log_problems = server.problems()
    return results, failed


def _check_tree(c: Client, folder: str, files: int, probe_name: str, probe: bytes) -> None:
    xml = c.expect("PROPFIND", folder, (207,), None, {"Depth": "1"})
    if count_responses(xml) != files + 1:
        raise BenchError(f"PROPFIND {folder}: {count_responses(xml)} responses, expected {files + 1}")
    if c.expect("GET", folder + probe_name, (200,)) != probe:
        raise BenchError(f"GET {folder}{probe_name}: wrong content")


def _check_gone(c: Client, folder: str) -> None:
    c.expect("PROPFIND", folder, (404,), None, {"Depth": "0"})


def _proc_cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


# -- report ---------------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    unit: str
    values: dict[str, float | None]
    higher_is_better: bool = True
    #: the target (empty: none) and whether it is met (None: not measured)
    target: str = ""
    verdict: bool | None = None


def _speed(value: float | None, base: float | None, higher_is_better: bool) -> float | None:
    """davserver's figure relative to WsgiDAV's, > 1 meaning davserver is better."""
    if value is None or base is None or value <= 0 or base <= 0:
        return None
    return value / base if higher_is_better else base / value


def build_rows(
    results: dict[str, ServerResult], disk_ref: float | None, block_ref: float | None, params: Params
) -> list[Row]:
    def get(server: str, key: str) -> float | None:
        r = results.get(server)
        return r.metrics.get(key) if r is not None else None

    def vals(key: str) -> dict[str, float | None]:
        return {s: get(s, key) for s in SERVERS}

    rows: list[Row] = []

    def vs_wsgidav(
        metric: str, key: str, unit: str, goal: float | None, server: str = "durable", higher: bool = True
    ) -> None:
        row = Row(metric, unit, vals(key), higher)
        if goal is not None:
            ratio = _speed(get(server, key), get("wsgidav", key), higher)
            row.target = f"{LABELS[server]} >= {goal:g}x wsgidav"
            row.verdict = None if ratio is None else ratio >= goal
        rows.append(row)

    def vs_disk(kind: str, goal: float) -> None:
        value = get("durable", f"large_put_{kind}_mbps")
        ratio = value / disk_ref if value is not None and disk_ref else None
        row = Row(f"  durable PUT / disk fdatasync, {kind[:6]}.", "x", {"durable": ratio}, True)
        row.target = f"dav-durable >= {goal:g}x disk"
        row.verdict = None if ratio is None else ratio >= goal
        rows.append(row)
        blocks = value / block_ref if value is not None and block_ref else None
        rows.append(Row("  (same, vs the block-file pattern)", "x", {"durable": blocks}, True))

    size = f"{params.size_mib:,} MiB"
    vs_wsgidav(f"PUT {size} incompressible", "large_put_incompressible_mbps", "MB/s", 0.8, "relaxed")
    vs_disk("incompressible", 0.9)
    vs_wsgidav(f"PUT {size} compressible", "large_put_compressible_mbps", "MB/s", 0.8, "relaxed")
    vs_disk("compressible", 1.2)
    vs_wsgidav(f"GET {size} incompressible", "large_get_incompressible_mbps", "MB/s", 0.7)
    vs_wsgidav(f"GET {size} compressible", "large_get_compressible_mbps", "MB/s", 0.45)
    small = f"{params.small_count} x {params.small_size // 1024} KiB"
    vs_wsgidav(f"PUT {small}, {params.clients} clients", "small_put_ops", "ops/s", 0.8)
    vs_wsgidav(f"GET {small}, {params.clients} clients", "small_get_ops", "ops/s", 1.0)
    locked = f"{params.small_count // 4} x {params.small_size // 1024} KiB"
    vs_wsgidav(f"  LOCK+PUT+UNLOCK {locked} (files/s)", "locked_put_ops", "ops/s", None)
    for n in params.propfind_sizes:
        vs_wsgidav(
            f"PROPFIND depth 1, {n} files, allprop", f"propfind_{n}_allprop_ms", "ms", 3.0, higher=False
        )
        vs_wsgidav(f"PROPFIND depth 1, {n} files, named", f"propfind_{n}_named_ms", "ms", None, higher=False)
        vs_wsgidav(f"  (PUT {n} tiny files to fill it)", f"populate_{n}_ops", "ops/s", None)
    vs_wsgidav("MKCOL (empty folder)", "mkcol_ms", "ms", None, higher=False)
    tree = f"{params.tree_files}-file folder"
    vs_wsgidav(f"COPY {tree}", "copy_ms", "ms", 2.0, higher=False)
    vs_wsgidav(f"MOVE {tree}", "move_ms", "ms", 10.0, higher=False)
    vs_wsgidav(f"DELETE {tree}", "delete_ms", "ms", None, higher=False)

    rows.append(Row("server RSS idle", "MiB", vals("rss_idle_mib"), False))
    rows.append(Row("server RSS peak, 1 MiB PUT/GET", "MiB", vals("rss_1mib_peak_mib"), False))
    flat = Row(f"server RSS peak, {size} PUT/GET", "MiB", vals("rss_large_peak_mib"), False)
    flat.target = f"growth <= {RSS_FLAT_SLACK // MiB} MiB (davservers)"
    growth = [
        (get(s, "rss_large_peak_mib") or 0) - (get(s, "rss_1mib_peak_mib") or 0)
        for s in ("durable", "relaxed")
        if s in results
    ]
    flat.verdict = all(g <= RSS_FLAT_SLACK / MiB for g in growth) if growth else None
    rows.append(flat)
    rows.append(Row("server RSS peak, whole run", "MiB", vals("rss_peak_mib"), False))
    return rows


def _fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    if unit == "x":
        return f"{x:.2f}x"
    if unit == "ms":
        return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"
    return f"{x:,.0f}"


def print_table(rows: Sequence[Row], out: Any = sys.stdout) -> None:
    head = (
        f"{'metric':<42} {'unit':>5} {'dav-durable':>11} {'dav-relaxed':>11} {'wsgidav':>9}"
        f" {'dur/ws':>7} {'rel/ws':>7}  {'target':<30} result"
    )
    print(head, file=out)
    print("-" * len(head), file=out)
    for row in rows:
        ratios = [
            _speed(row.values.get(s), row.values.get("wsgidav"), row.higher_is_better)
            if row.unit != "x"
            else None
            for s in ("durable", "relaxed")
        ]
        if row.unit == "MiB":
            ratios = [None, None]
        verdict = {True: "PASS", False: "FAIL", None: "n/a" if row.target else ""}[row.verdict]
        print(
            f"{row.metric:<42} {row.unit:>5} {_fmt(row.values.get('durable'), row.unit):>11}"
            f" {_fmt(row.values.get('relaxed'), row.unit):>11} {_fmt(row.values.get('wsgidav'), row.unit):>9}"
            f" {_fmt(ratios[0], 'x'):>7} {_fmt(ratios[1], 'x'):>7}  {row.target:<30} {verdict}".rstrip(),
            file=out,
        )
    print(
        "ratios: davserver relative to wsgidav, > 1 means davserver is better (faster, or less time)",
        file=out,
    )


def print_disk(runs: Sequence[DiskRun], ref: float | None) -> None:
    print("disk durable write rate, same folder (1 MiB writes of random data)          MB/s")
    for run in runs:
        for label, value in (
            ("one fdatasync at the end", run.end_only),
            ("fdatasync every 64 MiB", run.every_64mib),
            ("a file per 1 MiB block: fdatasync, rename, fsync dir", run.per_block_file),
            (
                f"the same from {BLOCK_WRITERS} threads (davserver's block writers)",
                run.per_block_file_parallel,
            ),
        ):
            print(f"  {run.label + ':':<10} {label:<60} {value:>7,.0f}")
    if ref:
        spread = [r.every_64mib for r in runs]
        print(
            f"  -> the 'disk' ratios use 'fdatasync every 64 MiB', median of the runs: {ref:,.0f} MB/s"
            f" (range {min(spread):,.0f}-{max(spread):,.0f}):\n"
            "     the disk's own durable streaming rate. davserver writes each ~1 MiB block to a file\n"
            "     of its own without waiting and syncs them 64 MiB at a time; the block-file figures (a\n"
            f"     sync per file, from 1 and {BLOCK_WRITERS} threads) show what that would cost (as info)."
        )


def print_large_spread(results: dict[str, ServerResult], reps: int) -> None:
    print(f"\nlarge-file rounds: median [min-max] MB/s of {reps}")
    print(f"  {'':<30}" + "".join(f" {LABELS[s]:>22}" for s in SERVERS))
    for op in ("put", "get"):
        for kind in ("incompressible", "compressible"):
            key = f"large_{op}_{kind}_mbps"
            cells = []
            for s in SERVERS:
                m = results[s].metrics if s in results else {}
                if key in m:
                    cells.append(f"{m[key]:,.0f} [{m[key + '_min']:,.0f}-{m[key + '_max']:,.0f}]")
                else:
                    cells.append("-")
            print(f"  {op.upper()} {kind:<26}" + "".join(f" {c:>22}" for c in cells))


def print_phases(results: dict[str, ServerResult]) -> None:
    print("\nper phase: server CPU / bench client CPU (cores busy), server peak RSS, seconds")
    names: list[str] = []
    for r in results.values():
        names += [n for n in r.phases if n not in names]
    shown = [s for s in SERVERS if s in results]
    print(f"  {'phase':<24}" + "".join(f" {LABELS[s]:>27}" for s in shown))
    for name in names:
        cells = []
        for s in shown:
            ph = results[s].phases.get(name)
            cell = "-"
            if ph:
                cores = f"{ph['server_cores']:.2f}/{ph['client_cores']:.2f}c"
                cell = f"{cores} {ph['peak_rss_mib']:,.0f}M {ph['seconds']:.1f}s"
            cells.append(f" {cell:>27}")
        print(f"  {name:<24}" + "".join(cells))
    for s in shown:
        r = results[s]
        others = f"{r.others_cpu_cores:.2f} cores" if r.others_cpu_cores is not None else "n/a"
        print(f"  {LABELS[s]}: run {r.seconds:,.0f} s, other processes' CPU meanwhile {others}")
        for line in r.log_problems[:20]:
            print(f"    server log: {line}")


def wait_quiet(limit: float, cores: float = 0.3, window: float = 2.0) -> str:
    """Wait (up to ``limit`` seconds) until other processes keep less than ``cores`` busy."""
    if limit <= 0:
        return ""
    deadline = time.monotonic() + limit
    busy = None
    while True:
        b0, own0 = machine_busy_seconds(), cpu_seconds()
        time.sleep(window)
        b1 = machine_busy_seconds()
        if b0 is None or b1 is None:
            return "cannot read /proc/stat"
        busy = max(0.0, b1 - b0 - (cpu_seconds() - own0)) / window
        if busy < cores:
            return f"machine quiet ({busy:.2f} cores busy)"
        if time.monotonic() >= deadline:
            return f"gave up waiting for a quiet machine ({busy:.2f} cores busy)"


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.dav_vs_wsgidav", description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=None, help="large file size in MiB (default 1024)")
    ap.add_argument(
        "--quick", action="store_true", help="small sizes: 64 MiB file, 200 small files, 200/1000 entries"
    )
    ap.add_argument("--threads", type=int, default=8, help="server worker threads, all servers (default 8)")
    ap.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated subset of {','.join(SERVERS)} (default: all three)",
    )
    ap.add_argument(
        "--sequential",
        action="store_true",
        help="one server after the other (all workloads each) instead of interleaving the workloads",
    )
    add_common_options(ap, wait_quiet="before the servers (before each one with --sequential)")
    args = ap.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not servers or any(s not in SERVERS for s in servers):
        ap.error(f"--servers takes names from {', '.join(SERVERS)}")
    args.servers = servers
    if args.size_mib is not None and args.size_mib < 2:
        ap.error("--size-mib must be at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = QUICK if args.quick else Params()
    params = replace(params, threads=args.threads)
    if args.size_mib is not None:
        params = replace(params, size_mib=args.size_mib)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    parent = args.workdir or Path(tempfile.gettempdir())
    # sources, the disk probes' block files (kept), every server's uploads (kept)
    need = (
        params.size * (2 * params.large_reps + 3)
        + params.size * 2 * 2 * params.disk_reps
        + params.size * 2 * params.large_reps * len(args.servers)
        + 512 * MiB
    )
    free = shutil.disk_usage(parent).free
    if free < need:
        print(f"not enough free disk space in {parent}: need {need / MiB:,.0f} MiB", file=sys.stderr)
        return 2

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    root = Path(tempfile.mkdtemp(prefix="dav-vs-wsgidav-", dir=parent))
    password = secrets.token_urlsafe(16)
    results: dict[str, ServerResult] = {}
    disks: list[DiskRun] = []
    failed: list[str] = []
    started = time.perf_counter()
    try:
        print(
            f"davserver vs WsgiDAV: large file {params.size_mib:,} MiB, {params.threads} server threads, "
            f"{params.clients} clients; {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"bench folder {root}",
            flush=True,
        )
        print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        sources = Sources.make(root, params.size, params.large_reps)
        for i in range(params.disk_reps):
            disks.append(measure_disk(root, sources.random, params.size, f"before#{i + 1}"))
        print("measured the disk; ", end="", flush=True)
        servers: dict[str, ServerProcess] = {}
        for name in args.servers:
            folder = root / f"server-{name}"
            if name == "wsgidav":
                servers[name] = wsgidav_process(folder, threads=params.threads, password=password)
            else:
                servers[name] = davserver_process(
                    folder, durable=name == "durable", threads=params.threads, password=password
                )
        # Interleaved: all together; --sequential: one after the other (each folder stays until
        # the run ends, like the disk probes').
        groups = [servers] if not args.sequential else [{k: v} for k, v in servers.items()]
        for group in groups:
            quiet = wait_quiet(args.wait_quiet)
            names = ", ".join(s.name for s in group.values())
            print(f"running {names}{', interleaved' if len(group) > 1 else ''} ... {quiet}", flush=True)
            got, errors = run_servers(group, params, sources, password)
            results.update(got)
            failed += errors
            for r in list(got.values())[:1]:
                others = f"{r.others_cpu_cores:.2f}" if r.others_cpu_cores is not None else "n/a"
                print(f"  done in {r.seconds:,.0f} s (other processes' CPU {others} cores)", flush=True)
        for i in range(params.disk_reps):
            disks.append(measure_disk(root, sources.random, params.size, f"after#{i + 1}"))
        disk_ref = statistics.median(d.every_64mib for d in disks)

        block_ref = statistics.median(d.per_block_file_parallel for d in disks)
        rows = build_rows(results, disk_ref, block_ref, params)
        print()
        print_disk(disks, disk_ref)
        print()
        print_table(rows)
        print_large_spread(results, params.large_reps)
        print_phases(results)
        client_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"\nbench client peak RSS {client_rss:,.0f} MiB; run time {time.perf_counter() - started:,.0f} s"
        )
        for f in failed:
            print(f"FAILED {f}")
        if args.json is not None:
            doc = {
                "params": asdict(params),
                "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
                "disk": [asdict(d) for d in disks],
                "disk_reference_mbps": disk_ref,
                "block_pattern_reference_mbps": block_ref,
                "servers": {k: asdict(v) for k, v in results.items()},
                "rows": [asdict(r) for r in rows],
                "failed": failed,
                "client_peak_rss_mib": client_rss,
            }
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
            print(f"JSON written to {args.json}")
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
