"""Plain GET, HEAD and PUT of files, answered without WsgiDAV's request pipeline.

Most requests a mounted drive or a sync tool sends are the plain kind: fetch
this file, store this file. WsgiDAV spends about half a millisecond of Python on
each before the provider is reached (middleware, resource objects, lock and
condition evaluation), which measured as the largest cost of a 4 KiB GET and a
third of a 4 KiB PUT (``bench/dav_vs_wsgidav.py``). The fast lane answers those
requests straight from the storage facade and hands everything else to WsgiDAV
untouched, so WsgiDAV stays the reference for every detail of the protocol:

* GET/HEAD of an existing file, with no ``Range``, no conditional header and no
  query string. A folder, a missing path or any of those headers goes to WsgiDAV.
* PUT with no ``Content-Range``, ``Content-Encoding`` or date condition, where no
  lock stands in the way: either no lock covers the file (none on it, none on a
  folder above it), or exactly the locks that do are this user's and the request's
  ``If`` header is one list with that lock's token (optionally tagged with this
  file's URL): what davfs2, cadaver, Finder and Windows send when they write a file
  they locked, for every file they copy onto a mounted drive. Any other ``If``
  header goes to WsgiDAV. A single If-Match tag and If-None-Match ``*`` are
  evaluated by the storage engine itself (before the body and again inside the
  commit). Anything the engine refuses before the body is read (missing parent, a
  folder, a failed precondition, quota) is handed to WsgiDAV, which produces its
  usual answer: the body is still unread then.

The write still registers with WsgiDAV's lock manager for its whole duration
(``write_transaction``), so a LOCK cannot be granted on the file while its body
is being received.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

from wsgidav.dav_error import DAVError

from davserver.dav.errors import retry_after, status_for
from davserver.dav.provider import VolumeProvider
from davserver.dav.resources import content_length, content_type_for, lock_key, lock_root, write_options
from davserver.wsgi import ACCOUNT_KEY, StartResponse, WSGIApp, http_date, plain
from storage import errors as e
from storage.reader import VersionReader
from webcommon.body import MalformedBody, RequestBody

log = logging.getLogger("davserver.dav")

_GET_DEFERRED = (
    "HTTP_RANGE",
    "HTTP_IF_RANGE",
    "HTTP_IF",
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
)
_PUT_DEFERRED = (
    "HTTP_CONTENT_RANGE",
    "HTTP_CONTENT_ENCODING",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
)


#: An If header of one list holding one state token, optionally tagged with a resource URL
#: (``<url> (<token>)``); brackets around the token are optional (Windows leaves them out).
_IF_ONE_TOKEN = re.compile(r"^\s*(?:<([^<>\s]+)>\s*)?\(\s*<?([^<>()\[\]\s]+)>?\s*\)\s*$")


class FastLane:
    def __init__(self, dav: WSGIApp, provider: VolumeProvider, share: str) -> None:
        self._dav = dav
        self._provider = provider
        self._share = share

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        answer: Iterable[bytes] | None = None
        if ACCOUNT_KEY in environ and not environ.get("QUERY_STRING"):
            path = self._dav_path(environ)
            if path is None:
                pass
            elif method in ("GET", "HEAD"):
                if not any(h in environ for h in _GET_DEFERRED):
                    answer = self._get(environ, start_response, path, head=method == "HEAD")
            elif method == "PUT" and _plain_put(environ):
                answer = self._put(environ, start_response, path)
        return self._dav(environ, start_response) if answer is None else answer

    def _dav_path(self, environ: dict[str, Any]) -> str | None:
        """The path below the share, as text; None for the share itself or a folder-style URL."""
        raw: str = environ.get("PATH_INFO", "")
        if not raw.startswith(self._share + "/") or raw.endswith("/"):
            return None
        # WSGI hands the path as latin-1 code points; the Guard checked it is UTF-8.
        return raw[len(self._share) :].encode("latin-1").decode("utf-8")

    # -- GET / HEAD ------------------------------------------------------------------

    def _get(
        self, environ: dict[str, Any], start_response: StartResponse, path: str, *, head: bool
    ) -> Iterable[bytes] | None:
        vol = self._provider.volume(environ)
        try:
            reader = vol.open(path)
        except e.StorageError:
            return None  # missing, a folder, a bad name, unavailable: WsgiDAV answers
        entry = reader.entry
        chunks: Iterator[bytes] = iter(())
        first = b""
        if not head:
            # The first block is fetched before the headers go out, so an unreachable block
            # store is a 503 with Retry-After, not a 200 that breaks off.
            chunks = reader.iter_range(0, reader.size)
            try:
                first = next(chunks, b"")
            except e.StorageError as exc:
                reader.close()
                status = status_for(exc)
                if status >= 500:
                    log.error("GET %s failed: %s", path, exc)
                return plain(
                    start_response, f"{status} {HTTPStatus(status).phrase}", f"{exc}\n", retry_after(status)
                )
        start_response(
            "200 OK",
            [
                ("Content-Length", str(entry.size)),
                ("Last-Modified", http_date(entry.mtime)),
                # Set here, cheroot would format it again with the slower email.utils.
                ("Date", http_date(time.time())),
                ("Content-Type", content_type_for(entry.name)),
                ("ETag", entry.etag or ""),
                ("Accept-Ranges", "bytes"),
            ],
        )
        if head:
            reader.close()
            return []
        return _Body(reader, environ, first, chunks)

    # -- PUT -------------------------------------------------------------------------

    def _put(
        self, environ: dict[str, Any], start_response: StartResponse, path: str
    ) -> Iterable[bytes] | None:
        provider = self._provider
        lock_man = provider.lock_manager
        account_id = environ[ACCOUNT_KEY]
        try:
            length = content_length(environ)
            options = write_options(environ)
        except DAVError:
            return None  # WsgiDAV words the 400
        tokens = self._submitted_tokens(environ, path)
        if tokens is None:
            return None  # an If header WsgiDAV evaluates
        with provider.lock_snapshot(environ):
            root = lock_root(account_id)
            try:
                url = lock_key(account_id, self._share, path)
            except DAVError:
                return None  # a name the storage refuses: WsgiDAV words the 400
            principal = environ.get("wsgidav.auth.user_name", "")
            try:
                held = lock_man.storage.get_lock_list(
                    root, include_root=True, include_children=True, token_only=False
                )
            except e.StorageError:
                return None  # the lock store is down: WsgiDAV's own check answers (503)
            if not _write_allowed(held, url, tokens, principal):
                return None  # a lock stands in the way, or the token is stale: WsgiDAV answers
            vol = provider.volume(environ)
            try:
                pending = vol.begin_write(path, **options)
            except e.StorageError:
                return None  # refused before the body: WsgiDAV gives its usual answer
            with contextlib.ExitStack() as stack:
                stack.enter_context(pending)
                try:
                    stack.enter_context(
                        lock_man.write_transaction(url=url, token_list=tokens, principal=principal)
                    )
                except DAVError:
                    # A lock granted since the look-up above (another request's LOCK): the body is
                    # still unread, so WsgiDAV answers (423); leaving aborts the write.
                    return None
                try:
                    pending.feed(RequestBody(environ["wsgi.input"], length))
                    if length is not None and pending.size != length:
                        return _failed(
                            start_response, 400, f"body ended after {pending.size} of {length} bytes"
                        )
                    entry = pending.commit()
                except e.StorageError as exc:
                    return _failed(start_response, status_for(exc), str(exc))
                except MalformedBody as exc:
                    return _failed(start_response, 400, str(exc))
        status = "201 Created" if pending.created else "204 No Content"
        start_response(
            status, [("Content-Length", "0"), ("ETag", entry.etag or ""), ("Date", http_date(time.time()))]
        )
        return []

    def _submitted_tokens(self, environ: dict[str, Any], path: str) -> list[str] | None:
        """The lock tokens a PUT's If header submits: none without an If header, None for
        any If header but one list with one token tagged (if at all) with this file."""
        header = environ.get("HTTP_IF")
        if header is None:
            return []
        m = _IF_ONE_TOKEN.match(header)
        if m is None:
            return None
        tag, token = m.groups()
        try:
            tagged = None if tag is None else unquote(urlsplit(tag).path, errors="replace")
        except ValueError:
            return None  # a tag urllib cannot take apart: WsgiDAV words the answer
        if tagged is not None and tagged != self._share + path:
            return None
        return [str(token)]


def _write_allowed(held: list[dict[str, Any]], url: str, tokens: list[str], principal: str) -> bool:
    """No lock covers ``url`` but a submitted one, held by ``principal``; a submitted
    token must name a lock that covers it (else the If header fails: WsgiDAV's 412).

    ``held`` is every live lock of the account. A lock covers the file when it is on the
    file or on a folder above it (at any depth: one of depth 0 guards the folder's
    membership, which a new file changes).
    """
    matched = False
    for lock in held:
        root = lock["root"]
        if root != url and not url.startswith(root.rstrip("/") + "/"):
            continue
        if lock["token"] not in tokens or lock["principal"] != principal:
            return False
        matched = True
    return matched or not tokens


def _plain_put(environ: dict[str, Any]) -> bool:
    """No header whose evaluation the storage engine leaves to WsgiDAV (lists of tags, dates, locks)."""
    if any(h in environ for h in _PUT_DEFERRED):
        return False
    if "," in environ.get("HTTP_IF_MATCH", ""):
        return False
    return environ.get("HTTP_IF_NONE_MATCH", "*").strip() == "*"


def _failed(start_response: StartResponse, status: int, reason: str) -> list[bytes]:
    """An error met while reading the body: the rest of it is not read, so the connection closes."""
    if status >= 500 and status != HTTPStatus.INSUFFICIENT_STORAGE:  # over quota: the client's
        log.error("PUT failed: %s", reason)
    phrase = f"{status} {HTTPStatus(status).phrase}"
    return plain(start_response, phrase, reason + "\n", retry_after(status), close=True)


class _Body:
    """A GET body: the version's blocks in order; an error mid-way drops the connection."""

    def __init__(
        self, reader: VersionReader, environ: dict[str, Any], first: bytes, rest: Iterator[bytes]
    ) -> None:
        self._reader = reader
        self._environ = environ
        self._first = first
        self._rest = rest

    def __iter__(self) -> Iterator[bytes]:
        try:
            # Whole blocks, as decrypted: no slicing copies; larger writes measured faster.
            if self._first:
                yield self._first
            yield from self._rest
        except Exception as exc:
            # Headers are out: the only honest signal left is a short body and a closed connection.
            log.error("GET %s failed mid-response: %s", self._environ.get("PATH_INFO"), exc)
            raise

    def close(self) -> None:
        self._reader.close()
