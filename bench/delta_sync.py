"""Delta sync: what davsync, rsync and a plain WebDAV PUT send for a small change to a big file.

Run ``python -m bench.delta_sync [--size-mib N] [--json FILE] [--workdir DIR] [--wait-quiet S]``.

One file of ``--size-mib`` (default 100) MiB of random (incompressible) bytes goes through three
states: the initial file, the same file with **1 byte edited in the middle**, then that file with
**1 byte inserted at the start**. For each state, in turn:

1. ``davsync`` device A (a real ``python -m sync_ext.client.cli ... sync DIR --once --stats F``
   process, logged in with ``login URL --user U --password-stdin --device D``) uploads the change;
   device B, a second folder of the same account, downloads it (it finds unchanged blocks in its
   own copy, so only new blocks should come down). Figures from ``--stats``: bytes sent and
   received as davsync counts them on the HTTP layer (request and status lines, headers, bodies),
   blocks sent or received; seconds are the whole command's wall time (interpreter start included);
2. ``rsync -a --no-whole-file --stats`` pushes the same state from a source folder to an
   ``rsync --daemon`` on 127.0.0.1 (a module with ``auth users``), a real client and server over a
   TCP socket, as davsync and davserver are. Figures: "Total bytes sent", "Total bytes received"
   and "Literal data" from ``--stats``, and the command's wall time. Without rsync (Debian package
   ``rsync``) these rows are skipped, with a message;
3. a plain WebDAV ``PUT`` of the whole file (Basic auth, one connection, 1 MiB writes) to a second
   account over the previous state of the file, the way a WebDAV client saves an edited file:
   bytes = request line, headers and body as written to the socket, plus the response. It is the
   reference of the "vs PUT" column (the PUT of the same state).

Every result is checked: the server's SHA-256 of the file (``/api/v1/files/metadata``) and the
receiving folders' copies must equal the source's. The davsync block sizes (``GET /api/v1/config``)
are printed, so "a 1-byte change costs at most a few blocks plus the block list" can be checked.
The server is a real ``davserver serve`` (durable commits, the default) on 127.0.0.1 in a fresh
data folder. Nothing here asserts a timing; the exit status is 1 if a transfer failed or was wrong.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import add_common_options
from bench.dav_vs_wsgidav import (
    CHEAP_HASHING,
    REPO,
    USER,
    BenchError,
    ServerProcess,
    davserver_process,
    wait_quiet,
)
from bench.storage_throughput import machine_busy_seconds, raise_interrupt
from davserver import config as config_mod
from storage.engine import Engine

MiB = 1 << 20
NAME = "big.bin"
#: the account the WebDAV PUTs go to, so they never show up in the davsync devices' folders
PUT_USER = "bench-put"
STATES = ("initial", "1-byte edit", "1-byte insert")
_STAT = re.compile(r"^(Total bytes sent|Total bytes received|Literal data|Matched data):\s*([\d,.]+)", re.M)


@dataclass
class Row:
    state: str
    transfer: str
    sent: int
    received: int
    seconds: float
    blocks: int | None = None
    #: blocks in the file's manifest on the server, and the bytes of those new in this state
    file_blocks: int | None = None
    new_block_bytes: int | None = None
    literal: int | None = None

    @property
    def wire(self) -> int:
        return self.sent + self.received


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def child_env(**extra: str) -> dict[str, str]:
    """The environment without variables that would redirect davserver, davsync or rsync."""
    drop = ("DAVSERVER_", "DAVSYNC_", "RSYNC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "LC_ALL": "C", **extra}


# -- the file and its changes ---------------------------------------------------------------------


def make_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for off in range(0, size, MiB):
            f.write(os.urandom(min(MiB, size - off)))


def _mtime_moved(path: Path, before_ns: int) -> None:
    """Make sure the mtime changed: both davsync and rsync skip a file whose size and mtime match."""
    st = path.stat()
    if st.st_mtime_ns == before_ns:
        os.utime(path, ns=(st.st_atime_ns, before_ns + 1_000_000_000))


def edit_middle(path: Path) -> None:
    before = path.stat()
    with path.open("r+b") as f:
        f.seek(before.st_size // 2)
        byte = f.read(1)[0]
        f.seek(before.st_size // 2)
        f.write(bytes([byte ^ 0xFF]))
    _mtime_moved(path, before.st_mtime_ns)


def insert_start(path: Path) -> None:
    """Write the file anew with one more byte in front (as an editor saves: temp file, rename)."""
    before = path.stat()
    tmp = path.with_name(f".~bench-{path.name}")
    with path.open("rb") as src, tmp.open("wb") as dst:
        dst.write(b"!")
        shutil.copyfileobj(src, dst, MiB)
    os.replace(tmp, path)
    _mtime_moved(path, before.st_mtime_ns)


EDITS: dict[str, Callable[[Path], None] | None] = {
    "initial": None,
    "1-byte edit": edit_middle,
    "1-byte insert": insert_start,
}


# -- the server: accounts, API reads, WebDAV PUT --------------------------------------------------


def add_account(data_dir: Path, name: str, password: str) -> None:
    """A second account, made through the storage facade before the server starts."""
    cfg = config_mod.load(data_dir=data_dir, env={})
    with Engine.open(cfg.storage_config(password_hashing=CHEAP_HASHING, auto_migrate=True)) as engine:
        engine.accounts.create(name, password)


class CountingConnection(http.client.HTTPConnection):
    """Counts every byte written to the socket (request line, headers, body)."""

    sent = 0

    def send(self, data: Any) -> None:
        self.sent += len(data)
        super().send(data)


def _connect(url: str) -> CountingConnection:
    u = urlsplit(url)
    return CountingConnection(u.hostname or "127.0.0.1", u.port, timeout=600)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def api_get(url: str, user: str, password: str, path: str) -> dict[str, Any]:
    conn = _connect(url)
    try:
        conn.request("GET", f"/api/v1/{path}", headers={"Authorization": _basic(user, password)})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise BenchError(f"GET /api/v1/{path} answered {r.status}: {body[:300]!r}")
        doc: dict[str, Any] = json.loads(body)
        return doc
    finally:
        conn.close()


def _response_bytes(r: http.client.HTTPResponse, body: int) -> int:
    """Status line, headers and body, counted the way davsync's Traffic counts them."""
    return 15 + len(r.reason) + sum(len(k) + len(v) + 4 for k, v in r.getheaders()) + 2 + body


