"""Thousands of change-feed long-polls on one davserver: commit-to-answer delay and PROPFIND under load.

Run ``python -m bench.longpoll [--waiters 5000] [--accounts 500] [--commits 300] [--quick] [--json FILE]``.

The issue's target: "5,000 concurrent long-polls on one node, p99 delay from commit to
response < 100 ms, and PROPFIND Depth 1 latency of a 100-entry folder while they wait within
1.5x of the idle figure". This bench only reports; nothing asserts a timing.

One durable ``davserver serve`` (8 cheroot threads, like the other benches) in a fresh data
folder, with A accounts for the waiters, one for the fan-out case and one for PROPFIND, all
made through the storage facade before the server starts (cheap argon2 parameters).

1. Idle: a 100-entry folder (100 small PUTs), then 200 sequential ``PROPFIND Depth: 1`` on one
   keep-alive connection (median, p95).
2. W long-polls (``GET /api/v1/changes/longpoll``) spread evenly over the A accounts, from one
   asyncio client on raw sockets (an ``asyncio.Protocol`` per connection, hand-written HTTP/1.1,
   Basic auth), each with the account's cursor from ``latest_cursor``. They count as parked once
   all W requests are written and the server's CPU has stayed below 0.1 core for a second (the
   time to get there is reported).
3. The same PROPFIND measurement while they wait; ratio to idle.
4. C commits, paced (20/s), round-robin over the accounts: a WebDAV PUT of a small file on a
   separate keep-alive connection; t_commit is when its response arrived (the commit is durable
   then). Every waiter records when its answer arrived; delay = t_answer - t_commit of the commit
   its cursor was waiting for (negative when the answer came before the PUT's response: counted
   and shown, not clamped). After each PUT the committing client takes a fresh cursor
   (``latest_cursor``) and the woken waiters re-poll with it, so W stays constant.
5. Fan-out: F more waiters on one extra account, one commit, all F delays: 3 rounds with the
   woken waiters' re-polls held until all F answered (the delivery alone), then 3 rounds where
   each re-polls at once (its reconnect competes with the answers still being written).

Reported: waiters parked and the time to park them, the server's RSS, threads and open files
with W waiters against idle, the delays (p50/p95/p99/max), PROPFIND idle against under load,
every error, timeout and missed wake, the CPU of the server, of this client and of other
processes. A response is time-stamped in the event loop's read callback when its last byte
arrives (not where the awaiting coroutine resumes, which would add the client's own queueing
when hundreds of answers land at once); the client still shares the 2 cores with the server,
so its CPU use is printed next to the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psutil

from bench import add_common_options
from bench.dav_vs_wsgidav import (
    CHEAP_HASHING,
    BenchError,
    Client,
    Monitor,
    ServerProcess,
    count_responses,
    davserver_process,
    wait_quiet,
)
from bench.storage_throughput import cpu_seconds, machine_busy_seconds, raise_interrupt
from davserver import config as config_mod
from storage.engine import Engine

MiB = 1 << 20
#: the issue's targets (printed next to the figures, never asserted)
TARGET_P99_MS = 100.0
TARGET_PROPFIND_RATIO = 1.5
#: the server counts as settled (every long-poll parked) below this CPU use for QUIET_SECONDS
QUIET_CORES = 0.1
QUIET_SECONDS = 1.0
#: connections being opened and written at once (the server's listen backlog is 1024)
CONNECT_CONCURRENCY = 256
#: a keep-alive connection idle this long is reopened (cheroot drops idle ones after 60 s)
IDLE_REOPEN = 20.0


@dataclass(frozen=True)
class Params:
    waiters: int = 5000
    accounts: int = 500
    commits: int = 300
    #: paced commits per second
    rate: float = 20.0
    fanout: int = 500
    fanout_rounds: int = 3
    propfind_entries: int = 100
    propfind_reps: int = 200
    threads: int = 8
    #: the long-polls' timeout parameter (seconds, 30..480): none should time out during a run
    timeout: int = 480


#: the fan-out rounds' two kinds (Commit.phase)
FAN_HELD, FAN_AT_ONCE = "fanout-held", "fanout"
PHASES = ("paced", FAN_HELD, FAN_AT_ONCE)

QUICK = Params(waiters=500, accounts=50, commits=50, fanout=200)


# -- HTTP/1.1 on asyncio streams ------------------------------------------------------------------


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def http_request(
    method: str, path: str, host: str, auth: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Authorization: {auth}"]
    if body or method in ("PUT", "POST", "PROPFIND", "MKCOL"):
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


Response = tuple[int, dict[str, str], bytes, float]


def parse_response(buf: bytearray, eof: bool) -> tuple[Response, int] | None:
    """A whole response at the start of ``buf`` and its length, or None while incomplete.

    The response is (status, headers with lower-case names, body, 0.0: the caller's time stamp).
    Bodies: Content-Length, chunked (no trailers), or up to EOF."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if eof:
            raise ValueError(f"connection closed inside the response head ({len(buf)} bytes)")
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    pos = end + 4
    if "content-length" in headers:
        stop = pos + int(headers["content-length"])
        if len(buf) < stop:
            if eof:
                raise ValueError("connection closed inside the response body")
            return None
        return (int(parts[1]), headers, bytes(buf[pos:stop]), 0.0), stop
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if len(buf) < eol + 2 + size + 2:
                break
            chunks.append(bytes(buf[eol + 2 : eol + 2 + size]))
            pos = eol + 2 + size + 2
            if size == 0:
                return (int(parts[1]), headers, b"".join(chunks), 0.0), pos
        if eof:
            raise ValueError("connection closed inside a chunked body")
        return None
    if not eof:
        return None
    return (int(parts[1]), headers, bytes(buf[pos:]), 0.0), len(buf)


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 on one connection, one request at a time, each response time-stamped when its
    last byte was read (in the loop's read callback, before any coroutine runs on it: with
    thousands of sockets ready at once, a stamp taken where the awaiting coroutine resumes
    would add the client's own queueing to the delays)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._eof = False
        self._pending: asyncio.Future[Response] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes) -> asyncio.Future[Response]:
        if self.closed or self.transport is None:
            raise ConnectionError("the connection is closed")
        assert self._pending is None, "one request at a time"
        self._pending = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._pending

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._complete()

    def eof_received(self) -> bool:
        self._eof = True
        self._complete()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self._eof = True
        self._complete()
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(exc or ConnectionError("closed before the response"))

    def _complete(self) -> None:
        fut = self._pending
        if fut is None or fut.done():
            return
        try:
            got = parse_response(self._buf, self._eof)
        except ValueError as exc:
            fut.set_exception(exc)
            return
        if got is None:
            return
        (status, headers, body, _), used = got
        del self._buf[:used]
        self._pending = None
        fut.set_result((status, headers, body, time.perf_counter()))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, port: int) -> HttpProtocol:
    _, proto = await asyncio.get_running_loop().create_connection(HttpProtocol, host, port)
    return proto


