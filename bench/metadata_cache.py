"""The metadata cache on against off: PROPFIND and GET latency on one node, two deployments.

Run ``python -m bench.metadata_cache [--quick] [--size-mib N] [--threads N] [--json FILE] [--workdir DIR]``.

The metadata cache (``storage/cache.py``) keeps folder listings and their dead properties under the
account's change sequence (read from the database on every request) and block lists under their
version id. This bench measures what it saves, in one run, on two deployments:

1. ``scaleout``: PostgreSQL + Redis + S3 (SeaweedFS), started by ``tests/services.py`` as in
   ``bench.multinode`` (or given by ``DAVSERVER_TEST_*_URL``); the cache lives in Redis;
2. ``embedded``: the default data folder, SQLite + file blocks; the cache is in-process.

For each: a set-up node fills a 100-entry and a 2000-entry folder, a 4 KiB file and a large file
(default 256 MiB of random data, 32 MiB with ``--quick``; its block list has ~one row per MiB) and
stops. Then ONE node is started with ``metadata_cache = true``, measured, stopped, and started
again on the same data with ``metadata_cache = false`` and measured the same way:

* PROPFIND Depth 1 (allprop) of each folder: sequential requests on one keep-alive connection
  after one warm-up request, median and p95; every answer must list size + 1 responses;
* the same "right after a PUT into the folder": a PUT of ``touch.txt`` on a second connection,
  then the timed PROPFIND, which must list the PUT's new ETag. Every commit raises the account's
  change sequence, so with the cache on this PROPFIND is always a miss (the listing is read and
  stored again): it shows the cost of a miss;
* GET of the 4 KiB file (content compared), median and p95;
* GET of the large file: time to the first body byte and the full time (size and SHA-256 of the
  body checked), after a HEAD as warm-up (it loads the block list, as a GET does).

With Redis, the cache's hit and miss counters of all nodes are read with ``davserver stats``
before and after the "on" phase and after the "off" phase (which must add nothing).

Every failed request or wrong answer is counted (the run goes on) and makes the exit status 1.
Nothing asserts a timing. The CPU of each process per phase is printed (nodes, services, this
client, everything else), so a busy machine shows.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import itertools
import json
import math
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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import add_common_options
from bench.dav_vs_wsgidav import (
    CHEAP_HASHING,
    REPO,
    USER,
    BenchError,
    Client,
    ServerProcess,
    count_responses,
    wait_quiet,
)
from bench.multinode import (
    REQUEST_ERRORS,
    Bench,
    Deployment,
    ErrorLog,
    Watch,
    _check_metadata,
    _put_etag,
    _redact,
    create_database,
    drop_database,
    make_source,
    print_cpu,
    print_table,
    remove_s3_prefix,
    restore_environ,
    s3_url_for_run,
    start_services,
)
from bench.multinode import Params as MultinodeParams
from bench.storage_throughput import cpu_seconds, machine_busy_seconds, raise_interrupt
from davserver import config as config_mod
from storage.engine import Engine
from storage.keys import MasterKey
from tests import services

MiB = 1 << 20
MB = 1_000_000
PHASES = ("off", "on")
_STATS_LINE = re.compile(r"^metadata cache\s+(\d+) hits, (\d+) misses", re.MULTILINE)


# -- parameters -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    size_mib: int = 256
    threads: int = 8
    propfind_sizes: tuple[int, ...] = (100, 2000)
    #: timed PROPFINDs per folder (same order as propfind_sizes), plain and right after a PUT
    propfind_reps: tuple[int, ...] = (101, 41)
    small_size: int = 4096
    small_reps: int = 301
    large_reps: int = 5

    @property
    def size(self) -> int:
        return self.size_mib * MiB


QUICK = Params(size_mib=32, propfind_reps=(31, 11), small_reps=101, large_reps=3)

DEPLOYMENTS = {
    "scaleout": "PostgreSQL + Redis + S3, cache in Redis",
    "embedded": "SQLite + file blocks (default data folder), cache in-process",
}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


# -- one deployment -------------------------------------------------------------------------------


@dataclass
class Setup:
    """A deployment and what this bench needs to run its node with the cache on or off."""

    dep: Deployment
    #: prefix of the deployment's Redis keys (a fresh one per run), None without Redis
    namespace: str | None
    watch: Watch
    errors: ErrorLog = field(default_factory=ErrorLog)
    m: dict[str, float] = field(default_factory=dict)
    #: davserver stats counters: label -> (hits, misses)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    def write_config(self, folder: Path, cache: bool) -> None:
        lines = [f"threads = {self.dep.threads}", f"metadata_cache = {'true' if cache else 'false'}"]
        if self.namespace:
            lines.append(f'redis_namespace = "{self.namespace}"')
        (folder / config_mod.CONFIG_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, name: str, cache: bool) -> ServerProcess:
        """The deployment's node (always the data folder ``node``), with the cache on or off."""
        node = self.dep.node("node")  # writes a config without the cache setting: replaced below
        node.name = name
        self.write_config(self.dep.root / "node", cache)
        node.start()
        self.watch.add(node)
        return node

    def stop(self, node: ServerProcess) -> None:
        if not node.alive():
            self.failed.append(f"{self.dep.label} {node.name} exited during the run")
        node.stop()
        self.watch.drop(node.name)

    def cache_counters(self, label: str) -> None:
        """``davserver stats`` (run as the nodes are: their env, a config with the cache on)."""
        if self.namespace is None:
            return
        folder = self.dep.node_dir("stats")
        self.write_config(folder, cache=True)
        result = subprocess.run(
            [sys.executable, "-m", "davserver.cli", "stats", "--data-dir", str(folder)],
            cwd=REPO,
            env=self.dep.child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        found = _STATS_LINE.search(result.stdout)
        if result.returncode != 0 or found is None:
            self.failed.append(
                f"davserver stats ({label}) exit {result.returncode}, no cache line:\n"
                f"{result.stdout}{result.stderr}"
            )
            return
        self.counters[label] = (int(found.group(1)), int(found.group(2)))


def scaleout_setup(
    root: Path, svcs: dict[str, services.Service], threads: int, password: str, run_id: str, watch: Watch
) -> tuple[Setup, str, str]:
    """PostgreSQL database + S3 prefix + Redis (own namespace); migrated, account created.

    Returns the set-up, the database URL and the S3 URL (for the clean-up).
    """
    key_file = root / "master.key"
    MasterKey.generate().save(key_file)
    db_url = create_database(svcs["postgres"].url, "cache")
    s3_url = s3_url_for_run(svcs["s3"].url, run_id)
    dep = Deployment(
        "scaleout",
        {
            "DAVSERVER_DATABASE_URL": db_url,
            "DAVSERVER_BLOCKS_URL": s3_url,
            "DAVSERVER_REDIS_URL": svcs["redis"].url,
            "DAVSERVER_MASTER_KEY_FILE": str(key_file),
        },
        root / "scaleout",
        threads,
    )
    setup = Setup(dep, f"bench-cache-{run_id}", watch)
    setup.m["migrate_s"] = dep.migrate()
    dep.create_account(password)
    return setup, db_url, s3_url


def embedded_setup(root: Path, threads: int, password: str, watch: Watch) -> Setup:
    """The default data folder (SQLite, file blocks, master key in it), the account created."""
    dep = Deployment("embedded", {}, root / "embedded", threads)
    setup = Setup(dep, None, watch)
    folder = dep.node_dir("node")
    MasterKey.generate().save(folder / config_mod.MASTER_KEY_NAME)
    setup.write_config(folder, cache=True)
    cfg = config_mod.load(data_dir=folder, env={})
    with Engine.open(cfg.storage_config(password_hashing=CHEAP_HASHING, auto_migrate=True)) as engine:
        engine.accounts.create(USER, password)
    return setup


# -- the workloads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    folders: dict[int, str]
    small_path: str
    small: bytes
    large_path: str
    large_source: Path
    large_sha: str


def populate(s: Setup, p: Params, password: str, source: Path, sha: str) -> Data:
    """With a set-up node (cache on): the folders, the small and the large file; then stopped."""
    node = s.start("setup", cache=True)
    try:
        helper = Bench(MultinodeParams(threads=p.threads), password, s.watch, s.errors)
        helper.warm_up(node.url)
        folders = {size: helper.populate(node.url, size) for size in p.propfind_sizes}
        s.m.update(helper.m)  # populate_<size>_ops
        small = os.urandom(p.small_size)
        with contextlib.closing(Client(node.url, password)) as c:
            try:
                c.expect("PUT", "/dav/small.bin", (201, 204), small)
                with s.watch.phase("large PUT (set-up)"):
                    start = time.perf_counter()
                    c.put_file("/dav/large.bin", source, p.size)
                    s.m["large_put_mbps"] = p.size / (time.perf_counter() - start) / MB
                _check_metadata(c, "/large.bin", p.size, sha)
            except REQUEST_ERRORS as exc:
                s.errors.add("set-up", exc)
    finally:
        s.stop(node)
    return Data(folders, "/dav/small.bin", small, "/dav/large.bin", source, sha)


def timed(
    s: Setup,
    workload: str,
    reps: int,
    fn: Callable[[], float],
    on_error: Callable[[], None],
    warm_up: Callable[[], object] | None = None,
) -> list[float]:
    """``warm_up`` (default ``fn``) once, then ``fn`` ``reps`` times: the seconds it returned.

    A failure is counted in ``s.errors`` under ``workload`` and ``on_error`` runs (the run goes on).
    """
    out: list[float] = []
    for i in range(reps + 1):
        try:
            if i == 0:
                (warm_up or fn)()
            else:
                out.append(fn())
        except REQUEST_ERRORS as exc:
            s.errors.add(workload, exc)
            on_error()
    return out


def propfind_once(c: Client, folder: str, size: int, etag: str | None = None) -> float:
    start = time.perf_counter()
    status, xml = c.request("PROPFIND", folder, None, {"Depth": "1"})
    elapsed = time.perf_counter() - start
    if status != 207:
        raise BenchError(f"PROPFIND {folder}: HTTP {status}: {xml[:300]!r}")
    if (got := count_responses(xml)) != size + 1:
        raise BenchError(f"PROPFIND {folder}: {got} responses, expected {size + 1}")
    if etag is not None and etag.strip('"').encode() not in xml:
        raise BenchError(f"PROPFIND {folder} after a PUT: the new ETag {etag} is missing")
    return elapsed


def get_small(c: Client, path: str, expected: bytes) -> float:
    start = time.perf_counter()
    status, data = c.request("GET", path)
    elapsed = time.perf_counter() - start
    if status != 200 or data != expected:
        raise BenchError(
            f"GET {path}: HTTP {status}, {len(data)} bytes (expected 200, {len(expected)} bytes)"
        )
    return elapsed


def get_large(c: Client, path: str, size: int, sha: str) -> tuple[float, float]:
    """(time to the first body byte, full time); size and SHA-256 of the body checked."""
    start = time.perf_counter()
    c.conn.putrequest("GET", path, skip_accept_encoding=True)
    c.conn.putheader("Authorization", c.auth)
    c.conn.endheaders()
    try:
        resp = c.conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"GET {path}: HTTP {resp.status}: {resp.read()[:300]!r}")
        if resp.getheader("Content-Length") != str(size):
            raise BenchError(
                f"GET {path}: Content-Length {resp.getheader('Content-Length')}, expected {size}"
            )
        first = resp.read1(MiB)
        ttfb = time.perf_counter() - start
        h = hashlib.sha256(first)
        got = len(first)
        buf = bytearray(MiB)
        view = memoryview(buf)
        while n := resp.readinto(view):
            h.update(view[:n])
            got += n
        full = time.perf_counter() - start
    except BaseException:
        c.close()
        raise
    if got != size or h.hexdigest() != sha:
        raise BenchError(
            f"GET {path}: {got} bytes, SHA-256 {h.hexdigest()[:16]}...; expected {size}, {sha[:16]}..."
        )
    return ttfb, full


