"""Storage throughput: this machine's limits, then the engine's write and read rates beside them.

Run ``python -m bench.storage_throughput [--size-mib N] [--dir DIR] [--json FILE]``.

One run measures, in this order:

1. the machine: single-core SHA-256, zstd levels 1 and 3 (speed and ratio on log-like
   text and on random data), AES-256-GCM, the chunker, and the disk's sequential
   durable write rate (``dd ... conv=fdatasync`` and a Python write + ``fdatasync``);
2. the engine on the file backend with SQLite, ``durable=True``: writing N MiB of
   incompressible and of compressible data, then reading both back (cold when the
   page cache can be dropped, then warm);
3. the same writes with ``durable=False`` (relaxed mode);

and prints the targets beside the figures. Rates are MB/s with MB = 10**6 bytes (as ``dd``
prints them) of *logical* bytes, i.e. bytes of file content, whatever is stored.

Test data is generated while it is written, from a 64 MiB random pool (and an 8 MiB pool
of log lines) cut into 64 KiB pieces, each preceded by a unique tag, so the benchmark
never holds N MiB in memory and no content-defined block (>= 256 KiB) repeats: dedup
cannot flatter the figures, and the run checks that it did not.

Nothing here asserts a timing; it reports. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import resource
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import cryptography
import pyfastcdc
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.chunker import Chunker, ChunkerParams
from storage.config import PasswordHashing, StorageConfig
from storage.engine import Engine
from storage.keys import MasterKey

MiB = 1 << 20
MB = 1_000_000
PIECE = 64 << 10
RANDOM_POOL_BYTES = 64 * MiB
TEXT_POOL_BYTES = 8 * MiB
READ_CHUNK = MiB
#: micro-measurements repeat until both of these are reached
MIN_SECONDS = 0.75
MIN_BYTES = 128 * MiB

TARGET_INCOMPRESSIBLE = 0.8  # x the dd fdatasync rate
TARGET_COMPRESSIBLE = 1.5  # x the dd fdatasync rate, logical bytes
TARGET_READ_MBPS = 500.0


# -- test data ------------------------------------------------------------------------------------


class PieceStream:
    """``total`` bytes cycling over ``pieces``, each piece preceded by ``tag(index)``.

    A readable stream (``read(n)``) that never materialises more than one read's worth.
    Tags make every stretch of more than one piece unique, so content-defined blocks
    (at least 256 KiB with the default chunker) never deduplicate.
    """

    def __init__(self, total: int, pieces: Sequence[bytes | memoryview], tag: Callable[[int], bytes]) -> None:
        self._left = total
        self._pieces = pieces
        self._tag = tag
        self._index = 0
        self._queue: deque[memoryview] = deque()
        # every pass over the pieces takes them in a new order: the stream is not periodic
        self._order = list(range(len(pieces)))
        self._rng = random.Random(len(pieces))

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0 or n > self._left:
            n = self._left
        if n == 0:
            return b""
        parts: list[memoryview] = []
        want = n
        queue = self._queue
        while want:
            if not queue:
                turn, i = divmod(self._index, len(self._pieces))
                if i == 0 and turn:
                    self._rng.shuffle(self._order)
                queue.append(memoryview(self._tag(self._index)))
                queue.append(memoryview(self._pieces[self._order[i]]))
                self._index += 1
            head = queue[0]
            if len(head) <= want:
                parts.append(queue.popleft())
                want -= len(head)
            else:
                parts.append(head[:want])
                queue[0] = head[want:]
                want = 0
        self._left -= n
        return b"".join(parts)


def random_pool() -> bytes:
    return os.urandom(RANDOM_POOL_BYTES)


def random_stream(pool: bytes, total: int) -> PieceStream:
    view = memoryview(pool)
    pieces = [view[i : i + PIECE] for i in range(0, len(pool) - PIECE + 1, PIECE)]
    salt = secrets.randbits(64)
    pack = struct.Struct(">QQ").pack
    return PieceStream(total, pieces, lambda i: pack(salt, i))


_TRACE = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/handlers.py", line 214, in handle\n'
    "    result = self.dispatch(request)\n"
    '  File "/srv/app/handlers.py", line 188, in dispatch\n'
    "    return handler(request, **kwargs)\n"
    '  File "/srv/app/storage.py", line 77, in put\n'
    "    raise QuotaExceeded(account)\n"
    "app.errors.QuotaExceeded: the account's quota has no room for this file\n"
)


def text_pool(seed: int = 1) -> bytes:
    """Log-like lines: timestamps, levels, request lines with varying ids, heartbeats, tracebacks.

    Tuned to compress about 12x with zstd level 1 on 1 MiB blocks (typical of service logs).
    """
    rng = random.Random(seed)
    levels = ["INFO"] * 28 + ["DEBUG"] * 8 + ["WARN"] * 3 + ["ERROR"]
    comps = ["http.access"] * 4 + ["db.pool", "auth", "sync.journal", "blocks.writer"]
    paths = ["/api/v1/files", "/api/v1/folders", "/dav/home/docs", "/api/v1/sync/changes"]
    methods = ["GET"] * 6 + ["PUT"] * 2 + ["PROPFIND"] * 2
    statuses = [200] * 14 + [201, 207, 304, 404]
    msgs = [
        "connection returned to pool",
        "session refreshed",
        "journal entry appended",
        "block stored",
        "job finished",
        "cache hit",
    ]
    ms = 1_715_000_000_000
    lines: list[bytes] = []
    n = 0
    while n < TEXT_POOL_BYTES:
        ms += rng.randrange(4)
        sec, milli = divmod(ms, 1000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{milli:03d}Z"
        r = rng.random()
        if r < 0.40:
            line = f"{stamp} DEBUG [health] scheduler: heartbeat ok, queue empty, all workers idle\n"
        elif r < 0.43:
            line = f"{stamp} ERROR [worker-{rng.randrange(4)}] http.access: unhandled exception\n" + _TRACE
        else:
            comp = rng.choice(comps)
            head = f"{stamp} {rng.choice(levels):<5} [worker-{rng.randrange(4)}] {comp}:"
            if comp == "http.access":
                line = (
                    f"{head} {rng.choice(methods)} {rng.choice(paths)}/item-{rng.randrange(32)} "
                    f"status={rng.choice(statuses)} bytes={rng.randrange(8) * 4096} "
                    f"dur_ms={rng.randrange(10)} user=u{rng.randrange(16):04d}\n"
                )
            else:
                line = f"{head} {rng.choice(msgs)} id={rng.randrange(100)} elapsed_ms={rng.randrange(8)}\n"
        data = line.encode()
        lines.append(data)
        n += len(data)
    return b"".join(lines)


def text_pieces(pool: bytes) -> list[bytes]:
    """Cut the pool into ~64 KiB pieces of whole lines."""
    pieces = []
    start = 0
    while start < len(pool):
        end = pool.find(b"\n", start + PIECE)
        end = len(pool) if end < 0 else end + 1
        pieces.append(pool[start:end])
        start = end
    return pieces


def text_stream(pieces: Sequence[bytes], total: int) -> PieceStream:
    salt = secrets.token_hex(8)

    def tag(i: int) -> bytes:
        return f"2024-05-06T12:00:00.000Z INFO  [bench] stream {salt}: segment {i} begins\n".encode()

    return PieceStream(total, pieces, tag)


def take(stream: PieceStream, count: int, size: int) -> list[bytes]:
    return [stream.read(size) for _ in range(count)]


# -- measuring ------------------------------------------------------------------------------------


def rate(fn: Callable[[bytes], object], blocks: Sequence[bytes]) -> float:
    """MB/s of ``fn`` over ``blocks`` (cycled), single thread, after one warm-up call."""
    fn(blocks[0])
    done = 0
    i = 0
    start = time.perf_counter()
    while True:
        block = blocks[i % len(blocks)]
        fn(block)
        done += len(block)
        i += 1
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_SECONDS and done >= MIN_BYTES:
            return done / elapsed / MB


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes spent busy so far (from /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def proc_io() -> dict[str, int]:
    """This process's /proc/self/io counters ({} where unavailable)."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        with contextlib.suppress(ValueError):
            out[key.strip()] = int(value)
    return out


