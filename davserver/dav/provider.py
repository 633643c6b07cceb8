"""The WsgiDAV provider: the authenticated account's home as a DAV tree."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, unquote

from wsgidav import util
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_FORBIDDEN,
    HTTP_LOCKED,
    HTTP_NOT_MODIFIED,
    HTTP_RANGE_NOT_SATISFIABLE,
    HTTP_UNAUTHORIZED,
    DAVError,
)
from wsgidav.dav_provider import DAVProvider

from davserver.dav import propfind
from davserver.dav.errors import dav_errors
from davserver.dav.resources import (
    DEST_CREATED,
    LOCK_CREATED,
    STAT_CACHE,
    FileResource,
    FolderResource,
    lock_key,
    lock_root,
    storage_path,
)
from davserver.wsgi import ACCOUNT_KEY, http_date
from storage import paths
from storage.engine import Engine
from storage.errors import Locked, NotFound, StorageError
from storage.model import Entry
from storage.volume import Volume
from webcommon.numbers import clamp_numbers

log = logging.getLogger("davserver.dav")

_CONDITIONAL_HEADERS = (
    "HTTP_IF",
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
)

StartResponse = Callable[..., Any]

#: Methods that grant a lock, or remove what a lock could be granted on (see _NamespaceMutex).
_SERIALIZED = frozenset({"LOCK", "DELETE", "MOVE", "COPY"})


class _NamespaceMutex:
    """One mutex per account (striped) for LOCK, DELETE, MOVE and COPY.

    WsgiDAV looks a LOCK's resource up, then grants the lock; a DELETE checks the locks,
    deletes, then drops the locks under the path. Interleaved, a lock was granted on a
    file already gone (its lockdiscovery then failed with a 500, and the path answered
    423 to everyone until the lock timed out), or dropped right after it was granted.
    Run one at a time per account in this process, each sees the other's outcome:
    a LOCK after a DELETE locks a new empty file, a DELETE after a LOCK is refused (423).
    """

    def __init__(self, stripes: int = 64) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    def of(self, environ: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
        account_id = environ.get(ACCOUNT_KEY)
        if environ["REQUEST_METHOD"] not in _SERIALIZED or account_id is None:
            return contextlib.nullcontext()
        return self._locks[hash(str(account_id)) % len(self._locks)]


class VolumeProvider(DAVProvider):
    def __init__(
        self, engine: Engine, *, propfind_infinity: bool = False, fast_propfind: bool = True
    ) -> None:
        super().__init__()
        self.engine = engine
        self.propfind_infinity = propfind_infinity
        #: Answer Depth 0/1 PROPFINDs with davserver.dav.propfind (False: WsgiDAV's own handler).
        self.fast_propfind = fast_propfind
        self._namespace = _NamespaceMutex()

    def is_readonly(self) -> bool:
        return False

    def volume(self, environ: dict[str, Any]) -> Volume:
        vol: Volume | None = environ.get("davserver.volume")
        if vol is None:
            account_id = environ.get(ACCOUNT_KEY)
            if account_id is None:
                raise DAVError(HTTP_UNAUTHORIZED)
            with dav_errors():
                vol = self.engine.volume(int(account_id))
            environ["davserver.volume"] = vol
        return vol

    def get_resource_inst(
        self, path: str | None, environ: dict[str, Any]
    ) -> FileResource | FolderResource | None:
        if path is None:
            return None  # the parent of the share root (WsgiDAV's PUT asks for it)
        vol = self.volume(environ)
        key = storage_path(path)
        cache: dict[str, Entry | None] = environ.setdefault(STAT_CACHE, {})
        if key in cache:
            entry = cache[key]
        else:
            try:
                with dav_errors():
                    entry = vol.stat(key)
            except DAVError as exc:
                if not isinstance(exc.__cause__, NotFound):
                    raise
                entry = None
            cache[key] = entry
        if entry is None:
            return None
        if entry.is_dir:
            return FolderResource(path, environ, vol, entry)
        return FileResource(path, environ, vol, entry)

    def exists(self, path: str, environ: dict[str, Any]) -> bool:
        return self.get_resource_inst(path, environ) is not None

    def _propfind(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        default_handler: Callable[..., Iterable[bytes]],
        depth: str,
    ) -> Iterable[bytes]:
        with self.lock_snapshot(environ):
            conditional = any(k in environ for k in _CONDITIONAL_HEADERS)
            if self.fast_propfind and depth in ("0", "1") and not conditional:
                try:
                    return propfind.respond(self, environ, start_response, depth)
                except propfind.Fallback:
                    pass
            propfind.spell_for_wsgidav(environ)
            return list(default_handler(environ, start_response))

    def lock_snapshot(self, environ: dict[str, Any]) -> contextlib.AbstractContextManager[None]:
        """Serve the request's lock look-ups from one query (SQL lock storage only).

        WsgiDAV checks the locks of a resource and each of its parents one by
        one; a PUT costs seven look-ups. Not for LOCK and UNLOCK, which read the
        locks they have just changed.
        """
        snapshot = getattr(getattr(self.lock_manager, "storage", None), "snapshot", None)
        if snapshot is None or environ.get(ACCOUNT_KEY) is None:
            return contextlib.nullcontext()
        if environ["REQUEST_METHOD"] in ("LOCK", "UNLOCK"):
            return contextlib.nullcontext()
        return snapshot(lock_root(environ[ACCOUNT_KEY]))

    def refuse_locked(self, environ: dict[str, Any], path: str, members: bool, parent: bool | None) -> None:
        """The extension API's lock check (``sync_ext.api.routing.LockCheck``): raises
        :class:`storage.errors.Locked` when a WebDAV lock forbids the write.

        Locks are checked as WsgiDAV checks a request without tokens: the path's own locks
        and its folders' depth-infinity locks; ``members``: locks below it too; ``parent``:
        the folder's own lock as well (a depth-0 lock on a folder protects its members list);
        None: when the path does not exist yet. With SQL lock storage, an account without
        locks costs one query.
        """
        lock_man = self.lock_manager
        account_id = environ.get(ACCOUNT_KEY)
        if lock_man is None or account_id is None:
            return
        target = paths.normalize_path(path)  # InvalidName: the API's 400
        storage = lock_man.storage
        # SQL lock storage: the account's locks in one indexed query, usually none. (WsgiDAV's
        # Redis storage finds the keys below a path with KEYS: not before every write.)
        sql = hasattr(storage, "snapshot")
        if sql and not storage.get_lock_list(
            lock_root(account_id), include_root=True, include_children=True, token_only=True
        ):
            return
        if parent is None:
            try:
                self.volume(environ).stat(target)
                parent = False
            except NotFound:
                parent = True  # the write adds a member to the folder
        checks = [(target, "infinity" if members else "0")]
        if parent and target:
            checks.append((paths.parent_of(target), "0"))
        for where, depth in checks:
            url = lock_key(account_id, self.share_path, where)  # as get_ref_url files it
            try:
                lock_man.check_write_permission(url=url, depth=depth, token_list=[], principal="")
            except DAVError as exc:
                if exc.value != HTTP_LOCKED:
                    raise
                raise Locked(f"/{target} is locked by a WebDAV client (it may unlock or time out)") from None

    def ref_url_to_path(self, ref_url: str) -> str:
        """Invert ``get_ref_url``: drop the ``/~<account>`` prefix and the share."""
        if ref_url.startswith("/~"):
            ref_url = "/" + ref_url.split("/", 2)[2] if ref_url.count("/") >= 2 else "/"
        return "/" + unquote(util.removeprefix(ref_url, self.share_path)).lstrip("/")

    def custom_request_handler(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        default_handler: Callable[..., Iterable[bytes]],
    ) -> Iterable[bytes]:
        try:
            return self._handle(environ, start_response, default_handler)
        except DAVError as exc:
            # WsgiDAV's lock manager names conflicting locks by their storage key
            # ("/~<account id>/dav/..."); clients need the URL path (RFC 4918 16: DAV:href).
            cond = exc.err_condition
            if cond is not None and cond.hrefs:
                cond.hrefs = [self.client_href(h) for h in cond.hrefs]
            raise

    def _not_modified(self, environ: dict[str, Any]) -> None:
        """A GET or HEAD's If-None-Match and If-Modified-Since, evaluated here (RFC 9110 13.1.2-3,
        13.2.2) with If-Modified-Since taken out of WsgiDAV's hands.

        WsgiDAV answers 304 only for a date after the modification time, so a client echoing
        Last-Modified got the whole file again, and its 304 had no ETag (15.4.5 requires it).
        With If-Match or If-Unmodified-Since also present, all stays WsgiDAV's (they come first).
        """
        if "HTTP_IF_MATCH" in environ or "HTTP_IF_UNMODIFIED_SINCE" in environ:
            return
        modified_since = environ.pop("HTTP_IF_MODIFIED_SINCE", None)
        res = self.get_resource_inst(environ["PATH_INFO"], environ)
        if res is None:
            return
        mtime, etag = res.get_last_modified(), res.get_etag()
        validators = [] if etag is None else [("ETag", f'"{etag}"')]
        validators += [] if mtime is None else [("Last-Modified", http_date(mtime))]
        none_match = environ.get("HTTP_IF_NONE_MATCH")
        if none_match is not None:
            # Weak comparison (13.1.2); no match means If-Modified-Since is ignored (13.2.2).
            tags = [tag.strip().removeprefix("W/") for tag in none_match.split(",")]
            if "*" in tags or (etag is not None and f'"{etag}"' in tags):
                raise DAVError(HTTP_NOT_MODIFIED, add_headers=validators)
            return
        if modified_since is not None and mtime is not None:
            # HTTP dates have whole seconds; the modification time has a fraction.
            date = util.parse_time_string(modified_since)
            if date is not None and int(mtime) <= date:
                raise DAVError(HTTP_NOT_MODIFIED, add_headers=validators)

    def client_href(self, ref_url: str) -> str:
        if not ref_url.startswith("/~"):
            return ref_url
        return quote(self.share_path + self.ref_url_to_path(ref_url))

    def _handle(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        default_handler: Callable[..., Iterable[bytes]],
    ) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        for header in ("HTTP_RANGE", "HTTP_TIMEOUT"):
            if header in environ:
                # WsgiDAV reads these numbers with int(): over 4300 digits it raises (a 500).
                environ[header] = clamp_numbers(environ[header])
        if "HTTP_RANGE" in environ:
            specs = environ["HTTP_RANGE"].partition("=")[2].split(",")
            if not valid_range(environ["HTTP_RANGE"]):
                # RFC 9110 14.2: a Range header that does not parse is ignored.
                del environ["HTTP_RANGE"]
            elif all(spec.strip() == "-0" for spec in specs):
                # A zero-length suffix selects nothing: unsatisfiable, not "whole file".
                raise DAVError(HTTP_RANGE_NOT_SATISFIABLE, "empty suffix range")
            elif len(specs) > 1:
                # WsgiDAV would send one of the ranges (the last) in a 206 as if it were the
                # answer. Several ranges are ignored (RFC 9110 14.2 lets a server), like S3
                # and the API's download: the whole file, 200.
                del environ["HTTP_RANGE"]
        if method in _WRITES and "HTTP_LOCK_TOKEN" in environ and "HTTP_IF" not in environ:
            # Office (2016 and later) sends the token of its lock in Lock-Token, which RFC 4918
            # uses for UNLOCK only, instead of If (sabre/dav#980): the token is submitted as
            # If would, but a stale one is no precondition of its own (the second list always
            # holds), as it was not before (a 412 on a file that is no longer locked).
            token = environ["HTTP_LOCK_TOKEN"].strip().strip("<>").strip()
            if token:
                environ["HTTP_IF"] = f"(<{token}>) (Not <DAV:no-lock>)"
        if "HTTP_IF" in environ and not valid_if_header(environ["HTTP_IF"]):
            raise DAVError(HTTP_BAD_REQUEST, "malformed If header")
        if method in ("GET", "HEAD"):
            if "HTTP_IF_MODIFIED_SINCE" in environ or "HTTP_IF_NONE_MATCH" in environ:
                self._not_modified(environ)
        else:
            # RFC 9110 13.1.3: only for GET and HEAD (WsgiDAV would answer any method 304).
            environ.pop("HTTP_IF_MODIFIED_SINCE", None)
        if method == "PROPFIND":
            if "HTTP_DEPTH" not in environ and not self.propfind_infinity:
                # RFC 4918 reads a missing Depth as infinity, which is refused here; clients
                # that omit it (webdav4's exists() and upload) want one resource, not a 403.
                # Like sabre/dav (Nextcloud) with infinity disabled, answer them as Depth: 1.
                environ["HTTP_DEPTH"] = "1"
            depth = environ.get("HTTP_DEPTH", "infinity").strip().lower()
            if depth == "infinity" and not self.propfind_infinity:
                raise DAVError(
                    HTTP_FORBIDDEN,
                    "PROPFIND with Depth: infinity is disabled",
                    err_condition="{DAV:}propfind-finite-depth",
                )
            return self._propfind(environ, start_response, default_handler, depth)
        if method in ("MOVE", "COPY"):
            start_response = _CreatedStatus(environ, start_response)
        with self._namespace.of(environ), self.lock_snapshot(environ):
            if method == "LOCK":
                # A look-up made before the mutex was held (WsgiDAV's folder browser looks every
                # request's resource up) may be stale by now; a lock on a file just deleted
                # would stand on nothing. (DELETE, MOVE and COPY are checked by the storage's
                # own transaction.)
                environ.pop(STAT_CACHE, None)
            # The do_* handlers check locks (and do their work) when called, before
            # returning a body.
            if method != "LOCK":
                return default_handler(environ, start_response)
            try:
                return default_handler(environ, start_response)
            except BaseException:
                self._remove_lock_created(environ)
                raise

    def _remove_lock_created(self, environ: dict[str, Any]) -> None:
        """A refused LOCK leaves no empty file behind (see create_empty_resource), in the
        trash neither; a file written meanwhile (another revision) stays."""
        created = environ.pop(LOCK_CREATED, None)
        if created is None:
            return
        path, revision = created
        vol = self.volume(environ)
        try:
            vol.purge_trash_item(vol.delete(path, if_rev=revision))
        except StorageError as exc:
            log.warning("LOCK refused; the empty file it created at %r stays: %s", path, exc)


#: Methods that change a resource: a lock on it must be submitted.
_WRITES = frozenset({"PUT", "PROPPATCH", "DELETE", "MOVE", "COPY", "MKCOL"})
_RANGE_SPEC = re.compile(r"^\s*(?:(\d+)-(\d*)|-(\d+))\s*$")


def valid_range(header: str) -> bool:
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or not specs.strip():
        return False
    for spec in specs.split(","):
        m = _RANGE_SPEC.match(spec)
        if m is None:
            return False
        first, last, _ = m.groups()
        if first is not None and last and int(last) < int(first):
            return False
    return True


# RFC 4918 10.4.2: If = ( 1*No-tag-list ) | ( 1*Tagged-list ); a list is
# "(" 1*( ["Not"] ( "<" state-token ">" | "[" entity-tag "]" ) ) ")". Windows sometimes
# sends a state token without its angle brackets: accepted in a list (WsgiDAV reads it).
_IF_TOKEN = re.compile(
    r'\s*(<[^<>\s]*>|\(|\)|\[(?:W/)?"[^"]*"\]|Not\b|[A-Za-z][A-Za-z0-9+.-]*:[^\s()<>\[\]"]+)', re.IGNORECASE
)


def valid_if_header(header: str) -> bool:
    pos, depth, conditions, lists = 0, 0, 0, 0
    expect_condition = False
    text = header.rstrip()
    while pos < len(text):
        m = _IF_TOKEN.match(text, pos)
        if m is None:
            return False
        tok = m.group(1)
        pos = m.end()
        if tok == "(":
            if depth:
                return False
            depth, conditions = 1, 0
        elif tok == ")":
            if not depth or conditions == 0 or expect_condition:
                return False
            depth, lists = 0, lists + 1
        elif tok.lower() == "not":
            if not depth or expect_condition:
                return False
            expect_condition = True
        elif depth:
            conditions += 1
            expect_condition = False
        elif not tok.startswith("<"):
            return False  # an entity tag or a bare token outside a list
    return depth == 0 and lists > 0


class _CreatedStatus:
    def __init__(self, environ: dict[str, Any], start_response: StartResponse) -> None:
        self._environ = environ
        self._start_response = start_response

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if status.startswith("204") and self._environ.get(DEST_CREATED):
            status = "201 Created"
        return self._start_response(status, headers, exc_info)