def measure(s: Setup, p: Params, password: str, url: str, phase: str, data: Data) -> None:
    """One node's figures (``phase``: "on" or "off"), into ``s.m`` as ``<phase>_<metric>``."""
    m = s.m
    reader, writer = Client(url, password), Client(url, password)
    try:
        for c in (reader, writer):
            try:
                c.expect("OPTIONS", "/dav/", (200,))
            except REQUEST_ERRORS as exc:
                s.errors.add(f"{phase}:connect", exc)
                c.close()
        counter = itertools.count()  # the content of each PUT of touch.txt
        for size, reps in zip(p.propfind_sizes, p.propfind_reps, strict=True):
            folder = data.folders[size]
            with s.watch.phase(f"cache {phase}: PROPFIND {size}"):
                times = timed(
                    s,
                    f"{phase}:propfind-{size}",
                    reps,
                    functools.partial(propfind_once, reader, folder, size),
                    reader.close,
                )
            _summary(m, f"{phase}_propfind_{size}", times)

            def after_put(folder: str = folder, size: int = size) -> float:
                etag = _put_etag(writer, f"{folder}touch.txt", b"%d\n" % next(counter))
                return propfind_once(reader, folder, size, etag)

            def close_both() -> None:
                writer.close()
                reader.close()

            with s.watch.phase(f"cache {phase}: PUT + PROPFIND {size}"):
                times = timed(s, f"{phase}:propfind-{size}-after-put", reps, after_put, close_both)
            _summary(m, f"{phase}_propfind_{size}_after_put", times)

        with s.watch.phase(f"cache {phase}: GET {p.small_size // 1024} KiB"):
            times = timed(
                s,
                f"{phase}:get-small",
                p.small_reps,
                lambda: get_small(reader, data.small_path, data.small),
                reader.close,
            )
        _summary(m, f"{phase}_get_small", times)

        ttfbs: list[float] = []
        fulls: list[float] = []

        def large() -> float:
            ttfb, full = get_large(reader, data.large_path, p.size, data.large_sha)
            ttfbs.append(ttfb)
            fulls.append(full)
            return full

        with s.watch.phase(f"cache {phase}: GET {p.size_mib} MiB"):
            # the warm-up is a HEAD: it loads the block list as a GET does
            timed(
                s,
                f"{phase}:get-large",
                p.large_reps,
                large,
                reader.close,
                lambda: reader.expect("HEAD", data.large_path, (200,)),
            )
        _summary(m, f"{phase}_get_large_ttfb", ttfbs)
        _summary(m, f"{phase}_get_large_full", fulls)
    finally:
        reader.close()
        writer.close()


