"""Serving the WSGI app with cheroot: threads, TLS, timeouts, clean shutdown."""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from davserver.wsgi import WSGIApp

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


M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's per-thread malloc arenas; call before the worker threads start.

    Every thread that allocates gets its own arena (up to 8 per core), and
    multi-megabyte block buffers freed in one arena are not reused by another:
    measured with three 1 GiB PUT+GET rounds, server RSS grew 112 -> 153 -> 195
    MiB with the default and stayed at 116 -> 132 -> 134 MiB with two arenas.
    Returns False where there is no glibc (the call is skipped).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def make_server(app: WSGIApp, listen: ListenSettings) -> wsgi.Server:
    server = wsgi.Server(
        (listen.host, listen.port),
        app,
        numthreads=listen.threads,
        server_name="davserver",
        timeout=int(listen.socket_timeout),
        request_queue_size=128,
        shutdown_timeout=10,
    )
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
