"""The server's wsgi.input (SocketBody) under RequestBody, over cheroot's own readers and a socket pair."""

from __future__ import annotations

import os
import socket
import threading

from cheroot.makefile import StreamReader
from cheroot.server import KnownLengthRFile

from davserver.server import SocketBody
from sync_ext.api.body import RequestBody


def _body_over_socket(sent: bytes, declared: int) -> tuple[RequestBody, socket.socket]:
    server, client = socket.socketpair()
    rfile = StreamReader(server, "rb")

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


def test_a_body_is_read_from_the_buffer_then_straight_from_the_socket() -> None:
    data = os.urandom(3_000_000)
    body, server = _body_over_socket(data, len(data))
    with server:
        assert isinstance(body._stream, SocketBody)  # the direct path is the one under test
        buf = bytearray(300_000)
        first = body.readinto(memoryview(buf))
        assert 0 < first <= 8192  # only what cheroot's reader had buffered, not a read through it
        assert bytes(buf[:first]) + _drain(body) == data
        assert body.received == len(data)


def test_a_client_that_hangs_up_early_gives_a_short_body() -> None:
    data = os.urandom(500_000)
    body, server = _body_over_socket(data, len(data) + 1000)
    with server:
        assert _drain(body) == data
        assert body.received == len(data)


def test_without_the_socket_the_reader_is_used() -> None:
    data = os.urandom(100_000)
    server, client = socket.socketpair()
    with server, client:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        body = RequestBody(KnownLengthRFile(StreamReader(server, "rb"), len(data)), len(data))
        assert _drain(body) == data


def test_wsgidav_discarding_an_unread_body_leaves_the_socket_blocking() -> None:
    """WsgiDAV's read_and_discard_input treats an input with ``_sock`` as a raw socket and
    sets it non-blocking: cheroot's reader then got None mid-drain (a logged TypeError)."""
    from wsgidav.util import read_and_discard_input

    server, client = socket.socketpair()
    with server, client:
        server.settimeout(30)
        environ = {
            "CONTENT_LENGTH": "10",
            "wsgi.input": SocketBody(KnownLengthRFile(StreamReader(server, "rb"), 10), server),
        }
        read_and_discard_input(environ)
        assert server.gettimeout() == 30
