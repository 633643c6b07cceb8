"""Serving the WSGI app with cheroot: threads, TLS, timeouts, clean shutdown."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import logging
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from cheroot import wsgi
from cheroot.makefile import MakeFile
from cheroot.server import ChunkedRFile, HeaderReader, HTTPConnection, HTTPRequest, KnownLengthRFile
from cheroot.ssl.builtin import BuiltinSSLAdapter

from davserver.wsgi import WSGIApp
from webcommon.body import MalformedBody
from webcommon.wsgi import DETACH_KEY

log = logging.getLogger("davserver")


@dataclass(frozen=True)
class ListenSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int = 32
    certfile: Path | None = None
    keyfile: Path | None = None
    #: Seconds a socket read or write may stall before the connection is dropped.
    socket_timeout: float = 60.0
    #: On SIGTERM: seconds in-flight requests (a long PUT) get to finish before they are cut.
    shutdown_seconds: float = 10.0
    #: Seconds a worker waits on a keep-alive connection for its next request when no other
    #: connection is queued (see :class:`FastConnection`); 0 hands it back at once.
    keepalive_linger: float = 0.005


# glibc's mallopt parameter numbers
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def freeze_startup_objects() -> int:
    """Take what was built before serving out of the garbage collector's generations.

    Modules, the app and SQLAlchemy's metadata are ~100,000 objects that live as long as
    the process; a full collection walked them all while holding the GIL, a ~40 ms stop
    of every request thread (2 ms once they are frozen; 2000 PUTs, 2000 GETs, 20
    PROPFINDs and 10 COPY/MOVE pairs through the app in-process). Returns how many.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def tune_malloc(*, arenas: int = 1, heap_below: int = 16 << 20, keep_free: int = 16 << 20) -> bool:
    """Set glibc's allocator for multi-megabyte block buffers; call before the worker threads start.

    * ``arenas``: every thread that allocates gets its own arena (up to 8 per core), and
      block buffers freed in one arena are not reused by another: measured with three
      1 GiB PUT+GET rounds, server RSS grew 112 -> 153 -> 195 MiB with the default and
      stayed at 116 -> 132 -> 134 MiB with two arenas. One arena holds one working set
      where two could each end up holding one: a 2 GiB tus upload in 64 MiB PATCHes
      grew RSS by 51-76 MiB with two arenas but by 140-155 MiB in 6 of 56 runs; with
      one, 35-48 MiB, and 103-112 MiB in 2 of 26 runs. The price is the one lock: 1 GiB
      PUT / GET did not move beyond this VM's noise (4 alternating rounds each, medians
      268 / 609 MiB/s with one arena, 279 / 634 with two), 4 KiB GETs from 4 clients
      neither (1,809 / 1,813 per second, 6 rounds), but durable 4 KiB PUTs from 4 clients
      went from 760 to 694 per second (-9%, medians of 6 alternating rounds; the target
      of 0.8x WsgiDAV is met at 1.2x). Memory that stays bounded under load won.
    * ``heap_below`` and ``keep_free``: allocations up to ``heap_below`` come from the
      heap, not from a fresh mmap each, and up to ``keep_free`` of free memory at the top
      of the heap stays there for the next block instead of going back to the kernel
      (either way a page fault per 4 KiB touched again). Left alone, glibc moves both
      as mmapped chunks are freed, so where they end up depends on earlier allocations:
      when the chunker began keeping its buffer between writes, a 512 MiB GET after a
      PUT went from ~300 to 38,000-79,000 page faults and from 1.75-1.83 to 1.24-1.39
      GB/s. Fixed at 16 MiB each: 4,000-8,000 faults, 1.70-1.74 GB/s; ``keep_free`` at
      8 MiB is too little for a GET's blocks in flight (~80,000 faults, 1.2 GB/s).

    Returns False where there is no glibc (nothing is set).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(
            bool(libc.mallopt(param, value))
            for param, value in (
                (M_ARENA_MAX, arenas),
                (M_MMAP_THRESHOLD, heap_below),
                (M_TRIM_THRESHOLD, keep_free),
            )
        )
    except (OSError, AttributeError):
        return False


class DetachingGateway(wsgi.Gateway_10):
    """cheroot's WSGI 1.0 gateway, plus ``environ[DETACH_KEY]`` for long-polls.

    Calling it hands the request's connection to the caller: cheroot then sends no
    response of its own, reads no further request and does not close the socket
    (its ``linger`` flag), so the worker thread is free again while the caller
    (the notifier's event loop) answers later.
    """

    def get_environ(self) -> dict[str, Any]:  # type: ignore[override]
        environ: dict[str, Any] = super().get_environ()  # type: ignore[no-untyped-call]
        environ[DETACH_KEY] = self._detach
        body = environ.get("wsgi.input")
        if isinstance(body, KnownLengthRFile):
            environ["wsgi.input"] = SocketBody(body, self.req.conn.socket)
        elif isinstance(body, ChunkedRFile):
            environ["wsgi.input"] = self._chunked = ChunkedBody(body)
        return environ

    _chunked: ChunkedBody | None = None

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        """``Connection: close`` from the app closes the connection (cheroot only sends the
        header and reads on), and so does an answer given before the app read a chunked
        body to its end: cheroot drains only bodies of known length, so the rest of the
        chunks was read as the next request (a 401 to a chunked PUT, then "400 Malformed
        Request-Line")."""
        connection = next((v.lower() for k, v in headers if k.lower() == "connection"), None)
        chunked = self._chunked
        if connection is None and chunked is not None and not chunked.finished:
            headers, connection = [*headers, ("Connection", "close")], "close"
        if connection == "close":
            self.req.close_connection = True
        return super().start_response(status, headers, exc_info)

    def write(self, chunk: bytes) -> None:
        """Send the header block and a small first chunk in one system call.

        cheroot writes (and flushes) the headers and every body chunk separately, each
        a poll and a send that also hand the GIL to another request thread; a 4 KiB GET
        then costs two sends where one does.
        """
        req = self.req
        if len(chunk) > COALESCE_BYTES:
            self._write_large(chunk)
            return
        if req.sent_headers:
            super().write(chunk)
            return
        conn = req.conn
        wfile = conn.wfile
        held = _Held()
        conn.wfile = held
        try:
            super().write(chunk)
        finally:
            conn.wfile = wfile
            if held.parts:
                wfile.write(b"".join(held.parts))

    def _write_large(self, chunk: bytes) -> None:
        """A large body chunk straight to the socket.

        cheroot's writer copies every chunk twice while holding the GIL (into its
        buffer, then out of it as bytes) before the send: for a 1 MiB block of a large
        GET that was the biggest Python cost of the response. ``sendall`` sends from the
        chunk itself and releases the GIL while the kernel takes it.
        """
        req = self.req
        rbo = self.remaining_bytes_out
        if req.chunked_write or (rbo is not None and len(chunk) > rbo):
            super().write(chunk)  # cheroot's own framing and its Content-Length guard
            return
        req.ensure_headers_sent()
        conn = req.conn
        conn.socket.sendall(chunk)
        conn.wfile.bytes_written += len(chunk)

    def _detach(self) -> socket.socket:
        req = self.req
        conn = req.conn
        conn.wfile.flush()
        req.sent_headers = True
        req.close_connection = True
        conn.linger = True
        sock: socket.socket = conn.socket
        return sock


class SocketBody:
    """``wsgi.input`` for a body of known length, with a ``readinto`` that skips cheroot's reader.

    cheroot reads bodies through its buffered reader, which is pure-Python ``_pyio``
    and copies every read twice while holding the GIL. ``readinto`` takes what that
    reader buffered along with the headers, then receives the rest with ``recv_into``
    straight into the caller's buffer (short reads, like a raw file's). ``read`` and
    the rest are cheroot's, unchanged; both keep its count of what is left.
    """

    def __init__(self, stream: KnownLengthRFile, sock: socket.socket) -> None:
        self._stream = stream
        # Not "_sock": WsgiDAV takes an input with a ``_sock`` for a raw socket and, to
        # discard an unread body, makes that socket non-blocking under cheroot's reader.
        self._socket = sock

    def read(self, size: int | None = None) -> bytes:
        data: bytes = self._stream.read(size)
        return data

    def readline(self, size: int | None = None) -> bytes:
        line: bytes = self._stream.readline(size)
        return line

    def readlines(self, sizehint: int = 0) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(sizehint)
        return lines

    def __iter__(self) -> Any:
        return iter(self._stream)

    def close(self) -> None:
        self._stream.close()

    def readinto(self, buffer: memoryview) -> int:
        stream = self._stream
        rfile = stream.rfile
        if rfile.has_data():
            # Only what is buffered: asking the reader for more makes it receive the
            # rest of the read itself (its read() fills the whole size).
            data: bytes = stream.read(min(len(buffer), len(rfile.peek())))
            buffer[: len(data)] = data
            return len(data)
        n = min(len(buffer), stream.remaining)
        n = self._socket.recv_into(buffer[:n]) if n else 0
        stream.remaining -= n
        rfile.bytes_read += n
        return n


class ChunkedBody:
    """cheroot's chunked-body reader, whose framing errors are the client's (:class:`MalformedBody`).

    cheroot raises a bare ValueError for a chunk size that is no number, which the app
    could not tell from its own bugs (a 500 and a traceback for a client's bad request).
    """

    def __init__(self, stream: ChunkedRFile) -> None:
        self._stream = stream

    def read(self, size: int | None = None) -> bytes:
        with _framing():
            data: bytes = self._stream.read(size)
        return data

    def readline(self, size: int | None = None) -> bytes:
        with _framing():
            line: bytes = self._stream.readline(size)
        return line

    def readlines(self, sizehint: int = 0) -> list[bytes]:
        with _framing():
            lines: list[bytes] = self._stream.readlines(sizehint)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def close(self) -> None:
        self._stream.close()

    @property
    def finished(self) -> bool:
        """Whether the last chunk has been read."""
        return bool(self._stream.closed)


@contextlib.contextmanager
def _framing() -> Iterator[None]:
    try:
        yield
    except ValueError as exc:
        raise MalformedBody(f"bad chunked encoding: {exc}") from None


class _CountingSocketIO(socket.SocketIO):
    """The raw socket file under :class:`SocketReader`, counting what it received."""

    received = 0

    def readinto(self, b: Any) -> int | None:
        n = super().readinto(b)
        if n:
            self.received += n
        return n


class SocketReader(io.BufferedReader):
    """cheroot's request reader on C ``io`` instead of its pure-Python ``_pyio``.

    cheroot reads every request line and header line through ``_pyio``'s
    ``readline``, a dozen Python calls per line while holding the GIL: about a tenth
    of a small PUT's server time. The C reader does the same work without them. What
    cheroot asks of its reader besides the standard methods is kept: ``bytes_read``
    (what ``read`` returned) and ``has_data()`` (buffered bytes left, for a pipelined
    request), here what the socket delivered minus what every reading method handed out.
    """

    def __init__(self, sock: socket.socket, bufsize: int) -> None:
        self._socket_io = _CountingSocketIO(sock, "rb")
        super().__init__(self._socket_io, bufsize)
        self.bytes_read = 0
        self._handed_out = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        self._handed_out += len(data)
        return data

    def read1(self, size: int = -1) -> bytes:
        data = super().read1(size)
        self._handed_out += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        self._handed_out += len(line)
        return line

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer)
        self._handed_out += n
        return n

    def readinto1(self, buffer: Any) -> int:
        n = super().readinto1(buffer)
        self._handed_out += n
        return n

    def has_data(self) -> bool:
        return self._socket_io.received > self._handed_out


#: Headers a request may carry once (RFC 9112 3.2, 6.3): with two different values, the proxy in
#: front and this server could each see a different request (smuggling).
_SINGLE_HEADERS = frozenset({b"Content-Length", b"Host"})


class _SingleValued(dict[bytes, bytes]):
    def __setitem__(self, key: bytes, value: bytes) -> None:
        if key in _SINGLE_HEADERS and self.get(key, value) != value:
            raise ValueError(f"conflicting {key.decode()} headers")
        super().__setitem__(key, value)


class StrictHeaderReader(HeaderReader):
    """cheroot's header reader, refusing a request with conflicting Content-Length or Host
    headers (400) where cheroot keeps the last one. Repeats of one value are accepted."""

    def __call__(self, rfile: Any, hdict: dict[bytes, bytes] | None = None) -> dict[bytes, bytes]:
        read = _SingleValued()
        super().__call__(rfile, read)
        if hdict is None:
            return dict(read)
        hdict.update(read)
        return hdict


class StrictRequest(HTTPRequest):
    header_reader = StrictHeaderReader()


class FastConnection(HTTPConnection):
    """cheroot's connection with :class:`SocketReader` on plain TCP (TLS keeps the adapter's).

    After a keep-alive response the worker waits a few milliseconds (the server's
    ``keepalive_linger``) for the client's next request and serves it itself, as long as
    no other connection is queued for a worker. cheroot alone hands every idle
    connection back to its selector thread, which wakes on the next request and queues
    the connection for a worker: two thread hand-offs per request, each waiting for the
    GIL. Serving a run of small requests (a sync client's GETs, a file manager's
    PROPFINDs) on one worker served 15-35% more 4 KiB GETs per second with 4 clients
    (two sets of alternating runs).
    A connection quiet for longer goes back to the selector as before, so a lingering
    worker delays a newly queued connection by at most the linger time.
    """

    RequestHandlerClass = StrictRequest

    def __init__(self, server: Any, sock: socket.socket, makefile: Any = MakeFile) -> None:
        def files(sock: socket.socket, mode: str = "r", bufsize: int = io.DEFAULT_BUFFER_SIZE) -> Any:
            if makefile is MakeFile and "r" in mode:
                return SocketReader(sock, bufsize)
            return makefile(sock, mode, bufsize)

        super().__init__(server, sock, files)
        self._poller: select.poll | None = None

    def communicate(self) -> bool:
        keep: bool = super().communicate()  # type: ignore[no-untyped-call]
        while keep and self._next_request_soon():
            keep = super().communicate()  # type: ignore[no-untyped-call]
        return keep

    def _next_request_soon(self) -> bool:
        """Whether this worker should read the next request now (it has come, or comes soon)."""
        rfile = self.rfile
        if not isinstance(rfile, SocketReader):
            return False  # TLS: data may wait decrypted in the adapter, unseen by poll
        if rfile.has_data():
            return True  # pipelined
        server = self.server
        linger = server.keepalive_linger
        if linger <= 0 or not server.ready or server.requests.qsize:
            return False
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self.socket, select.POLLIN)
        return bool(self._poller.poll(linger * 1000))