def _summary(m: dict[str, float], key: str, times: Sequence[float]) -> None:
    if not times:
        return
    m[f"{key}_median_ms"] = statistics.median(times) * 1000
    m[f"{key}_p95_ms"] = percentile(times, 0.95) * 1000
    m[f"{key}_max_ms"] = max(times) * 1000
    m[f"{key}_n"] = len(times)


def run_deployment(s: Setup, p: Params, password: str, data: Data, wait: float) -> None:
    """Cache on, then off, on the same data; the cache counters around the "on" phase."""
    for phase in ("on", "off"):
        if wait > 0:
            print(f"  {wait_quiet(wait)}", flush=True)
        if phase == "on":
            s.cache_counters("before on")
        node = s.start(f"cache-{phase}", cache=phase == "on")
        print(f"  cache {phase}: node {node.url} ...", flush=True)
        try:
            measure(s, p, password, node.url, phase, data)
        finally:
            s.stop(node)
        s.cache_counters(f"after {phase}")


# -- report ---------------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.2f}" if x < 10 else f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"


def build_rows(p: Params, s: Setup) -> list[list[str]]:
    m = s.m
    rows: list[list[str]] = []

    def add(label: str, key: str, stat: str, workload: str | None) -> None:
        off, on = m.get(f"off_{key}_{stat}_ms"), m.get(f"on_{key}_{stat}_ms")
        ratio = f"{on / off:.2f}x" if off and on else "-"
        errs = "" if workload is None else str(sum(s.errors.count(f"{ph}:{workload}") for ph in PHASES))
        rows.append([label, stat, _ms(off), _ms(on), ratio, errs])

    for size in p.propfind_sizes:
        add(f"PROPFIND depth 1, {size} entries", f"propfind_{size}", "median", f"propfind-{size}")
        add("", f"propfind_{size}", "p95", None)
        add(
            "  right after a PUT into it",
            f"propfind_{size}_after_put",
            "median",
            f"propfind-{size}-after-put",
        )
        add("", f"propfind_{size}_after_put", "p95", None)
    add(f"GET {p.small_size // 1024} KiB", "get_small", "median", "get-small")
    add("", "get_small", "p95", None)
    add(f"GET {p.size_mib:,} MiB, first byte", "get_large_ttfb", "median", "get-large")
    add("", "get_large_ttfb", "max", None)
    add(f"GET {p.size_mib:,} MiB, full (SHA-256 checked)", "get_large_full", "median", None)
    add("", "get_large_full", "max", None)
    return rows


