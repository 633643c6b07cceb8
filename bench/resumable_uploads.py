"""Resumable uploads (tus, 8 MiB and 64 MiB chunks) against a plain WebDAV PUT, same server, same run.

Run ``python -m bench.resumable_uploads [--size-mib N] [--rounds R] [--json FILE] [--workdir DIR]``.

One ``davserver serve`` (durable, the default) in a fresh data folder. Each round uploads a file
three ways: one WebDAV PUT, tus with 8 MiB PATCHes, tus with 64 MiB PATCHes (creation, then the
PATCHes, one keep-alive connection): PUT, tus 8 MiB, tus 64 MiB, and the other way round in the
next round, so over an even number of rounds each tus method comes before the PUT as often as
after it (uploads got slower over a run on the development VM, the first round's PUT 410-543
MB/s against 344-435 for the later ones; an order rotating by one put the PUT before tus 8 MiB in
two rounds of three). Every upload
sends its own file of fresh random data, so deduplication never turns an upload into a hash-only
pass; a round writes its three files first, and the page cache is flushed (``os.sync``) before
each upload starts, so none competes with the write-back of its source (or with the previous
upload's late syncs). Bodies go out with sendfile(2) for all three, so the client's copies take
little of the CPU the server shares with it (``--client-reads``: read() and send() in 1 MiB
pieces instead). Reported: MB/s (10**6 bytes of content per second, median of the rounds,
range) and tus relative to PUT: the median of each round's ratio to that round's PUT, so that
the slow and fast minutes of a shared machine (a PUT of the same size measured 250-560 MB/s
within an hour on the development VM) weigh on both sides of a ratio alike; the target is
>= 0.9x. Also the server's CPU time per GB of
content and the cores it kept busy (from /proc, all its threads): an upload that is slower with
the same CPU per GB idles between requests; one that needs more CPU per GB does extra work. The
upload is checked (size and SHA-256 through /api/v1/files/metadata). Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from bench.dav_vs_wsgidav import USER, BenchError, ServerProcess, davserver_process

MiB = 1 << 20
MB = 1e6
METHODS = ("put", "tus-8MiB", "tus-64MiB")
TARGET = 0.9


def _source(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size // MiB):
            block = os.urandom(MiB)
            h.update(block)
            f.write(block)
    return h.hexdigest()


class Uploader:
    def __init__(self, server: ServerProcess, password: str, *, sendfile: bool) -> None:
        self._sendfile = sendfile
        u = urlsplit(server.url)
        self._conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=600)
        self._auth = "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()

    def close(self) -> None:
        self._conn.close()

    def _send(
        self, method: str, path: str, headers: dict[str, str], src: Path, offset: int, length: int
    ) -> http.client.HTTPResponse:
        c = self._conn
        c.putrequest(method, path)
        for k, v in {"Authorization": self._auth, "Content-Length": str(length), **headers}.items():
            c.putheader(k, v)
        c.endheaders()
        with src.open("rb") as f:
            if self._sendfile:
                assert c.sock is not None  # connected by endheaders()
                c.sock.sendfile(f, offset, length)
            else:
                f.seek(offset)
                left = length
                while left:
                    chunk = f.read(min(MiB, left))
                    c.send(chunk)
                    left -= len(chunk)
        r = c.getresponse()
        r.read()
        return r

    def put(self, name: str, src: Path, size: int) -> None:
        r = self._send("PUT", f"/dav/{name}", {}, src, 0, size)
        if r.status not in (201, 204):
            raise BenchError(f"PUT answered {r.status}")

    def tus(self, name: str, src: Path, size: int, chunk: int) -> None:
        meta = "path " + base64.b64encode(f"/{name}".encode()).decode()
        self._conn.request(
            "POST",
            "/api/v1/uploads/",
            headers={
                "Authorization": self._auth,
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(size),
                "Upload-Metadata": meta,
                "Content-Length": "0",
            },
        )
        r = self._conn.getresponse()
        r.read()
        location = r.getheader("Location")
        if r.status != 201 or not location:
            raise BenchError(f"tus creation answered {r.status}")
        offset = 0
        while offset < size:
            n = min(chunk, size - offset)
            headers = {
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            }
            r = self._send("PATCH", location, headers, src, offset, n)
            if r.status != 204:
                raise BenchError(f"tus PATCH answered {r.status}")
            offset = int(r.getheader("Upload-Offset") or -1)

    def check(self, name: str, size: int, digest: str) -> None:
        self._conn.request(
            "GET", f"/api/v1/files/metadata?path=/{name}", headers={"Authorization": self._auth}
        )
        r = self._conn.getresponse()
        doc = json.loads(r.read())
        if doc.get("size") != size or doc.get("content_sha256") != digest:
            raise BenchError(f"{name}: stored size/hash differ from the source")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process and all its threads so far (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(
    size_mib: int, rounds: int, workdir: Path, *, sendfile: bool = True
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """MB/s per method and round, and the server's CPU seconds per GB of content (when known)."""
    size = size_mib * MiB
    root = Path(tempfile.mkdtemp(prefix="davserver-resumable-", dir=workdir))
    password = "bench-" + os.urandom(8).hex()
    server = davserver_process(root / "data", durable=True, threads=8, password=password)
    rates: dict[str, list[float]] = {m: [] for m in METHODS}
    cpu: dict[str, list[float]] = {m: [] for m in METHODS}
    try:
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        up = Uploader(server, password, sendfile=sendfile)
        try:
            for r in range(rounds):
                # See the module docstring: sources first, a flush before each upload, the order.
                order = METHODS if r % 2 == 0 else METHODS[::-1]
                sources = {m: root / f"src-{m}-{r}.bin" for m in order}
                digests = {m: _source(src, size) for m, src in sources.items()}
                for method in order:
                    name = f"{method}-{r}.bin"
                    os.sync()
                    cpu0 = _cpu_seconds(pid)
                    start = time.perf_counter()
                    if method == "put":
                        up.put(name, sources[method], size)
                    else:
                        chunk = int(method.split("-")[1].removesuffix("MiB")) * MiB
                        up.tus(name, sources[method], size, chunk)
                    seconds = time.perf_counter() - start
                    cpu1 = _cpu_seconds(pid)
                    rates[method].append(size / seconds / MB)
                    line = f"  round {r + 1} {method:10s} {rates[method][-1]:8,.0f} MB/s"
                    if cpu0 is not None and cpu1 is not None:
                        cpu[method].append((cpu1 - cpu0) / (size / 1e9))
                        line += (
                            f"  server CPU {cpu[method][-1]:.2f} s/GB, {(cpu1 - cpu0) / seconds:.2f} cores"
                        )
                    up.check(name, size, digests[method])
                    print(line, file=sys.stderr)
                for src in sources.values():
                    src.unlink()
        finally:
            up.close()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return rates, cpu