def put_file(url: str, password: str, src: Path, state: str) -> Row:
    size = src.stat().st_size
    conn = _connect(url)
    start = time.perf_counter()
    try:
        conn.putrequest("PUT", f"/dav/{NAME}")
        conn.putheader("Authorization", _basic(PUT_USER, password))
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        with src.open("rb") as f:
            while chunk := f.read(MiB):
                conn.send(chunk)
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    seconds = time.perf_counter() - start
    if r.status not in (201, 204):
        raise BenchError(f"PUT answered {r.status}")
    return Row(state, "WebDAV PUT, whole file", conn.sent, _response_bytes(r, len(body)), seconds)


def check_stored(url: str, user: str, password: str, digest: str) -> None:
    meta = api_get(url, user, password, f"files/metadata?path=/{NAME}")
    if meta.get("content_sha256") != digest:
        raise BenchError(f"{user}'s {NAME} on the server differs from the source")


def manifest_blocks(url: str, password: str) -> dict[str, int]:
    """The davsync account's file on the server: block hash -> size."""
    man = api_get(url, USER, password, f"files/manifest?path=/{NAME}")
    return {b["hash"]: int(b["size"]) for b in man["blocks"]}


# -- davsync devices ------------------------------------------------------------------------------


@dataclass
class Device:
    name: str
    home: Path
    folder: Path

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "sync_ext.client.cli", "--home", str(self.home), *args]
        return subprocess.run(
            argv, cwd=REPO, env=child_env(), input=stdin, capture_output=True, text=True, check=False
        )

    def login(self, url: str, password: str) -> None:
        done = self.run(
            "login", url, "--user", USER, "--password-stdin", "--device", self.name, stdin=password + "\n"
        )
        if done.returncode != 0:
            raise BenchError(f"davsync login ({self.name}) exited {done.returncode}: {done.stderr}")

    def sync(self, state: str, label: str) -> Row:
        stats = self.home / "stats.json"
        stats.unlink(missing_ok=True)
        start = time.perf_counter()
        done = self.run("sync", str(self.folder), "--once", "--stats", str(stats), "--no-progress")
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise BenchError(f"davsync sync ({self.name}) exited {done.returncode}:\n{done.stderr[-3000:]}")
        doc = json.loads(stats.read_text())
        blocks = doc["blocks_sent"] if label.endswith("upload") else doc["blocks_received"]
        return Row(state, label, doc["bytes_sent"], doc["bytes_received"], seconds, blocks=blocks)