def expected_counters(p: Params) -> tuple[int, int]:
    """The hits and misses the "on" phase makes when no request fails (warm-ups included)."""
    propfinds = sum(2 * (n + 1) for n in p.propfind_reps)  # plain and after a PUT
    lookups = 2 * propfinds + (p.small_reps + 1) + (p.large_reps + 1)
    misses = 2 * len(p.propfind_sizes) + 2 * sum(n + 1 for n in p.propfind_reps) + 2
    return lookups - misses, misses


def print_deployment(p: Params, s: Setup, shown: Sequence[str]) -> None:
    print(f"\n== {s.dep.label}: {DEPLOYMENTS[s.dep.label]} ==")
    print_table(["metric (ms)", "", "cache off", "cache on", "on/off", "errors"], build_rows(p, s))
    print("  on/off: time with the cache / time without (< 1: the cache made it faster)")
    reps = ", ".join(
        f"{n} x {size} entries" for size, n in zip(p.propfind_sizes, p.propfind_reps, strict=True)
    )
    print(
        f"  timed requests per phase, each after one warm-up: PROPFIND {reps} (and as many PUT + PROPFIND);"
        f" GET {p.small_reps} x {p.small_size // 1024} KiB, {p.large_reps} x {p.size_mib:,} MiB"
    )
    setup_ops = [
        f"{k.removeprefix('populate_').removesuffix('_ops')} entries {v:,.0f}/s"
        for k, v in s.m.items()
        if k.startswith("populate_")
    ]
    if setup_ops:
        print(
            f"  set-up: PUTs filling the folders (4 clients) {', '.join(setup_ops)}; large PUT "
            f"{s.m.get('large_put_mbps', 0):,.0f} MB/s"
        )
    if s.namespace is not None:
        c = s.counters
        line = "  davserver stats, metadata cache (all nodes, Redis): "
        line += "; ".join(f"{k} {h:,} hits, {mi:,} misses" for k, (h, mi) in c.items())
        print(line)
        if all(k in c for k in ("before on", "after on", "after off")):
            on_h = c["after on"][0] - c["before on"][0]
            on_m = c["after on"][1] - c["before on"][1]
            off_h = c["after off"][0] - c["after on"][0]
            off_m = c["after off"][1] - c["after on"][1]
            s.m.update(on_hits=on_h, on_misses=on_m, off_hits=off_h, off_misses=off_m)
            print(
                f"    cache on phase: +{on_h:,} hits, +{on_m:,} misses; "
                f"cache off phase: +{off_h:,} hits, +{off_m:,} misses"
            )
            hits, misses = expected_counters(p)
            print(
                f"    expected in the on phase: +{hits:,} hits, +{misses:,} misses (a PROPFIND looks up "
                "the listing and the properties, a GET or HEAD the block list; misses: each folder's "
                "first PROPFIND, every PROPFIND after a PUT, each file's first read)"
            )
            if off_h or off_m:
                s.failed.append(f"{s.dep.label}: the cache-off phase changed the cache counters")
            if on_h == 0:
                s.failed.append(f"{s.dep.label}: the cache-on phase made no cache hit")
    else:
        print("  (in-process cache: its counters are not visible from outside the node)")
    print_cpu(s.watch, shown)
    for name, rss in s.watch.peak_rss.items():
        print(f"  {name}: peak RSS {rss / MiB:,.0f} MiB")
    for node in s.dep.nodes:
        for line in node.problems()[:10]:
            print(f"  {node.name} log: {line}")
    print(f"  errors: {s.errors.total}")
    for line in s.errors.samples:
        print(f"    {line}")


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.metadata_cache", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="32 MiB large file, fewer repetitions")
    ap.add_argument("--size-mib", type=int, default=None, help="large file size in MiB (default 256)")
    ap.add_argument("--threads", type=int, default=8, help="cheroot worker threads of the node (default 8)")
    add_common_options(ap, wait_quiet="before each measured phase")
    args = ap.parse_args(argv)
    if args.size_mib is not None and args.size_mib < 1:
        ap.error("--size-mib must be at least 1")
    return args