def meminfo_cached_mib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("Cached:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def drop_caches(folder: Path) -> dict[str, Any]:
    """Evict ``folder``'s files from the page cache so the next read comes from the disk.

    First ``sync; echo 3 > /proc/sys/vm/drop_caches`` (needs root, and a writable /proc/sys
    in a container); if that is refused, ``posix_fadvise(DONTNEED)`` on every file below
    ``folder``, which any owner may do for clean pages.
    """
    os.sync()
    before = meminfo_cached_mib()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        refused = f"drop_caches refused ({exc.strerror})"
    else:
        after = meminfo_cached_mib()
        sizes = f": page cache {before:,.0f} -> {after:,.0f} MiB" if before is not None and after else ""
        return {"dropped": True, "method": "drop_caches", "detail": f"drop_caches worked{sizes}"}
    if not hasattr(os, "posix_fadvise"):
        return {"dropped": False, "method": None, "detail": refused + "; no posix_fadvise either"}
    evicted = 0
    for dirpath, _dirs, files in os.walk(folder):
        for fname in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, fname), os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    evicted += 1
                finally:
                    os.close(fd)
    return {
        "dropped": evicted > 0,
        "method": "fadvise",
        "detail": f"{refused}; posix_fadvise(DONTNEED) on {evicted} files instead",
    }


