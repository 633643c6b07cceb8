"""Connections: a worker serves a keep-alive client's next request itself, within limits;
headers a request may carry only once are checked.

These run cheroot with ``make_server`` on a real port and a tiny WSGI app that reports
which worker thread answered.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from davserver.server import ListenSettings, Server, make_server


def _thread_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = str(threading.get_ident()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@contextmanager
def _serving(**settings: Any) -> Iterator[Server]:
    server = make_server(_thread_app, ListenSettings(port=0, **settings))  # type: ignore[arg-type]
    server.prepare()
    runner = threading.Thread(target=server.serve, daemon=True)
    runner.start()
    try:
        yield server
    finally:
        server.stop()
        runner.join(10)


def _port(server: Server) -> int:
    return int(server.bind_addr[1])


def _workers(conn: http.client.HTTPConnection, requests: int) -> list[str]:
    seen = []
    for _ in range(requests):
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200
        seen.append(resp.read().decode())
    return seen


def test_a_run_of_requests_on_one_connection_stays_on_one_worker() -> None:
    # A long linger makes the hand-back impossible between back-to-back requests; without
    # lingering, cheroot's queue hands the connection to the longest-idle worker each time.
    with _serving(threads=4, keepalive_linger=5.0) as server:
        conn = http.client.HTTPConnection("127.0.0.1", _port(server), timeout=30)
        try:
            assert len(set(_workers(conn, 12))) == 1
        finally:
            conn.close()


def test_without_linger_the_connection_goes_back_to_the_pool() -> None:
    with _serving(threads=4, keepalive_linger=0) as server:
        conn = http.client.HTTPConnection("127.0.0.1", _port(server), timeout=30)
        try:
            assert len(set(_workers(conn, 12))) > 1
        finally:
            conn.close()


def test_an_idle_connection_does_not_keep_the_only_worker_from_others() -> None:
    # One worker, lingering on a client that stays connected but sends nothing more: a
    # second client is still served once the linger runs out (a liveness check, no timing).
    with _serving(threads=1, keepalive_linger=0.2) as server:
        idle = http.client.HTTPConnection("127.0.0.1", _port(server), timeout=30)
        other = http.client.HTTPConnection("127.0.0.1", _port(server), timeout=30)
        try:
            _workers(idle, 1)
            assert len(_workers(other, 3)) == 3
            # The idle connection was handed back, not dropped: it is still served.
            assert len(_workers(idle, 1)) == 1
        finally:
            idle.close()
            other.close()


def test_a_client_that_hangs_up_while_the_worker_lingers_is_closed_cleanly() -> None:
    with _serving(threads=1, keepalive_linger=30.0) as server:
        with socket.create_connection(("127.0.0.1", _port(server)), timeout=30) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        # The only worker saw the hang-up instead of waiting out its 30 s linger: the next
        # client is served well within its own timeout.
        conn = http.client.HTTPConnection("127.0.0.1", _port(server), timeout=10)
        try:
            assert len(_workers(conn, 1)) == 1
        finally:
            conn.close()


def _raw(server: Server, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_conflicting_content_length_or_host_headers_are_refused() -> None:
    # cheroot alone keeps the last Content-Length: a proxy that kept the first would forward
    # a different request than the one served here (request smuggling).
    with _serving(threads=2) as server:
        two_lengths = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"
        assert _raw(server, two_lengths).startswith(b"HTTP/1.1 400 ")
        two_hosts = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"
        assert _raw(server, two_hosts).startswith(b"HTTP/1.1 400 ")
        same_twice = (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n"
            b"Connection: close\r\n\r\nabc"
        )
        assert _raw(server, same_twice).startswith(b"HTTP/1.1 200 ")