def _remove_redis_namespace(url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        names = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if names:
            client.delete(*names)
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = QUICK if args.quick else Params()
    params = replace(params, threads=args.threads)
    if args.size_mib is not None:
        params = replace(params, size_mib=args.size_mib)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    parent = args.workdir or Path(tempfile.gettempdir())
    need = params.size * 3 + 512 * MiB
    if shutil.disk_usage(parent).free < need:
        print(f"not enough free disk space in {parent}: need {need / MiB:,.0f} MiB", file=sys.stderr)
        return 2

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    root = Path(tempfile.mkdtemp(prefix="dav-cache-", dir=parent))
    run_id = secrets.token_hex(4)
    password = secrets.token_urlsafe(16)
    started = time.perf_counter()
    svcs: dict[str, services.Service] = {}
    setups: list[Setup] = []
    db_url = s3_url = ""
    saved_env: dict[str, str | None] = {}
    failed: list[str] = []
    busy0, own0 = machine_busy_seconds(), cpu_seconds()
    try:
        print(
            f"davserver metadata cache, on against off: one node ({params.threads} threads), "
            f"{os.cpu_count()} cores, Python {platform.python_version()}; bench folder {root}",
            flush=True,
        )
        print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}; services:", flush=True)
        start_services(svcs, saved_env)
        service_pids = {
            kind: svc.pid if isinstance(svc, services.ServiceProcess) else None for kind, svc in svcs.items()
        }
        source = root / "large.bin"
        sha = make_source(source, params.size)

        scaleout, db_url, s3_url = scaleout_setup(
            root, svcs, params.threads, password, run_id, Watch(dict(service_pids))
        )
        setups.append(scaleout)
        embedded = embedded_setup(root, params.threads, password, Watch(dict(service_pids)))
        setups.append(embedded)
        for s in setups:
            print(
                f"({s.dep.label}) {DEPLOYMENTS[s.dep.label]}: set-up node fills the folders ...", flush=True
            )
            data = populate(s, params, password, source, sha)
            run_deployment(s, params, password, data, args.wait_quiet)
    except BenchError as exc:
        failed.append(str(exc))
        print(f"FAILED: {exc}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        failed.append("interrupted")
    finally:
        for s in setups:
            for node in s.dep.nodes:
                node.stop()
            s.watch.close()
        if db_url and not isinstance(svcs.get("postgres"), services.ServiceProcess):
            try:
                drop_database(db_url)
            except Exception as exc:
                print(f"could not drop database {_redact(db_url)}: {exc}", file=sys.stderr)
        if s3_url and svcs.get("s3") is not None and not isinstance(svcs["s3"], services.ServiceProcess):
            try:
                remove_s3_prefix(s3_url)
            except Exception as exc:
                print(f"could not empty {s3_url}: {exc}", file=sys.stderr)
        redis_svc = svcs.get("redis")
        if setups and setups[0].namespace and isinstance(redis_svc, services.ExternalService):
            try:
                _remove_redis_namespace(redis_svc.url, setups[0].namespace)
            except Exception as exc:
                print(f"could not remove the Redis keys {setups[0].namespace}:*: {exc}", file=sys.stderr)
        for svc in svcs.values():
            svc.close()
        restore_environ(saved_env)
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)

    if "interrupted" in failed:
        return 130
    seconds = time.perf_counter() - started
    busy1 = machine_busy_seconds()
    shown = [k for k in ("postgres", "redis", "s3") if isinstance(svcs.get(k), services.ServiceProcess)]
    for s in setups:
        print_deployment(params, s, shown)
        failed += s.failed
    others = None
    if busy0 is not None and busy1 is not None:
        others = max(0.0, busy1 - busy0 - (cpu_seconds() - own0)) / seconds
    print(
        f"\nrun time {seconds:,.0f} s; CPU of every other process (nodes and services included) "
        f"{'n/a' if others is None else f'{others:.2f} cores'}; bench client peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"
    )
    print("note: PostgreSQL from tests/services.py runs with fsync=off; the nodes commit durably.")
    total_errors = sum(s.errors.total for s in setups)
    print(f"errors: {total_errors}")
    for f in failed:
        print(f"FAILED {f}")
    if args.json is not None:
        doc: dict[str, Any] = {
            "params": asdict(params),
            "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
            "services": {
                k: "external" if isinstance(v, services.ExternalService) else "started"
                for k, v in svcs.items()
            },
            "deployments": {
                s.dep.label: {
                    "what": DEPLOYMENTS[s.dep.label],
                    "metrics": s.m,
                    "cache_counters": {k: {"hits": h, "misses": mi} for k, (h, mi) in s.counters.items()},
                    "cpu_seconds_per_phase": s.watch.cpu,
                    "errors": {
                        "total": s.errors.total,
                        "by_workload": s.errors.counts,
                        "samples": s.errors.samples,
                    },
                }
                for s in setups
            },
            "failed": failed,
            "seconds": seconds,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"JSON written to {args.json}")
    return 1 if failed or total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
