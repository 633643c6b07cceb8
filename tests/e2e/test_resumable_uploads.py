"""Resumable uploads against the real server: tuspy through a SIGKILL, the resumable
protocol over raw HTTP through a dropped connection, tus concatenation in parallel."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
from tusclient import client as tus_client

from tests.e2e.harness import DavServer, wait_until

MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}


def _auth(srv: DavServer, name: str = "alice") -> str:
    return "Basic " + base64.b64encode(f"{name}:{srv.accounts[name]}".encode()).decode()


def _random_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size // MiB):
            block = os.urandom(MiB)
            h.update(block)
            f.write(block)
    return h.hexdigest()


class _SlowAfter(io.BufferedReader):
    """A file that reads slowly past ``mark``: the upload is surely still going when the server dies."""

    def __init__(self, path: Path, mark: int) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self._mark = mark

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self._mark:
            time.sleep(0.2)
        return super().read(size)


def _on_port(url: str, srv: DavServer) -> str:
    """The same upload URL on the server's current address (it listens on a new port after a restart)."""
    return srv.url + urlsplit(url).path


def test_tuspy_resumes_after_the_server_is_killed(make_server: Any, tmp_path: Path) -> None:
    srv: DavServer = make_server("tus-kill")
    source = tmp_path / "big.bin"
    digest = _random_file(source, 200 * MiB)
    meta = {"path": "/big.bin", "mtime": "1600000000"}
    client = tus_client.TusClient(srv.url + "/api/v1/uploads/", headers={"Authorization": _auth(srv)})
    # tuspy opens file paths without closing them; a stream we own is closed.
    stream = _SlowAfter(source, 48 * MiB)
    uploader = client.uploader(file_stream=stream, chunk_size=8 * MiB, metadata=meta, upload_checksum=True)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            uploader.upload()
        except BaseException as exc:  # the server dies under it
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert wait_until(lambda: uploader.offset >= 48 * MiB, timeout=120)
    # A status request commits what was answered so far: that offset must survive the kill.
    with srv.client("alice") as c:
        durable = int(c.head(uploader.url, headers=TUS).headers["Upload-Offset"])
    assert durable >= 48 * MiB
    srv.kill()
    worker.join(timeout=60)
    assert failure, "the upload should have failed when the server died"
    sent_before = uploader.offset
    srv.start()
    client.url = srv.url + "/api/v1/uploads/"
    stream.close()
    stream = source.open("rb")  # type: ignore[assignment]
    resumed = client.uploader(
        file_stream=stream,
        url=_on_port(uploader.url, srv),
        chunk_size=8 * MiB,
        metadata=meta,
        upload_checksum=True,
    )
    assert durable <= resumed.offset <= sent_before + 8 * MiB  # the server's durable offset
    assert resumed.offset % (8 * MiB) == 0  # whole PATCHes only: the killed one left nothing behind
    resumed.upload()
    stream.close()
    with srv.client("alice") as c:
        down = hashlib.sha256()
        with c.stream("GET", "/api/v1/files/download", params={"path": "/big.bin"}) as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                down.update(chunk)
        assert down.hexdigest() == digest
        meta_doc = c.get("/api/v1/files/metadata", params={"path": "/big.bin"}).json()
        assert meta_doc["content_sha256"] == digest and meta_doc["mtime"] == 1_600_000_000
        revisions = c.get("/api/v1/files/list_revisions", params={"path": "/big.bin"}).json()["revisions"]
        assert len(revisions) == 1
        head = c.head(_on_port(resumed.url, srv), headers=TUS)
        assert head.headers["Upload-Offset"] == str(200 * MiB)