def report(rates: dict[str, list[float]], cpu: dict[str, list[float]], size_mib: int) -> None:
    put = rates["put"]
    print(
        f"\n{size_mib} MiB uploads, durable davserver, {len(put)} rounds: MB/s median [min-max];"
        " vs PUT: median [min-max] of each round's ratio to its PUT"
    )
    head = f"{'method':12s} {'MB/s':>8s} {'range':>12s} {'vs PUT':>8s} {'range':>12s} {'CPU s/GB':>9s}"
    print(head + "  target")
    for method in METHODS:
        ratios = [rate / p for rate, p in zip(rates[method], put, strict=True)]
        ratio = statistics.median(ratios)
        verdict = "" if method == "put" else f"tus >= {TARGET}x PUT: {'PASS' if ratio >= TARGET else 'FAIL'}"
        span = f"{min(rates[method]):,.0f}-{max(rates[method]):,.0f}"
        ratio_span = f"{min(ratios):.2f}-{max(ratios):.2f}"
        per_gb = f"{statistics.median(cpu[method]):.2f}" if cpu[method] else "n/a"
        print(
            f"{method:12s} {statistics.median(rates[method]):8,.0f} {span:>12s} {ratio:7.2f}x"
            f" {ratio_span:>12s} {per_gb:>9s}  {verdict}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=4, help="an even number balances the order")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--client-reads",
        action="store_true",
        help="send bodies with read() and send() in 1 MiB pieces instead of sendfile(2)",
    )
    args = parser.parse_args(argv)
    if args.size_mib < 64:
        parser.error("--size-mib must be at least 64")
    # Every upload stays stored (3 per round), the round's 3 sources at once, and some slack.
    need = args.size_mib * MiB * (3 * args.rounds + 4)
    if shutil.disk_usage(args.workdir).free < need:
        print(f"not enough free disk space in {args.workdir}", file=sys.stderr)
        return 2
    try:
        rates, cpu = run(args.size_mib, args.rounds, args.workdir, sendfile=not args.client_reads)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    report(rates, cpu, args.size_mib)
    if args.json:
        doc = {"size_mib": args.size_mib, "rates_mbps": rates, "server_cpu_seconds_per_gb": cpu}
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
