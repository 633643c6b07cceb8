"""Plain WsgiDAV (FilesystemProvider over a folder) on cheroot: the baseline of ``bench.dav_vs_wsgidav``.

Run ``python -m bench.wsgidav_server --root DIR [--port 0] [--threads 8] [--user bench]``; the password
comes from the ``BENCH_WSGIDAV_PASSWORD`` environment variable. When ready it prints
``wsgidav serving http://127.0.0.1:PORT/dav/`` on stderr, like ``davserver serve`` does, and it stops
cleanly on SIGTERM or SIGINT.

The share is mounted at ``/dav`` so both servers see the same request paths. WsgiDAV gets its
defaults except for what makes the comparison fair: 1 MiB ``block_size`` (as davserver), Basic auth
only (SimpleDomainController), logging off. The cheroot settings copy ``davserver.server.make_server``
(thread count, timeout, queue size, no body-size limit), without importing davserver.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from cheroot import wsgi
from wsgidav.fs_dav_provider import FilesystemProvider
from wsgidav.wsgidav_app import WsgiDAVApp

PASSWORD_ENV = "BENCH_WSGIDAV_PASSWORD"


def make_app(root: str, user: str, password: str) -> WsgiDAVApp:
    config = {
        "provider_mapping": {"/dav": FilesystemProvider(root)},
        "simple_dc": {"user_mapping": {"*": {user: {"password": password}}}},
        "http_authenticator": {
            "domain_controller": None,  # SimpleDomainController
            "accept_basic": True,
            "accept_digest": False,
            "default_to_digest": False,
        },
        "block_size": 1 << 20,
        "lock_storage": True,  # the default: in-memory LockStorageDict
        "logging": {"enable": False},
        "verbose": 0,
    }
    return WsgiDAVApp(config)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.wsgidav_server", description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="folder to serve (must exist)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--user", default="bench")
    args = ap.parse_args(argv)
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        ap.error(f"set {PASSWORD_ENV}")

    server = wsgi.Server(
        (args.host, args.port),
        make_app(args.root, args.user, password),
        numthreads=args.threads,
        server_name="wsgidav",
        timeout=60,
        request_queue_size=128,
        shutdown_timeout=10,
    )
    server.max_request_body_size = 0
    server.max_request_header_size = 64 * 1024

    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.prepare()
    host, port = server.bind_addr[:2]
    print(f"wsgidav serving http://{host}:{port}/dav/", file=sys.stderr, flush=True)
    runner = threading.Thread(target=server.serve, name="cheroot", daemon=True)
    runner.start()
    try:
        while not stop.wait(0.5):
            if not runner.is_alive():
                break
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