def rss_peak_reset() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0) so :func:`rss_peak_mib` covers what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5\n")
    except OSError:
        return False
    return True


def rss_peak_mib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


# -- the machine ----------------------------------------------------------------------------------


@dataclass
class Limits:
    sha256_mbps: float = 0.0
    zstd: dict[str, dict[str, float]] = field(default_factory=dict)
    aes_gcm_encrypt_mbps: float = 0.0
    aes_gcm_decrypt_mbps: float = 0.0
    chunker_random_mbps: float = 0.0
    chunker_text_mbps: float = 0.0
    source_random_mbps: float = 0.0
    source_text_mbps: float = 0.0
    dd_fdatasync_mbps: float = 0.0
    dd_wall_mbps: float = 0.0
    dd_output: str = ""
    python_fdatasync_mbps: float = 0.0


def measure_cpu_limits(limits: Limits, rpool: bytes, tpieces: Sequence[bytes]) -> None:
    random_blocks = take(random_stream(rpool, 32 * MiB), 32, MiB)
    text_blocks = take(text_stream(tpieces, 32 * MiB), 32, MiB)

    limits.sha256_mbps = rate(lambda b: hashlib.sha256(b).digest(), random_blocks)

    for level in (1, 3):
        cctx = zstandard.ZstdCompressor(level=level)
        for kind, blocks in (("text", text_blocks), ("random", random_blocks)):
            packed = [cctx.compress(b) for b in blocks]
            ratio = sum(map(len, blocks)) / sum(map(len, packed))
            entry = {"compress_mbps": rate(cctx.compress, blocks), "ratio": ratio}
            if kind == "text":
                dctx = zstandard.ZstdDecompressor()
                # MB/s of decompressed output, for the read path
                entry["decompress_mbps"] = rate(dctx.decompress, packed) * ratio
            limits.zstd[f"level{level}_{kind}"] = entry

    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)
    limits.aes_gcm_encrypt_mbps = rate(lambda b: aead.encrypt(nonce, b, b"header"), random_blocks)
    sealed = [aead.encrypt(nonce, b, b"header") for b in random_blocks[:8]]
    limits.aes_gcm_decrypt_mbps = rate(lambda b: aead.decrypt(nonce, b, b"header"), sealed)

    chunker = Chunker(ChunkerParams(), seed=0x5EED)

    def cut(buf: bytes) -> None:
        for _ in chunker.split_bytes(buf):
            pass

    limits.chunker_random_mbps = rate(cut, [b"".join(random_blocks)])
    limits.chunker_text_mbps = rate(cut, [b"".join(text_blocks)])

    limits.source_random_mbps = stream_rate(lambda n: random_stream(rpool, n))
    limits.source_text_mbps = stream_rate(lambda n: text_stream(tpieces, n))


def stream_rate(make: Callable[[int], PieceStream]) -> float:
    """How fast the benchmark's own data generator feeds (8 MiB reads, like the chunker's)."""
    total = 512 * MiB
    stream = make(total)
    start = time.perf_counter()
    while stream.read(8 * MiB):
        pass
    return total / (time.perf_counter() - start) / MB