class KeepAlive:
    """A keep-alive connection whose requests may each carry other credentials."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._conn: HttpProtocol | None = None
        self._used = 0.0

    async def request(self, method: str, path: str, auth: str, body: bytes = b"") -> Response:
        if self._conn is None or self._conn.closed or time.monotonic() - self._used > IDLE_REOPEN:
            self.close()
            self._conn = await connect(self.host, self.port)
        response = await self._conn.send(http_request(method, path, f"{self.host}:{self.port}", auth, body))
        self._used = time.monotonic()
        if response[1].get("connection", "").lower() == "close":
            self.close()
        return response

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None


# -- the model ------------------------------------------------------------------------------------


@dataclass
class Commit:
    phase: str
    t_sent: float
    t_done: float | None = None
    #: when the fresh cursor after it arrived: its woken waiters re-poll from then on
    t_cursor: float | None = None


@dataclass(eq=False)
class Account:
    name: str
    auth: str
    cursor: str = ""
    #: commits made to this account before ``cursor`` was taken
    gen: int = 0
    commits: list[Commit] = field(default_factory=list)
    #: answers "changes" per cursor generation (the commit that woke them)
    woken: Counter[int] = field(default_factory=Counter)
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, cursor: str, gen: int) -> None:
        self.cursor, self.gen = cursor, gen
        self._event.set()
        self._event = asyncio.Event()

    async def cursor_after(self, gen: int) -> tuple[str, int]:
        while self.gen <= gen:
            await self._event.wait()
        return self.cursor, self.gen


@dataclass(eq=False)
class Waiter:
    account: Account
    phase: str
    gen: int = 0
    #: its long-poll is written and not answered yet
    parked: bool = False


@dataclass
class Wake:
    account: Account
    gen: int
    t_answer: float


@dataclass
class ProcSnapshot:
    rss_mib: float
    threads: int
    fds: int
    connections: int

    @classmethod
    def of(cls, pid: int) -> ProcSnapshot:
        p = psutil.Process(pid)
        try:
            conns = len(p.net_connections(kind="tcp"))
        except psutil.Error:
            conns = -1
        return cls(p.memory_info().rss / MiB, p.num_threads(), p.num_fds(), conns)


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between the closest ranks."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values_s: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "min": min(ms),
        "p50": pct(ms, 50),
        "p95": pct(ms, 95),
        "p99": pct(ms, 99),
        "max": max(ms),
        "negative": sum(1 for v in ms if v < 0),
    }


class Stalls:
    """This client's own stalls while it is measuring: the event loop's lateness (a 1 ms ticker)
    and garbage-collection pauses (none expected: the GC is off then), the largest of each since
    the last ``take()``."""

    def __init__(self) -> None:
        self.loop_lag = 0.0
        self.gc_pause = 0.0
        self._gc_start = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self._gc_start:
            self.gc_pause = max(self.gc_pause, time.perf_counter() - self._gc_start)

    async def _tick(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            self.loop_lag = max(self.loop_lag, time.perf_counter() - t - 0.001)

    @contextlib.asynccontextmanager
    async def watching(self) -> Any:
        """While measuring, this client's cyclic GC is off (its objects frozen): a 50 ms gen-2
        pass of the client would show up as delay of the server's answers."""
        gc.collect()
        gc.freeze()
        gc.disable()
        gc.callbacks.append(self._on_gc)
        ticker = asyncio.create_task(self._tick())
        try:
            yield self
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            gc.callbacks.remove(self._on_gc)
            gc.enable()
            gc.unfreeze()

    def take(self) -> dict[str, float]:
        out = {"loop_lag_ms": self.loop_lag * 1000, "gc_pause_ms": self.gc_pause * 1000}
        self.loop_lag = self.gc_pause = 0.0
        return out