# -- rsync ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RsyncDaemon:
    """``rsync --daemon`` on 127.0.0.1 with one writable module, ``bench``, behind a password."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dest = root / "dest"
        self.dest.mkdir(parents=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        secret = secrets.token_urlsafe(12)
        self.password_file = self._private("client.password", secret + "\n")
        secrets_file = self._private("rsyncd.secrets", f"{USER}:{secret}\n")
        conf = (
            f"use chroot = false\nuid = {os.getuid()}\ngid = {os.getgid()}\n"
            f"log file = {root / 'rsyncd.log'}\n[bench]\n  path = {self.dest}\n  read only = false\n"
            f"  auth users = {USER}\n  secrets file = {secrets_file}\n"
        )
        self.conf = self._private("rsyncd.conf", conf)

    def _private(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        path.chmod(0o600)  # rsync refuses secrets and password files others can read
        return path

    def start(self, timeout: float = 10.0) -> None:
        argv = ["rsync", "--daemon", "--no-detach", "--address", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen([*argv, "--config", str(self.conf)], env=child_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BenchError(f"rsync --daemon did not listen on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def push(self, src: Path, state: str) -> Row:
        target = f"rsync://{USER}@127.0.0.1:{self.port}/bench/"
        argv = ["rsync", "-a", "--no-whole-file", "--stats", "--password-file", str(self.password_file)]
        start = time.perf_counter()
        done = subprocess.run(
            [*argv, str(src), target], env=child_env(), capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise BenchError(f"rsync exited {done.returncode}: {done.stderr[-2000:]}")
        figures = {k: int(re.sub(r"\D", "", v)) for k, v in _STAT.findall(done.stdout)}
        sent, received = figures["Total bytes sent"], figures["Total bytes received"]
        literal = figures["Literal data"]
        return Row(state, "rsync push to rsync --daemon", sent, received, seconds, literal=literal)


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Setup:
    url: str
    password: str
    a: Device
    b: Device
    source: Path
    rsync: RsyncDaemon | None
    #: the blocks of the previous state on the server
    known_blocks: set[str] = field(default_factory=set)


def run_state(s: Setup, state: str) -> list[Row]:
    """Apply the state's change, then carry it with davsync (A up, B down), rsync and a WebDAV PUT."""
    if (edit := EDITS[state]) is not None:
        edit(s.a.folder / NAME)
        edit(s.source)
    digest = file_sha(s.a.folder / NAME)
    if file_sha(s.source) != digest:
        raise BenchError("the rsync source and davsync's folder differ after the same change")
    rows = [s.a.sync(state, "davsync A, upload")]
    check_stored(s.url, USER, s.password, digest)
    rows.append(s.b.sync(state, "davsync B, download"))
    if file_sha(s.b.folder / NAME) != digest:
        raise BenchError(f"davsync B's copy differs from the source after '{state}'")
    blocks = manifest_blocks(s.url, s.password)
    for row in rows:
        row.file_blocks = len(blocks)
        row.new_block_bytes = sum(n for h, n in blocks.items() if h not in s.known_blocks)
    s.known_blocks = set(blocks)
    if s.rsync is not None:
        rows.append(s.rsync.push(s.source, state))
        if file_sha(s.rsync.dest / NAME) != digest:
            raise BenchError(f"rsync's copy differs from the source after '{state}'")
    rows.append(put_file(s.url, s.password, s.a.folder / NAME, state))
    check_stored(s.url, PUT_USER, s.password, digest)
    return rows


def run(root: Path, size: int, use_rsync: bool) -> tuple[list[Row], dict[str, Any]]:
    password = secrets.token_urlsafe(16)
    server: ServerProcess = davserver_process(root / "data", durable=True, threads=8, password=password)
    add_account(root / "data", PUT_USER, password)
    rsync = RsyncDaemon(root / "rsync") if use_rsync else None
    try:
        server.start()
        if rsync is not None:
            rsync.start()
        setup = Setup(server.url, password, *_devices(root, server.url, password), root / "src" / NAME, rsync)
        config = api_get(server.url, USER, password, "config")
        make_file(setup.a.folder / NAME, size)
        setup.source.parent.mkdir()
        shutil.copyfile(setup.a.folder / NAME, setup.source)
        rows = [row for state in STATES for row in run_state(setup, state)]
        for line in server.problems()[:20]:
            print(f"  server log: {line}")
        return rows, config
    finally:
        if rsync is not None:
            rsync.stop()
        server.stop()


def _devices(root: Path, url: str, password: str) -> tuple[Device, Device]:
    a = Device("bench-A", root / "home-A", root / "folder-A")
    b = Device("bench-B", root / "home-B", root / "folder-B")
    for device in (a, b):
        device.login(url, password)
    return a, b


# -- the report -----------------------------------------------------------------------------------


def _ratio(row: Row, put: Row | None) -> str:
    if put is None or not put.wire:
        return "-"
    return f"{row.wire / put.wire * 100:.3g}%"