def measure_disk(limits: Limits, root: Path, size_mib: int, rpool: bytes) -> None:
    target = root / "disk-probe"
    try:
        os.sync()
        if shutil.which("dd"):
            start = time.perf_counter()
            proc = subprocess.run(
                ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={size_mib}", "conv=fdatasync"],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "LC_ALL": "C"},
            )
            wall = time.perf_counter() - start
            limits.dd_wall_mbps = size_mib * MiB / wall / MB
            limits.dd_output = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
            m = re.search(r"^(\d+) bytes.*copied, ([\d.]+) s", limits.dd_output)
            limits.dd_fdatasync_mbps = int(m.group(1)) / float(m.group(2)) / MB if m else limits.dd_wall_mbps
            target.unlink()
            os.sync()

        view = memoryview(rpool)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            start = time.perf_counter()
            for i in range(size_mib):
                off = (i * MiB) % len(rpool)
                chunk = view[off : off + MiB]
                while chunk:
                    chunk = chunk[os.write(fd, chunk) :]
            os.fdatasync(fd)
            limits.python_fdatasync_mbps = size_mib * MiB / (time.perf_counter() - start) / MB
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        os.sync()
    if not limits.dd_fdatasync_mbps:
        limits.dd_fdatasync_mbps = limits.python_fdatasync_mbps
        limits.dd_output = "dd not found; using the Python figure as the disk rate"


# -- the engine -----------------------------------------------------------------------------------


@dataclass
class ReadRun:
    label: str
    seconds: float
    mbps: float
    cache: str


@dataclass
class EngineRun:
    kind: str  # "incompressible" | "compressible"
    durable: bool
    size: int
    write_seconds: float = 0.0
    write_mbps: float = 0.0
    write_cpu_cores: float = 0.0
    #: cores other processes kept busy meanwhile (a noisy neighbour makes figures low)
    others_cpu_cores: float | None = None
    #: peak RSS of the process during the write (VmHWM after a reset), when Linux offers it
    write_peak_rss_mib: float | None = None
    disk_write_bytes: int | None = None
    unique_block_bytes: int = 0
    stored_bytes: int = 0
    blocks: int = 0
    dedup_free: bool = True
    reads: list[ReadRun] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.kind} ({'durable' if self.durable else 'relaxed'})"

    @property
    def compression_ratio(self) -> float:
        return self.size / self.stored_bytes if self.stored_bytes else 0.0