# -- the bench ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, server: ServerProcess, params: Params, password: str, accounts: list[str]) -> None:
        u = urlsplit(server.url)
        self.server = server
        self.params = params
        self.host, self.port = u.hostname or "127.0.0.1", int(u.port or 80)
        self.password = password
        self.accounts = [Account(n, basic(n, password)) for n in accounts[:-1]]
        self.fan_account = Account(accounts[-1], basic(accounts[-1], password))
        self.waiters: list[Waiter] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.wakes: list[Wake] = []
        self.sent = 0
        self.timeouts = 0
        self.backoffs = 0
        self.early: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self.driver = KeepAlive(self.host, self.port)
        self.m: dict[str, Any] = {}

    def error(self, what: str) -> None:
        self.errors[what] += 1

    # -- waiters ----------------------------------------------------------------------------

    def longpoll_request(self, account: Account, cursor: str) -> bytes:
        path = f"/api/v1/changes/longpoll?cursor={quote(cursor)}&timeout={self.params.timeout}"
        return http_request("GET", path, f"{self.host}:{self.port}", account.auth)

    async def wait_loop(self, w: Waiter) -> None:
        """Long-poll again and again: record each answer, re-poll with a cursor after the commit."""
        account = w.account
        cursor, w.gen = account.cursor, account.gen
        while True:
            conn: HttpProtocol | None = None
            try:
                async with self.sem:
                    conn = await connect(self.host, self.port)
                    answer = conn.send(self.longpoll_request(account, cursor))
                self.sent += 1
                w.parked = True
                try:
                    status, _, body, t_answer = await answer
                finally:
                    w.parked = False
            except (OSError, ValueError) as exc:
                self.error(f"long-poll: {type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(1.0)
                continue
            finally:
                if conn is not None:
                    conn.close()
            if status != 200:
                self.error(f"long-poll: HTTP {status}: {body[:120]!r}")
                await asyncio.sleep(1.0)
                continue
            try:
                doc = json.loads(body)
                changed = doc["changes"]
            except (ValueError, KeyError) as exc:
                self.error(f"long-poll: bad answer {body[:120]!r} ({exc})")
                await asyncio.sleep(1.0)
                continue
            if "backoff" in doc:
                self.backoffs += 1
            if not changed:
                self.timeouts += 1  # re-poll with the same cursor
                continue
            self.wakes.append(Wake(account, w.gen, t_answer))
            account.woken[w.gen] += 1
            if w.gen >= len(account.commits):
                # answered "changes" before any commit it could be waiting for was even sent
                self.early[w.phase] += 1
            cursor, w.gen = await account.cursor_after(w.gen)

    def add_waiters(self, account: Account, count: int, phase: str) -> None:
        for _ in range(count):
            w = Waiter(account, phase)
            self.waiters.append(w)
            self.tasks.append(asyncio.create_task(self.wait_loop(w)))

    async def settle(self, sent_target: int, limit: float = 600.0) -> float:
        """Wait until ``sent_target`` long-polls are written and the server is idle.

        Returns the perf_counter time at which the server went quiet (the end of its work)."""
        proc = psutil.Process(self.server.pid)
        deadline = time.perf_counter() + limit

        def cpu() -> float:
            t = proc.cpu_times()
            return float(t.user + t.system)

        last_t, last_cpu = time.perf_counter(), cpu()
        quiet_since: float | None = None
        while True:
            await asyncio.sleep(0.25)
            if not self.server.alive():
                raise BenchError("the server exited")
            now, now_cpu = time.perf_counter(), cpu()
            cores = (now_cpu - last_cpu) / (now - last_t)
            if self.sent >= sent_target and cores < QUIET_CORES:
                quiet_since = quiet_since if quiet_since is not None else last_t
                if now - quiet_since >= QUIET_SECONDS:
                    return quiet_since
            else:
                quiet_since = None
            last_t, last_cpu = now, now_cpu
            if now > deadline:
                raise BenchError(f"the server did not settle in {limit:.0f} s ({self.sent} of {sent_target})")

    async def drain(self, phase: str, limit: float = 30.0) -> None:
        """Wait until every waiter of ``phase`` is parked again on a cursor after the last commit."""
        deadline = time.perf_counter() + limit
        mine = [w for w in self.waiters if w.phase == phase]
        while time.perf_counter() < deadline:
            if all(w.parked and w.gen == len(w.account.commits) for w in mine):
                return
            await asyncio.sleep(0.05)

    # -- the committing client ---------------------------------------------------------------

    async def take_cursor(self, account: Account) -> str:
        try:
            status, _, data, _ = await self.driver.request(
                "GET", "/api/v1/changes/latest_cursor", account.auth
            )
        except (OSError, ValueError) as exc:
            self.error(f"latest_cursor: {type(exc).__name__}: {exc}")
            raise BenchError(f"latest_cursor: {exc}") from exc
        if status != 200:
            self.error(f"latest_cursor: HTTP {status}")
            raise BenchError(f"latest_cursor for {account.name}: HTTP {status}: {data[:200]!r}")
        return str(json.loads(data)["cursor"])

    async def commit(self, account: Account, phase: str, n: int, hold: int = 0) -> None:
        """PUT a small file into ``account``; then give its woken waiters a fresh cursor, which
        lets them re-poll: at once, or (``hold``) once that many answered (at most 10 s later)."""
        c = Commit(phase, time.perf_counter())
        account.commits.append(c)
        try:
            status, _, data, c.t_done = await self.driver.request(
                "PUT", f"/dav/{phase}-{n:05d}.txt", account.auth, b"commit %d\n" % n
            )
        except (OSError, ValueError) as exc:
            self.error(f"commit PUT: {type(exc).__name__}: {exc}")
            raise BenchError(f"commit PUT: {exc}") from exc
        if status not in (201, 204):
            self.error(f"commit PUT: HTTP {status}")
            raise BenchError(f"commit PUT into {account.name}: HTTP {status}: {data[:200]!r}")
        cursor = await self.take_cursor(account)
        gen = len(account.commits) - 1
        deadline = time.perf_counter() + 10.0
        while account.woken[gen] < hold and time.perf_counter() < deadline:
            await asyncio.sleep(0.001)
        c.t_cursor = time.perf_counter()
        account.publish(cursor, len(account.commits))

    # -- PROPFIND ------------------------------------------------------------------------------

    def propfind(self, folder: str) -> list[float]:
        p = self.params
        c = Client(self.server.url, self.password)
        try:
            c.expect("PROPFIND", folder, (207,), None, {"Depth": "1"})  # connect, authenticate
            times = []
            for _ in range(p.propfind_reps):
                t0 = time.perf_counter()
                xml = c.expect("PROPFIND", folder, (207,), None, {"Depth": "1"})
                times.append(time.perf_counter() - t0)
                if (got := count_responses(xml)) != p.propfind_entries + 1:
                    raise BenchError(f"PROPFIND {folder}: {got} responses, expected {p.propfind_entries + 1}")
            return times
        finally:
            c.close()

    def populate(self, folder: str) -> None:
        c = Client(self.server.url, self.password)
        try:
            c.expect("MKCOL", folder, (201,))
            for i in range(self.params.propfind_entries):
                c.expect("PUT", f"{folder}e{i:03d}.txt", (201, 204), b"entry %d\n" % i)
        finally:
            c.close()

    # -- the run -------------------------------------------------------------------------------

    async def run(self, mon: Monitor) -> None:
        p, m, pid = self.params, self.m, self.server.pid
        folder = "/dav/list/"
        with mon.phase("populate"):
            await asyncio.to_thread(self.populate, folder)
        m["proc_idle"] = asdict(ProcSnapshot.of(pid))
        with mon.phase("propfind-idle"):
            m["propfind_idle"] = summary(await asyncio.to_thread(self.propfind, folder))
        print(f"  idle PROPFIND: median {m['propfind_idle']['p50']:.1f} ms", flush=True)

        for account in [*self.accounts, self.fan_account]:
            account.publish(await self.take_cursor(account), 0)

        # park W waiters
        per, extra = divmod(p.waiters, p.accounts)
        with mon.phase("establish"):
            t0 = time.perf_counter()
            for i, account in enumerate(self.accounts):
                self.add_waiters(account, per + (i < extra), "paced")
            while self.sent < p.waiters:
                await asyncio.sleep(0.01)
                if not self.server.alive():
                    raise BenchError("the server exited")
            m["establish_sent_s"] = time.perf_counter() - t0
            m["establish_s"] = await self.settle(p.waiters) - t0
        m["parked_client_side"] = sum(w.parked for w in self.waiters)
        m["answered_while_parking"] = len(self.wakes) + self.timeouts + sum(self.errors.values())
        m["proc_loaded"] = asdict(ProcSnapshot.of(pid))
        print(
            f"  {m['parked_client_side']:,} long-polls parked in {m['establish_s']:.1f} s "
            f"(requests written after {m['establish_sent_s']:.1f} s)",
            flush=True,
        )

        with mon.phase("propfind-loaded"):
            m["propfind_loaded"] = summary(await asyncio.to_thread(self.propfind, folder))
        print(f"  PROPFIND with them waiting: median {m['propfind_loaded']['p50']:.1f} ms", flush=True)

        # paced commits, round-robin
        stalls = Stalls()
        async with stalls.watching():
            await self.paced_and_fanout(mon, stalls)

    async def paced_and_fanout(self, mon: Monitor, stalls: Stalls) -> None:
        p, m, pid = self.params, self.m, self.server.pid
        stalls.take()
        with mon.phase("commits"):
            t0 = time.perf_counter()
            for i in range(p.commits):
                delay = t0 + i / p.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.commit(self.accounts[i % len(self.accounts)], "paced", i)
            m["commits_s"] = time.perf_counter() - t0
            await self.drain("paced")
        m["stalls_paced"] = stalls.take()
        print(f"  {p.commits} commits in {m['commits_s']:.1f} s", flush=True)

        # fan-out: F waiters on one account, one commit per round
        if p.fanout:
            with mon.phase("fanout-establish"):
                before = self.sent
                t0 = time.perf_counter()
                self.add_waiters(self.fan_account, p.fanout, "fanout")
                m["fanout_establish_s"] = await self.settle(before + p.fanout) - t0
            m["proc_fanout"] = asdict(ProcSnapshot.of(pid))
            # first with the re-polls held until every waiter answered (the delivery alone),
            # then with each woken waiter re-polling at once (the herd lands mid-delivery)
            for i, (kind, hold) in enumerate(((FAN_HELD, p.fanout), (FAN_AT_ONCE, 0))):
                for r in range(p.fanout_rounds):
                    if i or r:
                        await self.settle(self.sent)
                    stalls.take()
                    with mon.phase(kind):
                        await self.commit(self.fan_account, kind, r, hold)
                        await self.drain("fanout", limit=60.0)
                    m.setdefault("stalls_fanout", []).append(stalls.take())
            print(f"  fan-out: 2 x {p.fanout_rounds} rounds of {p.fanout} waiters done", flush=True)

        m["proc_end"] = asdict(ProcSnapshot.of(pid))
        m["missed"] = {
            phase: sum(
                1 for w in self.waiters if w.phase == phase and w.parked and w.gen < len(w.account.commits)
            )
            for phase in ("paced", "fanout")
        }

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                self.error(f"waiter crashed: {type(res).__name__}: {res}")
        self.driver.close()

    # -- figures -------------------------------------------------------------------------------

    def delays(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        by_phase: dict[str, list[float]] = {k: [] for k in PHASES}
        from_sent: dict[str, list[float]] = {k: [] for k in PHASES}
        fan_rounds: dict[int, list[float]] = {}
        #: per fan-out round: answers that arrived after its woken waiters began to re-poll
        fan_late: Counter[int] = Counter()
        for wake in self.wakes:
            commits = wake.account.commits
            if wake.gen >= len(commits):
                continue  # counted as early
            c = commits[wake.gen]
            assert c.t_done is not None
            by_phase[c.phase].append(wake.t_answer - c.t_done)
            from_sent[c.phase].append(wake.t_answer - c.t_sent)
            if wake.account is self.fan_account:
                fan_rounds.setdefault(wake.gen, []).append(wake.t_answer - c.t_done)
                fan_late[wake.gen] += c.t_cursor is not None and wake.t_answer > c.t_cursor
        for phase in by_phase:
            out[phase] = summary(by_phase[phase])
            out[f"{phase}_from_put_sent"] = summary(from_sent[phase])
        out["fanout_rounds"] = []
        stalls = self.m.get("stalls_fanout", [])
        for g, c in enumerate(self.fan_account.commits):
            assert c.t_done is not None
            out["fanout_rounds"].append(
                {
                    "kind": c.phase,
                    **summary(fan_rounds.get(g, [])),
                    "repoll_from_ms": ((c.t_cursor or c.t_done) - c.t_done) * 1000,
                    "answers_after_repoll": fan_late[g],
                    **(stalls[g] if g < len(stalls) else {}),
                }
            )
        puts = [
            c.t_done - c.t_sent
            for a in [*self.accounts, self.fan_account]
            for c in a.commits
            if c.t_done is not None
        ]
        out["put"] = summary(puts)
        return out


# -- report ---------------------------------------------------------------------------------------


def _row(label: str, s: dict[str, float], keys: Sequence[str] = ("p50", "p95", "p99", "max")) -> str:
    if not s.get("n"):
        return f"  {label:<44} (none)"
    cells = " ".join(f"{s[k]:>8.1f}" for k in keys)
    neg = f"  {int(s['negative'])} negative (min {s['min']:.1f})" if s.get("negative") else ""
    return f"  {label:<44} {cells}  n={int(s['n']):,}{neg}"


def report(doc: dict[str, Any]) -> None:
    p = doc["params"]
    m = doc["figures"]
    d = doc["delays"]
    w = p["waiters"]
    print()
    print(
        f"{w:,} long-polls over {p['accounts']} accounts; {p['commits']} commits at {p['rate']:g}/s; "
        f"fan-out {p['fanout']} x 2 x {p['fanout_rounds']}; {p['threads']} server threads"
    )
    print(
        f"parked: {m['parked_client_side']:,} of {w:,} in {m['establish_s']:.1f} s (all written after "
        f"{m['establish_sent_s']:.1f} s; {m['answered_while_parking']} answered while parking)"
    )
    idle, loaded, fan = m["proc_idle"], m["proc_loaded"], m.get("proc_fanout")
    print(f"\n{'server process':<30} {'idle':>10} {f'{w:,} parked':>14}" + (" +fan-out" if fan else ""))
    for key, label, fmt in (
        ("rss_mib", "RSS MiB", "{:,.0f}"),
        ("threads", "threads", "{:,}"),
        ("fds", "open files", "{:,}"),
        ("connections", "TCP connections", "{:,}"),
    ):
        cells = f"{fmt.format(idle[key]):>10} {fmt.format(loaded[key]):>14}"
        if fan:
            cells += f" {fmt.format(fan[key]):>9}"
        print(f"  {label:<28} {cells}")
    if loaded["rss_mib"] > idle["rss_mib"] and w:
        kib = (loaded["rss_mib"] - idle["rss_mib"]) * 1024 / w
        print(f"  ({kib:.1f} KiB of RSS per parked long-poll)")

    print(f"\n{'ms':<46} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}")
    print(_row("commit -> answer, paced commits", d["paced"]))
    print(_row("  (from the PUT's request, not its response)", d["paced_from_put_sent"]))
    for kind, label in (
        (FAN_HELD, "re-polls held"),
        (FAN_AT_ONCE, "re-polls at once"),
    ):
        print(_row(f"commit -> answer, fan-out {p['fanout']}, {label}", d[kind]))
        for i, r in enumerate(x for x in d["fanout_rounds"] if x["kind"] == kind):
            print(_row(f"  round {i + 1}", r))
            print(
                f"      re-polls from {r['repoll_from_ms']:.1f} ms on, {r['answers_after_repoll']} answers "
                f"after that; client stalls: loop {r.get('loop_lag_ms', 0):.1f} ms, "
                f"gc {r.get('gc_pause_ms', 0):.1f} ms"
            )
        print(_row("  (from the PUT's request, not its response)", d[f"{kind}_from_put_sent"]))
    print(_row("commit PUT (request to response)", d["put"]))
    if st := m.get("stalls_paced"):
        print(
            f"  client stalls during the paced commits: event loop late by up to {st['loop_lag_ms']:.1f} ms,"
            f" longest gc pause {st['gc_pause_ms']:.1f} ms"
        )
    p99 = d["paced"].get("p99")
    if p99 is not None:
        print(
            f"  target: p99 commit -> answer < {TARGET_P99_MS:.0f} ms: paced {p99:.1f} ms "
            f"({'met' if p99 < TARGET_P99_MS else 'NOT met'})"
            + "".join(
                f", fan-out {label} {d[kind]['p99']:.1f} ms"
                f" ({'met' if d[kind]['p99'] < TARGET_P99_MS else 'NOT met'})"
                for kind, label in ((FAN_HELD, "held"), (FAN_AT_ONCE, "at once"))
                if d[kind].get("n")
            )
        )

    pi, pl = m["propfind_idle"], m["propfind_loaded"]
    print(f"\nPROPFIND Depth 1, {p['propfind_entries']} entries, {p['propfind_reps']} sequential  (ms)")
    print(f"  {'':<28} {'median':>8} {'p95':>8} {'max':>8}")
    print(f"  {'idle':<28} {pi['p50']:>8.2f} {pi['p95']:>8.2f} {pi['max']:>8.2f}")
    print(f"  {f'{w:,} long-polls waiting':<28} {pl['p50']:>8.2f} {pl['p95']:>8.2f} {pl['max']:>8.2f}")
    ratio, ratio95 = pl["p50"] / pi["p50"], pl["p95"] / pi["p95"]
    print(f"  {'ratio':<28} {ratio:>7.2f}x {ratio95:>7.2f}x")
    print(
        f"  target: within {TARGET_PROPFIND_RATIO}x of idle (median): "
        f"{'met' if ratio <= TARGET_PROPFIND_RATIO else 'NOT met'}"
    )

    wakes = doc["wakes"]
    print(
        f"\nwakes: paced {wakes['paced']:,} (expected {wakes['paced_expected']:,}), "
        f"fan-out {wakes['fanout']:,} (expected {wakes['fanout_expected']:,})"
    )
    problems = doc["problems"]
    print(
        f"missed wakes (still waiting after a commit they should have seen): "
        f"paced {m['missed']['paced']}, fan-out {m['missed']['fanout']}"
    )
    print(f"'changes: true' before any commit was sent: {problems['early']}")
    print(f"timeouts ('changes: false'): {problems['timeouts']}; with a backoff hint: {problems['backoffs']}")
    errors = problems["errors"]
    print(f"errors: {sum(errors.values())}")
    for what, n in sorted(errors.items(), key=lambda kv: -kv[1]):
        print(f"  {n:>6} x {what}")

    print("\nper phase: server CPU / client CPU (cores busy), server peak RSS, seconds")
    for name, ph in doc["phases"].items():
        print(
            f"  {name:<18} {ph['server_cores']:.2f}/{ph['client_cores']:.2f}c "
            f"{ph['peak_rss_mib']:>6,.0f} MiB {ph['seconds']:>7.1f} s"
        )
    others = doc["others_cpu_cores"]
    print(
        f"run {doc['seconds']:,.0f} s; other processes' CPU meanwhile "
        + (f"{others:.2f} cores" if others is not None else "n/a")
        + f"; bench client peak RSS {doc['client_peak_rss_mib']:,.0f} MiB"
    )
    print(
        f"server log: {doc['server_log_lines']} lines, "
        f"{len(doc['server_log_problems'])} with WARNING/ERROR/CRITICAL/Traceback/Exception"
    )
    for line in doc["server_log_problems"]:
        print(f"  server log: {line}")


# -- main -----------------------------------------------------------------------------------------


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (the server, a child, inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def make_server(root: Path, params: Params, password: str) -> tuple[ServerProcess, list[str]]:
    data_dir = root / "data"
    server = davserver_process(data_dir, durable=True, threads=params.threads, password=password)
    server.log = deque(maxlen=200_000)  # keep the whole log: every problem line gets printed
    names = [f"lp{i:05d}" for i in range(params.accounts)] + ["fanout"]
    cfg = config_mod.load(data_dir=data_dir, env={})
    with Engine.open(cfg.storage_config(password_hashing=CHEAP_HASHING, auto_migrate=True)) as engine:
        for name in names:
            engine.accounts.create(name, password)
    return server, names


def run(params: Params, workdir: Path, doc: dict[str, Any]) -> None:
    """The whole bench; fills ``doc`` (partly, when it fails: the errors counted so far are in it)."""
    root = Path(tempfile.mkdtemp(prefix="davserver-longpoll-", dir=workdir))
    password = secrets.token_urlsafe(16)
    doc["params"] = asdict(params)
    try:
        server, names = make_server(root, params, password)
        server.start()
        t_start, busy0, own0 = time.perf_counter(), machine_busy_seconds(), cpu_seconds()
        server_cpu0 = _cpu(server.pid)
        bench: Bench | None = None
        try:
            with Monitor(server.pid, interval=0.1) as mon:

                async def main() -> None:
                    nonlocal bench
                    bench = Bench(server, params, password, names)
                    try:
                        await bench.run(mon)
                    finally:
                        await bench.stop()

                asyncio.run(main())
                doc["phases"] = mon.phase_table()
                doc["server_peak_rss_mib"] = mon.peak_rss / MiB
        finally:
            doc["seconds"] = time.perf_counter() - t_start
            busy1 = machine_busy_seconds()
            server_cpu = _cpu(server.pid) - server_cpu0 if server.alive() else None
            doc["others_cpu_cores"] = None
            if busy0 is not None and busy1 is not None and server_cpu is not None:
                own = cpu_seconds() - own0
                doc["others_cpu_cores"] = max(0.0, busy1 - busy0 - own - server_cpu) / doc["seconds"]
            alive = server.alive()
            server.stop()
            doc["server_log_lines"] = len(server.log)
            doc["server_log_problems"] = [
                line.rstrip()
                for line in server.log
                if any(k in line for k in ("WARNING", "ERROR", "CRITICAL", "Traceback", "Exception"))
            ]
            if bench is not None:
                doc["figures"] = bench.m
                doc["problems"] = {
                    "errors": dict(bench.errors),
                    "timeouts": bench.timeouts,
                    "backoffs": bench.backoffs,
                    "early": dict(bench.early),
                }
            if not alive:
                raise BenchError("the server exited during the run:\n" + "".join(list(server.log)[-30:]))
        assert bench is not None
        doc["delays"] = bench.delays()
        paced_counts = Counter(w.account.name for w in bench.waiters if w.phase == "paced")
        doc["wakes"] = {
            "paced": sum(1 for wk in bench.wakes if wk.account is not bench.fan_account),
            "paced_expected": sum(paced_counts[a.name] * len(a.commits) for a in bench.accounts),
            "fanout": sum(1 for wk in bench.wakes if wk.account is bench.fan_account),
            "fanout_expected": params.fanout * len(bench.fan_account.commits),
        }
        doc["client_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.longpoll", description=__doc__.split("\n")[0])
    ap.add_argument("--waiters", type=int, default=None, help="concurrent long-polls (default 5000)")
    ap.add_argument("--accounts", type=int, default=None, help="accounts they are spread over (default 500)")
    ap.add_argument("--commits", type=int, default=None, help="paced commits (default 300)")
    ap.add_argument("--rate", type=float, default=None, help="paced commits per second (default 20)")
    ap.add_argument("--fanout", type=int, default=None, help="waiters on the fan-out account (default 500)")
    ap.add_argument("--threads", type=int, default=None, help="server worker threads (default 8)")
    ap.add_argument("--quick", action="store_true", help="500 waiters, 50 accounts, 50 commits, fan-out 200")
    add_common_options(ap, wait_quiet="first")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = QUICK if args.quick else Params()
    overrides = {
        k: v
        for k, v in (
            ("waiters", args.waiters),
            ("accounts", args.accounts),
            ("commits", args.commits),
            ("rate", args.rate),
            ("fanout", args.fanout),
            ("threads", args.threads),
        )
        if v is not None
    }
    params = replace(params, **overrides)
    if params.accounts < 1 or params.waiters < params.accounts or params.rate <= 0 or params.fanout < 0:
        print("need waiters >= accounts >= 1, rate > 0 and fanout >= 0", file=sys.stderr)
        return 2
    soft, hard = raise_nofile()
    need = params.waiters + params.fanout + 256
    workdir = args.workdir or Path(tempfile.gettempdir())
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"bench.longpoll: {params.waiters:,} waiters, {params.accounts} accounts, {params.commits} commits; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; RLIMIT_NOFILE {soft}/{hard}",
        flush=True,
    )
    if soft < need:
        print(f"  warning: {need:,} sockets needed per process, RLIMIT_NOFILE is {soft:,}", flush=True)
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if quiet := wait_quiet(args.wait_quiet):
        print(quiet, flush=True)
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    doc: dict[str, Any] = {}
    try:
        run(params, workdir, doc)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        problems = doc.get("problems", {})
        for what, n in problems.get("errors", {}).items():
            print(f"  {n:>6} x {what}", file=sys.stderr)
        for line in doc.get("server_log_problems", []):
            print(f"  server log: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    doc["machine"] = {"cores": os.cpu_count(), "python": platform.python_version(), "nofile": [soft, hard]}
    report(doc)
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"JSON written to {args.json}")
    problems = doc["problems"]
    failed = (
        sum(problems["errors"].values())
        + sum(doc["figures"]["missed"].values())
        + sum(problems["early"].values())
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
