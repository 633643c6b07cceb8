"""The server's request reader (SocketReader) and wsgi.input (SocketBody), over a socket pair.

SocketBody is tested over both readers: cheroot's own (what TLS connections keep) and ours.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from cheroot.makefile import StreamReader
from cheroot.server import KnownLengthRFile

from davserver.server import SocketBody, SocketReader
from webcommon.body import RequestBody

Reader = Callable[[socket.socket], Any]


@pytest.fixture(params=["cheroot", "davserver"])
def reader(request: pytest.FixtureRequest) -> Reader:
    if request.param == "cheroot":
        return lambda sock: StreamReader(sock, "rb")
    return lambda sock: SocketReader(sock, 8192)


def _body_over_socket(reader: Reader, sent: bytes, declared: int) -> tuple[RequestBody, socket.socket]:
    server, client = socket.socketpair()
    rfile = reader(server)

    def send() -> None:
        client.sendall(b"HEADERS\r\n" + sent)
        client.close()

    threading.Thread(target=send).start()
    assert rfile.readline() == b"HEADERS\r\n"  # the reader has buffered part of the body now
    return RequestBody(SocketBody(KnownLengthRFile(rfile, declared), server), declared), server


def _drain(body: RequestBody) -> bytes:
    out = bytearray()
    buf = bytearray(300_000)
    while n := body.readinto(memoryview(buf)):
        out += buf[:n]
    return bytes(out)


def test_a_body_is_read_from_the_buffer_then_straight_from_the_socket(reader: Reader) -> None:
    data = os.urandom(3_000_000)
    body, server = _body_over_socket(reader, data, len(data))
    with server:
        assert isinstance(body._stream, SocketBody)  # the direct path is the one under test
        buf = bytearray(300_000)
        first = body.readinto(memoryview(buf))
        assert 0 < first <= 8192  # only what cheroot's reader had buffered, not a read through it
        assert bytes(buf[:first]) + _drain(body) == data
        assert body.received == len(data)


def test_a_client_that_hangs_up_early_gives_a_short_body(reader: Reader) -> None:
    data = os.urandom(500_000)
    body, server = _body_over_socket(reader, data, len(data) + 1000)
    with server:
        assert _drain(body) == data
        assert body.received == len(data)


def test_without_the_socket_the_reader_is_used(reader: Reader) -> None:
    data = os.urandom(100_000)
    server, client = socket.socketpair()
    with server, client:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        body = RequestBody(KnownLengthRFile(reader(server), len(data)), len(data))
        assert _drain(body) == data


def test_wsgidav_discarding_an_unread_body_leaves_the_socket_blocking(reader: Reader) -> None:
    """WsgiDAV's read_and_discard_input treats an input with ``_sock`` as a raw socket and
    sets it non-blocking: cheroot's reader then got None mid-drain (a logged TypeError)."""
    from wsgidav.util import read_and_discard_input

    server, client = socket.socketpair()
    with server, client:
        server.settimeout(30)
        environ = {
            "CONTENT_LENGTH": "10",
            "wsgi.input": SocketBody(KnownLengthRFile(reader(server), 10), server),
        }
        read_and_discard_input(environ)
        assert server.gettimeout() == 30


def test_the_reader_knows_when_a_pipelined_request_is_buffered() -> None:
    """cheroot asks ``has_data()`` after each request: True sends the connection straight
    back to a worker (the next request is already buffered), False waits on the socket.
    A wrong True would block a worker on an idle connection; a wrong False would leave a
    pipelined request unanswered."""
    server, client = socket.socketpair()
    with server, client:
        rfile = SocketReader(server, 8192)
        assert not rfile.has_data()
        client.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPUT /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        assert rfile.readline() == b"GET /a HTTP/1.1\r\n"
        assert rfile.readline() == b"Host: x\r\n"
        assert rfile.readline() == b"\r\n"
        assert rfile.has_data()  # the PUT came in the same read
        assert rfile.readline() == b"PUT /b HTTP/1.1\r\n"
        assert rfile.readline(100) == b"Content-Length: 5\r\n"
        assert rfile.readline() == b"\r\n"
        assert rfile.has_data()
        assert rfile.bytes_read == 0  # cheroot counts what read() hands out (bodies), not lines
        assert rfile.read(2) == b"he"
        buf = bytearray(3)
        assert rfile.readinto(buf) == 3 and buf == b"llo"
        assert not rfile.has_data()
        assert rfile.bytes_read == 2
        client.sendall(b"tail")
        assert rfile.read1(10) == b"tail"
        assert not rfile.has_data()
        client.sendall(b"line\nrest")
        assert next(rfile) == b"line\n"  # iteration goes through readline, and is counted
        assert rfile.has_data()
        assert rfile.read(4) == b"rest"
        assert not rfile.has_data()
