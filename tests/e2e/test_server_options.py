"""Server options end to end: TLS, the AppleDouble policy, bounded PROPFIND depth."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import signal
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.conftest import PASSWORDS
from tests.e2e.harness import wait_until


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = _self_signed(tmp_path)
    srv = make_server("tls", settings={"certfile": str(cert), "keyfile": str(key)})
    assert srv.url.startswith("https://")
    ctx = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(base_url=srv.url, auth=("alice", PASSWORDS["alice"]), verify=ctx) as c:
        assert c.put("/dav/secure.txt", content=b"over tls").status_code == 201
        assert c.get("/dav/secure.txt").content == b"over tls"
        # Large bodies leave cheroot's writer (straight to the socket): over TLS too.
        big = os.urandom(5 << 20)
        assert c.put("/dav/big.bin", content=big).status_code == 201
        assert c.get("/dav/big.bin").content == big
        assert c.get("/dav/big.bin", headers={"Range": "bytes=1000-2099999"}).content == big[1000:2100000]
        # A long-poll's connection leaves the worker thread; its answer still goes out over TLS.
        cursor = c.get("/api/v1/changes/latest_cursor").json()["cursor"]
        poller = httpx.Client(base_url=srv.url, auth=("alice", PASSWORDS["alice"]), verify=ctx)
        with poller, ThreadPoolExecutor(1) as pool:
            params = {"cursor": cursor, "timeout": 30}
            poll = pool.submit(poller.get, "/api/v1/changes/longpoll", params=params)
            assert c.put("/dav/wake.txt", content=b"w").status_code == 201
            assert poll.result(timeout=15).json() == {"changes": True}
    # Plain HTTP on the TLS port gets nowhere.
    plain_url = srv.url.replace("https://", "http://")
    try:
        status: int | None = httpx.get(plain_url + "/healthz", timeout=5).status_code
    except httpx.HTTPError:
        status = None
    assert status != 200


def test_apple_double_refuse_policy(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server("apple", settings={"apple_double": "refuse"})
    with srv.client("alice") as c:
        assert c.put("/dav/._photo.jpg", content=b"\x00\x05\x16\x07").status_code == 403
        assert c.put("/dav/.DS_Store", content=b"Bud1").status_code == 403
        assert c.request("MKCOL", "/dav/._dir").status_code == 403
        assert c.put("/dav/photo.jpg", content=b"jpeg").status_code == 201
        r = c.request("MOVE", "/dav/photo.jpg", headers={"Destination": "/dav/._photo.jpg"})
        assert r.status_code == 403
        assert c.get("/dav/photo.jpg").content == b"jpeg"


def test_apple_double_store_policy_is_the_default(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server("apple-store")
    with srv.client("alice") as c:
        assert c.put("/dav/._photo.jpg", content=b"\x00\x05\x16\x07").status_code == 201
        assert c.get("/dav/._photo.jpg").content == b"\x00\x05\x16\x07"


def test_propfind_infinity_when_enabled(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server("infinity", settings={"propfind_infinity": True})
    with srv.client("alice") as c:
        c.request("MKCOL", "/dav/a")
        c.request("MKCOL", "/dav/a/b")
        c.put("/dav/a/b/deep.txt", content=b"d")
        r = c.request("PROPFIND", "/dav/", headers={"Depth": "infinity"})
        assert r.status_code == 207
        assert "/dav/a/b/deep.txt" in r.text


def test_size_limit_on_declared_and_chunked_bodies(make_server) -> None:  # type: ignore[no-untyped-def]
    """The 10 GB limit, scaled down: 413 before reading a declared body; a chunked one is aborted."""
    srv = make_server("limit", settings={"max_file_size": "1M"})
    with srv.client("alice") as c:
        assert c.put("/dav/ok.bin", content=b"o" * 1000).status_code == 201
        r = c.put("/dav/ok.bin", content=b"x" * (2 << 20))
        assert r.status_code == 413
        chunks = iter([b"y" * (256 << 10)] * 8)  # 2 MiB, no Content-Length
        r = c.put("/dav/ok.bin", content=chunks)
        assert r.status_code == 413
        r = c.put("/dav/new.bin", content=iter([b"z" * (256 << 10)] * 8))
        assert r.status_code == 413
        assert c.get("/dav/ok.bin").content == b"o" * 1000
        assert c.get("/dav/new.bin").status_code == 404
        assert c.put("/dav/edge.bin", content=iter([b"e" * (512 << 10)] * 2)).status_code == 201


def test_a_stopping_server_lets_an_upload_in_flight_finish(make_server) -> None:  # type: ignore[no-untyped-def]
    """A rolling restart: SIGTERM closes the listening socket at once, but a PUT already
    sending its body gets ``shutdown_seconds`` to finish, and is committed."""
    srv = make_server(settings={"shutdown_seconds": 30})
    host, port = srv.url.removeprefix("http://").split(":")
    body = os.urandom(3 << 20)
    auth = base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            f"PUT /dav/in-flight.bin HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: 1 << 20])
        time.sleep(0.5)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: not _accepts(host, int(port)), timeout=10), "still accepting"
        for i in range(1, 3):  # the rest, slowly
            time.sleep(1)
            sock.sendall(body[i << 20 : (i + 1) << 20])
        answer = sock.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 201"), answer
    srv.stop()  # (already exiting: this waits for it and reaps its pipes)
    srv.start()
    with srv.client("alice") as c:
        assert c.get("/dav/in-flight.bin").content == body


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