def _send_partial(srv: DavServer, path: str, start: int, body: bytes, total: int) -> None:
    """One PUT of the resumable protocol that dies after half of its body."""
    u = urlsplit(srv.url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        head = (
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {_auth(srv)}\r\n"
            f"Content-Range: bytes {start}-{start + len(body) - 1}/{total}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        s.sendall(head.encode() + body[: len(body) // 2])
        s.shutdown(socket.SHUT_RDWR)


def test_the_resumable_protocol_over_raw_http_survives_a_dropped_connection(make_server: Any) -> None:
    srv: DavServer = make_server("resumable")
    data = os.urandom(24 * MiB + 12345)
    total = len(data)
    with srv.client("alice") as c:
        start = c.post(
            "/api/v1/files/upload",
            params={"uploadType": "resumable", "path": "/g.bin"},
            headers={"X-Upload-Content-Length": str(total)},
        )
        assert start.status_code == 200
        session = start.headers["Location"]
        first = c.put(
            session, headers={"Content-Range": f"bytes 0-{8 * MiB - 1}/{total}"}, content=data[: 8 * MiB]
        )
        assert first.status_code == 308 and first.headers["Range"] == f"bytes=0-{8 * MiB - 1}"
        _send_partial(srv, session, 8 * MiB, data[8 * MiB : 16 * MiB], total)

        # The dropped request may still be finishing on the server: ask until the answer holds still.
        answers: list[str] = []

        def settled() -> bool:
            status = c.put(session, headers={"Content-Range": f"bytes */{total}"})
            assert status.status_code == 308
            answers.append(status.headers["Range"])
            time.sleep(0.3)
            return len(answers) >= 3 and len(set(answers[-3:])) == 1

        assert wait_until(settled, timeout=30)
        held = int(answers[-1].rpartition("-")[2]) + 1
        assert 8 * MiB <= held <= 12 * MiB  # what arrived before the drop may be kept
        rest = c.put(
            session, headers={"Content-Range": f"bytes {held}-{total - 1}/{total}"}, content=data[held:]
        )
        assert rest.status_code == 201
        assert rest.json()["content_sha256"] == hashlib.sha256(data).hexdigest()
        assert c.get("/api/v1/files/download", params={"path": "/g.bin"}).content == data


def test_four_partial_uploads_in_parallel_are_concatenated(make_server: Any) -> None:
    srv: DavServer = make_server("concat")
    data = os.urandom(16 * MiB + 999)
    quarter = len(data) // 4
    pieces = [data[i * quarter : (i + 1) * quarter] for i in range(3)] + [data[3 * quarter :]]
    urls: list[str] = [""] * 4

    def send(i: int) -> None:
        with httpx.Client(base_url=srv.url, headers={"Authorization": _auth(srv), **TUS}, timeout=60) as c:
            r = c.post(
                "/api/v1/uploads/", headers={"Upload-Length": str(len(pieces[i])), "Upload-Concat": "partial"}
            )
            assert r.status_code == 201
            urls[i] = r.headers["Location"]
            patch = c.patch(
                urls[i],
                headers={"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
                content=pieces[i],
            )
            assert patch.status_code == 204

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(urls)
    with httpx.Client(base_url=srv.url, headers={"Authorization": _auth(srv), **TUS}, timeout=60) as c:
        meta = "path " + base64.b64encode(b"/joined.bin").decode()
        final = c.post(
            "/api/v1/uploads/", headers={"Upload-Concat": "final;" + " ".join(urls), "Upload-Metadata": meta}
        )
        assert final.status_code == 201
        head = c.head(final.headers["Location"])
        assert head.headers["Upload-Offset"] == str(len(data)) and head.headers["Upload-Concat"] == "final"
        assert c.get("/api/v1/files/download", params={"path": "/joined.bin"}).content == data


def test_memory_stays_flat_during_a_2_gib_resumable_upload(make_server: Any) -> None:
    size_mib = 2048
    srv: DavServer = make_server("tus-rss")
    assert srv.proc is not None
    proc = psutil.Process(srv.proc.pid)
    baseline = proc.memory_info().rss
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    chunk = os.urandom(MiB)
    total = size_mib * MiB
    try:
        with httpx.Client(base_url=srv.url, headers={"Authorization": _auth(srv), **TUS}, timeout=120) as c:
            meta = "path " + base64.b64encode(b"/huge.bin").decode()
            url = c.post(
                "/api/v1/uploads/", headers={"Upload-Length": str(total), "Upload-Metadata": meta}
            ).headers["Location"]
            offset = 0
            piece = 8 * MiB  # answered appends gather in batches of 64 MiB before they commit
            while offset < total:
                body = (chunk for _ in range(piece // MiB))
                r = c.patch(
                    url,
                    headers={
                        "Upload-Offset": str(offset),
                        "Content-Type": "application/offset+octet-stream",
                        "Content-Length": str(piece),
                    },
                    content=body,
                )
                assert r.status_code == 204, r.text
                offset = int(r.headers["Upload-Offset"])
    finally:
        stop.set()
        sampler.join()
    growth = peak[0] - baseline
    assert growth < 150 * MiB, f"peak RSS grew {growth / MiB:.0f} MiB"
    with srv.client("alice") as c:
        assert c.get("/api/v1/files/metadata", params={"path": "/huge.bin"}).json()["size"] == total
