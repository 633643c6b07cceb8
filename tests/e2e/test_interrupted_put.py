"""A PUT cut off by the client, or by SIGKILL of the server, leaves the old version and no partial file."""

from __future__ import annotations

import base64
import os
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.e2e.harness import DavServer, wait_until


def _start_put(srv: DavServer, path: str, declared: int, sent: bytes) -> socket.socket:
    u = urlsplit(srv.url)
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    cred = base64.b64encode(f"alice:{srv.accounts['alice']}".encode()).decode()
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {cred}\r\n"
        f"Content-Length: {declared}\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    s.sendall(head.encode())
    for i in range(0, len(sent), 1 << 16):
        s.sendall(sent[i : i + (1 << 16)])
    return s


def _assert_clean_store(srv: DavServer) -> None:
    """No orphan objects or inconsistencies; gc reclaims the aborted blocks."""
    engine = srv.engine()
    try:
        engine.gc(grace_seconds=0)
        report = engine.fsck(deep=True)
        assert report.clean, report.problems
        assert report.unreferenced_blocks == 0
        assert report.orphan_objects == 0
    finally:
        engine.close()


def test_client_disconnect_mid_body_keeps_old_version(make_server) -> None:  # type: ignore[no-untyped-def]
    srv: DavServer = make_server("disconnect")
    old = os.urandom(300_000)
    with srv.client("alice") as c:
        assert c.put("/dav/doc.bin", content=old).status_code == 201
    # 20 MiB declared, 6 MiB sent (several blocks), then the client goes away.
    s = _start_put(srv, "/dav/doc.bin", 20 << 20, os.urandom(6 << 20))
    s.close()
    s2 = _start_put(srv, "/dav/new.bin", 20 << 20, os.urandom(5 << 20))
    s2.shutdown(socket.SHUT_RDWR)
    s2.close()
    with srv.client("alice") as c:

        def settled() -> bool:
            return c.get("/dav/doc.bin").content == old and c.get("/dav/new.bin").status_code == 404

        assert wait_until(settled, timeout=20)
        listing = c.request("PROPFIND", "/dav/", headers={"Depth": "1"}).text
        assert "new.bin" not in listing
        # Let the server finish its abort before inspecting the store.
        time.sleep(1)
    srv.stop()
    _assert_clean_store(srv)


@pytest.mark.parametrize("target", ["existing", "new"])
def test_sigkill_mid_put_keeps_old_version(make_server, target: str) -> None:  # type: ignore[no-untyped-def]
    srv: DavServer = make_server(f"kill-{target}")
    old = os.urandom(500_000)
    with srv.client("alice") as c:
        assert c.put("/dav/existing.bin", content=old).status_code == 201
    s = _start_put(srv, f"/dav/{target}.bin", 64 << 20, os.urandom(12 << 20))
    time.sleep(0.5)  # let the server chunk and store some blocks
    srv.kill()
    s.close()
    srv.start()
    with srv.client("alice") as c:
        assert c.get("/dav/existing.bin").content == old
        if target == "new":
            assert c.get("/dav/new.bin").status_code == 404
        # And the server accepts the same upload afterwards.
        fresh = os.urandom(3 << 20)
        assert c.put(f"/dav/{target}.bin", content=fresh).status_code in (201, 204)
        assert c.get(f"/dav/{target}.bin").content == fresh
    srv.stop()
    _assert_clean_store(srv)