#: Largest first body chunk sent together with the headers (a copy of that size is cheap).
COALESCE_BYTES = 64 * 1024


class _Held:
    """Stands in for a connection's write file while cheroot composes one response piece."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)


class Server(wsgi.Server):
    """cheroot's WSGI server carrying the settings :class:`FastConnection` reads."""

    keepalive_linger = 0.0


def make_server(app: WSGIApp, listen: ListenSettings) -> Server:
    server = Server(
        (listen.host, listen.port),
        app,
        numthreads=listen.threads,
        server_name="davserver",
        timeout=int(listen.socket_timeout),
        # Room for bursts of new connections (thousands of long-polls reconnecting).
        request_queue_size=1024,
        shutdown_timeout=max(1, round(listen.shutdown_seconds)),
    )
    server.gateway = DetachingGateway
    server.ConnectionClass = FastConnection
    server.keepalive_linger = listen.keepalive_linger
    # Bodies are bounded by the app (413 before reading, abort past the limit).
    server.max_request_body_size = 0
    server.max_request_header_size = 64 * 1024
    if listen.certfile is not None and listen.keyfile is not None:
        server.ssl_adapter = BuiltinSSLAdapter(str(listen.certfile), str(listen.keyfile))
    return server


def serve_forever(server: wsgi.Server, on_ready: Callable[[str], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then finish in-flight requests and return."""
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, _stop)
    try:
        server.prepare()
        if on_ready is not None:
            on_ready(bound_url(server))
        runner = threading.Thread(target=server.serve, name="cheroot", daemon=True)
        runner.start()
        while not stop.wait(0.5):
            if not runner.is_alive():
                break
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def bound_url(server: wsgi.Server) -> str:
    host, port = server.bind_addr[:2]
    scheme = "https" if server.ssl_adapter is not None else "http"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"
