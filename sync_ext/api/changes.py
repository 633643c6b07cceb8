"""The change feed: ``/changes/latest_cursor``, ``/changes/list``, ``/changes/longpoll``.

A cursor is opaque to clients; inside it is ``v1.`` + base64url(JSON) of the
account id, a position in the account's change sequence and an optional folder
scope (:mod:`storage.changes`). A cursor of another account is a 400; one the
journal no longer reaches back to is a 410 ``cursor-reset`` (re-list everything).

Long-polls do not hold a WSGI worker thread: after a quick check of the journal
the handler takes the connection out of the server (``environ[DETACH_KEY]``, put
there by the server, :mod:`davserver.server`) and hands it to the engine's
notifier (one asyncio loop for all waiters), which writes the answer when the
account commits something the cursor sees, or at the timeout. Under WSGI
servers without that hook the wait happens on the request thread, bounded by
``blocking_waiters``; beyond it the answer is immediate, with a backoff hint.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import logging
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage import paths
from storage.model import Change
from storage.notify import Notifications
from sync_ext.api.routing import Request, Response
from webcommon.numbers import json_int
from webcommon.problems import Problem, bad_request
from webcommon.wsgi import DETACH_KEY

log = logging.getLogger("davserver.api")


MIN_TIMEOUT, MAX_TIMEOUT, DEFAULT_TIMEOUT = 30, 480, 30
#: Jitter added to a long-poll's timeout, as a fraction of it, at most MAX_JITTER seconds.
JITTER_FRACTION, MAX_JITTER = 0.25, 90.0
DEFAULT_PAGE, MAX_PAGE = 500, 2000


@dataclass(frozen=True)
class LongpollSettings:
    #: Waiters above which answers carry a ``backoff`` hint, and above which they come at once.
    soft_limit: int = 20_000
    hard_limit: int = 50_000
    #: Request threads that may block in a long-poll where the server cannot detach connections.
    blocking_waiters: int = 4


@dataclass(frozen=True)
class Cursor:
    account_id: int
    position: int
    scope: str = ""

    def encode(self) -> str:
        doc = {"a": self.account_id, "p": self.position, **({"s": self.scope} if self.scope else {})}
        raw = json.dumps(doc, separators=(",", ":")).encode()
        return "v1." + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, account_id: int) -> Cursor:
        try:
            if not text.startswith("v1."):
                raise ValueError
            body = text[3:]
            doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            account, position, scope = doc["a"], doc["p"], doc.get("s", "")
            if not (json_int(account) and json_int(position) and isinstance(scope, str)):
                raise ValueError
            cursor = cls(account, position, paths.normalize_path(scope))
        except (ValueError, KeyError, TypeError, RecursionError, binascii.Error):
            # ValueError covers bad base64 and JSON and non-UTF-8; RecursionError deep nesting.
            raise bad_request("not a cursor of this server") from None
        if cursor.account_id != account_id:
            raise bad_request("this cursor belongs to another account")
        if cursor.position < 0:
            raise bad_request("not a cursor of this server")
        return cursor


def change_json(change: Change) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "op": change.op,
        "path": "/" + change.path,
        "node_id": change.node_id,
        "kind": "folder" if change.is_dir else "file",
        "at": change.at,
    }
    if change.old_path is not None:
        doc["old_path"] = "/" + change.old_path
    if change.op != "delete":
        if not change.is_dir:
            doc["rev"] = change.version_id
            doc["size"] = change.size
            doc["content_sha256"] = None if change.sha256 is None else change.sha256.hex()
        if change.mtime is not None:
            doc["mtime"] = change.mtime
    return doc


def _cursor(req: Request) -> Cursor:
    return Cursor.decode(req.param("cursor"), req.volume.account.id)


def latest_cursor(req: Request) -> Response:
    scope = req.query.get("path", "")
    scope = paths.normalize_path(scope) if scope not in ("", "/") else ""
    if scope:
        entry = req.volume.stat(scope)
        if not entry.is_dir:
            raise Problem(409, "not-a-folder", "Not a folder", "a cursor's scope is a folder")
    cursor = Cursor(req.volume.account.id, req.volume.change_seq(), scope)
    return Response.json(200, {"cursor": cursor.encode()})


def list_changes(req: Request) -> Response:
    cursor = _cursor(req)
    limit = req.int_param("limit", default=DEFAULT_PAGE, minimum=1)
    assert limit is not None
    page = req.volume.changes(cursor.position, limit=min(limit, MAX_PAGE), scope=cursor.scope)
    return Response.json(
        200,
        {
            "entries": [change_json(c) for c in page.changes],
            "cursor": Cursor(cursor.account_id, page.position, cursor.scope).encode(),
            "has_more": page.has_more,
        },
    )


class Longpoll:
    """The ``/changes/longpoll`` handler, over the engine's notifications."""

    def __init__(
        self, notifications: Notifications, settings: LongpollSettings, rng: random.Random | None = None
    ) -> None:
        self._notifications = notifications
        self._settings = settings
        self._rng = rng or random.Random()
        self._blocking = threading.BoundedSemaphore(settings.blocking_waiters)

    def __call__(self, req: Request) -> Response:
        cursor = _cursor(req)
        timeout = req.int_param("timeout", default=DEFAULT_TIMEOUT, minimum=0)
        assert timeout is not None
        if not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
            raise bad_request(f"timeout must be between {MIN_TIMEOUT} and {MAX_TIMEOUT} seconds")
        volume = req.volume
        changed, checked = volume.has_changes(cursor.position, scope=cursor.scope)
        if changed:
            return Response.json(200, {"changes": True})
        notifications = self._notifications
        waiting = notifications.waiting
        if waiting >= self._settings.hard_limit:
            return Response.json(200, {"changes": False, "backoff": self._backoff(60, 180)})
        extra = {"backoff": self._backoff(10, 60)} if waiting >= self._settings.soft_limit else {}
        wait = timeout + self._rng.uniform(0, min(MAX_JITTER, timeout * JITTER_FRACTION))
        detach: Callable[[], socket.socket] | None = req.environ.get(DETACH_KEY)
        if detach is None:
            return self._wait_here(req, cursor, checked, wait, extra)
        sock = detach()
        try:
            notifications.watch(
                volume.account.id,
                checked,
                scope=cursor.scope,
                timeout=wait,
                on_done=lambda changed: _answer(sock, changed, extra),
                cancel_fd=sock.fileno(),
            )
        except Exception:
            # The connection is ours now: it gets an answer whatever happened.
            log.exception("a long-poll could not be parked")
            _answer(sock, False, {"backoff": self._backoff(10, 60)})
        return DETACHED

    def _wait_here(
        self, req: Request, cursor: Cursor, checked: int, wait: float, extra: dict[str, int]
    ) -> Response:
        if not self._blocking.acquire(blocking=False):
            return Response.json(200, {"changes": False, "backoff": self._backoff(10, 60)})
        try:
            done = threading.Event()
            result: list[bool] = []

            def on_done(changed: bool) -> None:
                result.append(changed)
                done.set()

            self._notifications.watch(
                req.volume.account.id, checked, scope=cursor.scope, timeout=wait, on_done=on_done
            )
            done.wait(wait + 10)
            return Response.json(200, {"changes": bool(result and result[0]), **extra})
        finally:
            self._blocking.release()

    def _backoff(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)


#: What a handler returns when the connection left the server (the answer comes later).
DETACHED = Response(0)


def _answer(sock: socket.socket, changed: bool, extra: dict[str, int]) -> None:
    """Write the long-poll's answer on a detached connection and close it (on the notifier's loop).

    The answer is a few hundred bytes on an otherwise idle connection, so a
    non-blocking send takes it whole; if it cannot (the client vanished or
    stopped reading), the connection is dropped, which the client sees as a
    network error and retries.
    """
    body = json.dumps({"changes": changed, **extra}, separators=(",", ":")).encode()
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
        "Server: davserver\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    try:
        sock.setblocking(False)
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        log.debug("long-poll answer not delivered: %s", exc)
    finally:
        sock.close()