def _moved(row: Row) -> str:
    if row.blocks is not None:
        new = row.new_block_bytes or 0
        return f"{row.blocks:,} of {row.file_blocks or 0:,} blocks: {new:,} new + {row.wire - new:,} other"
    if row.literal is not None:
        return f"{row.literal:,} literal bytes"
    return "the whole file"


def print_table(rows: Sequence[Row]) -> None:
    head = (
        f"{'state':<14} {'transfer':<30} {'bytes sent':>13} {'received':>13} {'on the wire':>13}"
        f" {'vs PUT':>7} {'seconds':>8}  content moved"
    )
    print(head)
    print("-" * len(head))
    for state in STATES:
        mine = [r for r in rows if r.state == state]
        put = next((r for r in mine if r.transfer.startswith("WebDAV")), None)
        for i, r in enumerate(mine):
            print(
                f"{state if i == 0 else '':<14} {r.transfer:<30} {r.sent:>13,} {r.received:>13,}"
                f" {r.wire:>13,} {_ratio(r, put):>7} {r.seconds:>8.2f}  {_moved(r)}"
            )


def print_notes(config: dict[str, Any], has_rsync: bool) -> None:
    c = config["chunker"]
    limit = int(config["max_block_size"])
    print(
        f"\ndavsync blocks (GET /api/v1/config): {c['algorithm']} min {c['min_size']:,}, "
        f"avg {c['avg_size']:,}, max {c['max_size']:,} bytes; max_block_size {limit:,}.\n"
        f"  3 blocks' worth: 3 x avg = {3 * int(c['avg_size']):,}, at most 3 x max_block_size = "
        f"{3 * limit:,} bytes, plus the block list (commit) and headers.\n"
        "davsync 'new': bytes of the blocks not in the previous state (the server's manifests);\n"
        "  'other': the rest of the wire (hash lists, the commit's block list, the manifest, headers).\n"
        "on the wire = bytes sent + received, request/status lines and headers included (TCP/IP not);\n"
        "  vs PUT: relative to the WebDAV PUT of the same state. davsync and rsync seconds are whole\n"
        "  commands (process start included); davserver commits durably (fsync), rsync does not fsync."
    )
    if not has_rsync:
        print("rsync was not found (Debian: apt-get install -y rsync): its rows are missing.")


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.delta_sync", description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=100, help="size of the file in MiB (default 100)")
    add_common_options(ap, wait_quiet="first")
    args = ap.parse_args(argv)
    if args.size_mib < 8:
        ap.error("--size-mib must be at least 8")
    return args


def own_cpu() -> float:
    """CPU seconds of this process and its reaped children (server, davsync, rsync)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def write_json(path: Path, rows: Sequence[Row], config: dict[str, Any], extra: dict[str, Any]) -> None:
    doc = {
        **extra,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "sync_config": config,
        "rows": [{**asdict(r), "wire": r.wire} for r in rows],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"JSON written to {path}")


def preflight(args: argparse.Namespace) -> Path | None:
    """The bench folder's parent, or None when it lacks the space; says whether rsync is there."""
    parent = args.workdir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    need = 9 * args.size_mib * MiB + 256 * MiB  # 2 davsync folders, server (2 accounts), rsync x 3
    if shutil.disk_usage(parent).free < need:
        print(f"not enough free disk space in {parent}: need {need / MiB:,.0f} MiB", file=sys.stderr)
        return None
    if shutil.which("rsync") is None:
        print("rsync not found (Debian: apt-get install -y rsync): skipping the rsync rows", flush=True)
    quiet = wait_quiet(args.wait_quiet)
    print(
        f"delta sync of a {args.size_mib:,} MiB random file: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
        f"{'; ' + quiet if quiet else ''}",
        flush=True,
    )
    return parent


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    parent = preflight(args)
    if parent is None:
        return 2
    has_rsync = shutil.which("rsync") is not None
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    root = Path(tempfile.mkdtemp(prefix="davserver-delta-", dir=parent))
    busy0, own0, started = machine_busy_seconds(), own_cpu(), time.perf_counter()
    try:
        rows, config = run(root, args.size_mib * MiB, has_rsync)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    seconds, busy1 = time.perf_counter() - started, machine_busy_seconds()
    others = None
    if busy0 is not None and busy1 is not None:  # all but this process and its children
        others = max(0.0, busy1 - busy0 - (own_cpu() - own0)) / seconds
    print()
    print_table(rows)
    print_notes(config, has_rsync)
    load = "n/a" if others is None else f"{others:.2f} cores"
    print(f"run time {seconds:,.0f} s; other processes' CPU meanwhile {load}")
    if args.json is not None:
        write_json(args.json, rows, config, {"size_mib": args.size_mib, "others_cpu_cores": others})
    return 0


if __name__ == "__main__":
    sys.exit(main())