def engine_run(
    root: Path,
    kind: str,
    *,
    durable: bool,
    size: int,
    make_stream: Callable[[int], PieceStream],
    reads: bool,
    **config_overrides: Any,
) -> EngineRun:
    """Write one file of ``size`` bytes to a fresh engine under ``root`` (removed afterwards)."""
    work = root / f"engine-{kind}-{'durable' if durable else 'relaxed'}"
    work.mkdir()
    run = EngineRun(kind, durable, size)
    name = "data.bin" if kind == "incompressible" else "service.log"
    config = StorageConfig(
        database_url=f"sqlite:///{work / 'meta.db'}",
        blocks_url=f"file://{work / 'blocks'}",
        master_key=MasterKey.generate(),
        durable=durable,
        password_hashing=PasswordHashing(1, 8, 1),
        **config_overrides,
    )
    try:
        with Engine.open(config) as engine:
            engine.accounts.create("bench", "bench-password")
            vol = engine.volume("bench")
            stream = make_stream(size)
            os.sync()
            peak_reset = rss_peak_reset()
            io0, cpu0, busy0 = proc_io(), cpu_seconds(), machine_busy_seconds()
            start = time.perf_counter()
            entry = vol.write(name, stream)
            run.write_seconds = time.perf_counter() - start
            cpu = cpu_seconds() - cpu0
            busy1 = machine_busy_seconds()
            if busy0 is not None and busy1 is not None:
                run.others_cpu_cores = max(0.0, busy1 - busy0 - cpu) / run.write_seconds
            io1 = proc_io()
            if peak_reset:
                run.write_peak_rss_mib = rss_peak_mib()
            if entry.size != size:
                raise RuntimeError(f"wrote {entry.size} bytes, expected {size}")
            run.write_mbps = size / run.write_seconds / MB
            run.write_cpu_cores = cpu / run.write_seconds
            if "write_bytes" in io0 and "write_bytes" in io1:
                run.disk_write_bytes = io1["write_bytes"] - io0["write_bytes"]
            stats = engine.stats()
            run.unique_block_bytes = stats.unique_block_bytes
            run.stored_bytes = stats.stored_bytes
            run.blocks = stats.blocks
            run.dedup_free = stats.unique_block_bytes == size
            if reads:
                drop = drop_caches(work)
                first = "cold" if drop["dropped"] else "warm (1st)"
                run.reads.append(read_back(vol, name, size, first, drop["detail"]))
                run.reads.append(read_back(vol, name, size, "warm", "block files in the page cache"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return run


def read_back(vol: Any, name: str, size: int, label: str, cache: str) -> ReadRun:
    start = time.perf_counter()
    total = 0
    with vol.open(name) as reader:
        while True:
            data = reader.read(READ_CHUNK)
            if not data:
                break
            total += len(data)
    seconds = time.perf_counter() - start
    if total != size:
        raise RuntimeError(f"read {total} bytes back, expected {size}")
    return ReadRun(label, seconds, size / seconds / MB, cache)


# -- report ---------------------------------------------------------------------------------------


def machine_info(root: Path) -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    fs = ""
    with contextlib.suppress(OSError):
        best = ""
        resolved = str(root.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype, opts = line.split()[:4]
            if (resolved == mnt or resolved.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fs = mnt, f"{fstype} on {dev} ({mnt}, {opts})"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "filesystem": fs,
        "versions": {
            "zstandard": zstandard.__version__,
            "cryptography": cryptography.__version__,
            "pyfastcdc": pyfastcdc.__version__,
        },
    }


class Printer:
    def __init__(self) -> None:
        self.out = sys.stdout

    def section(self, title: str) -> None:
        print(f"\n== {title} " + "=" * max(0, 86 - len(title)), file=self.out, flush=True)

    def row(self, label: str, value: str, note: str = "") -> None:
        print(f"  {label:<44} {value:>14}  {note}".rstrip(), file=self.out, flush=True)

    def line(self, text: str) -> None:
        print(f"  {text}", file=self.out, flush=True)


def mbps(x: float) -> str:
    return f"{x:,.0f} MB/s"


def ceilings(limits: Limits, cores: int) -> dict[str, dict[str, float]]:
    """CPU-bound estimates from the micro-measurements (not measured end to end).

    Every logical byte is cut (chunker), hashed twice (whole file in the caller's thread,
    per block in a worker), offered to zstd level 1 and encrypted (after compression).
    """
    out = {}
    for kind, chunker, zkey in (
        ("incompressible", limits.chunker_random_mbps, "level1_random"),
        ("compressible", limits.chunker_text_mbps, "level1_text"),
    ):
        z = limits.zstd[zkey]
        stored_fraction = 1.0 if z["ratio"] < 1.03 else 1 / z["ratio"]
        source = limits.source_random_mbps if kind == "incompressible" else limits.source_text_mbps
        caller = 1 / (1 / chunker + 1 / limits.sha256_mbps + 1 / source)
        cost = (
            1 / chunker
            + 2 / limits.sha256_mbps
            + 1 / z["compress_mbps"]
            + stored_fraction / limits.aes_gcm_encrypt_mbps
            + 1 / source
        )
        out[kind] = {"caller_thread_mbps": caller, "all_cores_mbps": cores / cost}
    return out


def report_limits(p: Printer, limits: Limits, size_mib: int, cores: int) -> None:
    p.section("This machine's limits (1 MiB blocks, one core unless noted)")
    p.row("SHA-256", mbps(limits.sha256_mbps))
    for level in (1, 3):
        for kind in ("text", "random"):
            z = limits.zstd[f"level{level}_{kind}"]
            what = "log-like text" if kind == "text" else "random data"
            extra = f" (decompress {mbps(z['decompress_mbps'])})" if "decompress_mbps" in z else ""
            p.row(
                f"zstd level {level} compress, {what}",
                mbps(z["compress_mbps"]),
                f"ratio {z['ratio']:.2f}x{extra}",
            )
    p.row("AES-256-GCM encrypt", mbps(limits.aes_gcm_encrypt_mbps))
    p.row("AES-256-GCM decrypt", mbps(limits.aes_gcm_decrypt_mbps))
    p.row(
        "chunker (FastCDC, default params), random", mbps(limits.chunker_random_mbps), "incl. the bytes copy"
    )
    p.row("chunker (FastCDC, default params), text", mbps(limits.chunker_text_mbps))
    p.row("bench data generator, random", mbps(limits.source_random_mbps), "feeds the writes below")
    p.row("bench data generator, log text", mbps(limits.source_text_mbps))
    p.row(f"disk: dd {size_mib} MiB conv=fdatasync", mbps(limits.dd_fdatasync_mbps), "<- reference disk rate")
    p.line(f"    dd said: {limits.dd_output}")
    p.row(f"disk: Python write {size_mib} MiB + fdatasync", mbps(limits.python_fdatasync_mbps), "random data")
    for kind, c in ceilings(limits, cores).items():
        p.row(
            f"est. CPU ceiling, {kind} write",
            mbps(c["all_cores_mbps"]),
            f"{cores} cores; caller thread alone {mbps(c['caller_thread_mbps'])}",
        )


def report_engine(p: Printer, runs: Sequence[EngineRun], disk: float) -> None:
    p.section("Engine: file backend + SQLite, one file per case")
    for run in runs:
        p.line(f"{run.label}, {run.size / MiB:,.0f} MiB:")
        p.row(
            "  write",
            mbps(run.write_mbps),
            f"{run.write_mbps / disk:.2f}x disk, {run.write_seconds:.2f} s, "
            f"CPU {run.write_cpu_cores:.2f} cores"
            + (f" (others {run.others_cpu_cores:.2f})" if run.others_cpu_cores is not None else "")
            + (f", peak RSS {run.write_peak_rss_mib:,.0f} MiB" if run.write_peak_rss_mib else ""),
        )
        written = (
            f", disk writes {run.disk_write_bytes / MiB:,.0f} MiB" if run.disk_write_bytes is not None else ""
        )
        p.row(
            "  stored / logical",
            f"{run.stored_bytes / MiB:,.1f} MiB",
            f"of {run.size / MiB:,.0f} MiB: ratio {run.compression_ratio:.2f}x, {run.blocks} blocks{written}",
        )
        p.row(
            "  unique block bytes",
            f"{run.unique_block_bytes / MiB:,.1f} MiB",
            "no dedup (as intended)" if run.dedup_free else "DEDUP KICKED IN: figures are flattered",
        )
        for r in run.reads:
            p.row(f"  read {r.label}", mbps(r.mbps), f"{r.seconds:.2f} s; {r.cache}")


@dataclass
class Target:
    name: str
    goal: str
    value: str
    met: bool


def targets(runs: Sequence[EngineRun], disk: float) -> list[Target]:
    out = []
    by = {(r.kind, r.durable): r for r in runs}
    inc, comp = by.get(("incompressible", True)), by.get(("compressible", True))
    if inc:
        out.append(
            Target(
                "incompressible durable write",
                f">= {TARGET_INCOMPRESSIBLE}x disk ({TARGET_INCOMPRESSIBLE * disk:,.0f} MB/s)",
                f"{inc.write_mbps:,.0f} MB/s = {inc.write_mbps / disk:.2f}x",
                inc.write_mbps >= TARGET_INCOMPRESSIBLE * disk,
            )
        )
    if comp:
        out.append(
            Target(
                "compressible durable write (logical)",
                f">= {TARGET_COMPRESSIBLE}x disk ({TARGET_COMPRESSIBLE * disk:,.0f} MB/s)",
                f"{comp.write_mbps:,.0f} MB/s = {comp.write_mbps / disk:.2f}x",
                comp.write_mbps >= TARGET_COMPRESSIBLE * disk,
            )
        )
    for run in (inc, comp):
        if run is None:
            continue
        for r in run.reads:
            out.append(
                Target(
                    f"{run.kind} read, {r.label}",
                    f">= {TARGET_READ_MBPS:,.0f} MB/s",
                    f"{r.mbps:,.0f} MB/s",
                    r.mbps >= TARGET_READ_MBPS,
                )
            )
    return out


def report_targets(p: Printer, ts: Sequence[Target]) -> None:
    p.section("Targets (from the issue), against the dd fdatasync rate")
    for t in ts:
        p.line(f"{'MET ' if t.met else 'MISS'}  {t.name:<36} {t.value:<22} target {t.goal}")


# -- main -----------------------------------------------------------------------------------------


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind like Ctrl-C so the bench folder is removed."""
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.storage_throughput", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--size-mib", type=int, default=1024, help="MiB per test file and for the disk probe")
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to create the (removed afterwards) bench folder; default: the temp dir (/tmp)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)
    if args.size_mib < 16:
        ap.error("--size-mib must be at least 16")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    size = args.size_mib * MiB
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.dir or tempfile.gettempdir()).free
    need = int(size * 1.5) + 256 * MiB
    if free < need:
        print(
            f"not enough free disk space: need {need / MiB:,.0f} MiB, have {free / MiB:,.0f}", file=sys.stderr
        )
        return 2

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    root = Path(tempfile.mkdtemp(prefix="davserver-bench-", dir=args.dir))
    p = Printer()
    try:
        info = machine_info(root)
        p.section("davserver storage throughput")
        p.row("test size", f"{args.size_mib:,} MiB", f"bench dir {root}")
        p.row("machine", f"{info['cores']} cores", info["cpu"])
        p.line(f"{'filesystem':<44} {info['filesystem']}")
        p.line(
            f"{'versions':<44} Python {info['python']}, kernel {info['kernel']}, "
            + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        )

        p.line(f"{'load average (1, 5, 15 min)':<44} " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
        run_start, run_cpu0, run_busy0 = time.perf_counter(), cpu_seconds(), machine_busy_seconds()

        rpool = random_pool()
        tpieces = text_pieces(text_pool())
        limits = Limits()
        measure_cpu_limits(limits, rpool, tpieces)
        measure_disk(limits, root, args.size_mib, rpool)
        cores = os.cpu_count() or 1
        report_limits(p, limits, args.size_mib, cores)
        disk = limits.dd_fdatasync_mbps

        runs: list[EngineRun] = []
        sources: dict[str, Callable[[int], PieceStream]] = {
            "incompressible": lambda n: random_stream(rpool, n),
            "compressible": lambda n: text_stream(tpieces, n),
        }
        for durable in (True, False):
            for kind, make in sources.items():
                runs.append(
                    engine_run(root, kind, durable=durable, size=size, make_stream=make, reads=durable)
                )
        report_engine(p, runs, disk)

        relaxed = {r.kind: r for r in runs if not r.durable}
        p.section("Durable vs relaxed (durable=False) writes")
        for run in runs:
            if run.durable and run.kind in relaxed:
                rel = relaxed[run.kind]
                p.row(
                    f"{run.kind}",
                    f"{run.write_mbps:,.0f} / {rel.write_mbps:,.0f}",
                    f"MB/s durable / relaxed: fsyncs cost {1 - run.write_mbps / rel.write_mbps:.0%}",
                )

        ts = targets(runs, disk)
        report_targets(p, ts)

        peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        p.section("Process")
        p.row("peak RSS (ru_maxrss)", f"{peak_rss_mib:,.0f} MiB", "incl. 64 MiB random + 8 MiB text pools")
        elapsed = time.perf_counter() - run_start
        run_busy1 = machine_busy_seconds()
        others = None
        if run_busy0 is not None and run_busy1 is not None:
            others = max(0.0, run_busy1 - run_busy0 - (cpu_seconds() - run_cpu0)) / elapsed
            p.row(
                "other processes' CPU during the run",
                f"{others:.2f} cores",
                "figures are unreliable when this is high" if others > 0.2 else "quiet machine",
            )
        p.row("run time", f"{elapsed:,.0f} s")

        if args.json is not None:
            result = {
                "size_mib": args.size_mib,
                "machine": info,
                "limits": asdict(limits),
                "ceilings": ceilings(limits, cores),
                "engine": [
                    {**asdict(r), "label": r.label, "compression_ratio": r.compression_ratio} for r in runs
                ],
                "targets": [asdict(t) for t in ts],
                "peak_rss_mib": peak_rss_mib,
                "others_cpu_cores": others,
                "run_seconds": elapsed,
            }
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            p.line(f"JSON written to {args.json}")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
