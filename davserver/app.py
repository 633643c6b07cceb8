"""The composition root: one WSGI application for every face.

    Guard (sizes, name policy) -> Authenticator -> Router
        /dav/...     fast lane, else WsgiDAV (VolumeProvider over the engine)
        /api/v1/...  the extension API (sync_ext.api)
        /healthz     liveness, no authentication
        /readyz      readiness (database, block store, Redis), no authentication
        /            redirect to /dav/ (OPTIONS answered for Windows' probe)

Everything is built from explicit objects (engine, settings); nothing here is
module-level state, so tests can build several apps in one process.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from wsgidav.dir_browser import WsgiDavDirBrowser
from wsgidav.request_resolver import RequestResolver
from wsgidav.wsgidav_app import WsgiDAVApp

from davserver.auth import Authenticator, AuthSettings, SharedLoginThrottle
from davserver.config import ServerConfig
from davserver.dav.errors import ErrorResponses
from davserver.dav.fastlane import FastLane
from davserver.dav.lock_storage import RedisLockStorage, SqlLockStorage
from davserver.dav.provider import VolumeProvider
from davserver.dav.sync_collection import SyncCollectionReport
from davserver.wsgi import ACCOUNT_KEY, StartResponse, WSGIApp, plain
from storage.engine import Engine
from sync_ext.api import PREFIX as API_PREFIX
from sync_ext.api import create_api
from webcommon.body import MalformedBody
from webcommon.numbers import digits

log = logging.getLogger("davserver")

DAV_PREFIX = "/dav"
#: What WsgiDAV advertises is "1,2"; locks, dead properties and RFC 4918
#: semantics make this server class 3.
DAV_COMPLIANCE = "1, 2, 3"
_XML_METHODS = frozenset({"PROPFIND", "PROPPATCH", "LOCK", "REPORT", "SEARCH", "MKCOL"})
APPLE_DOUBLE_POLICIES = ("store", "refuse")


@dataclass(frozen=True)
class AppSettings:
    max_file_size: int = 10 << 30
    #: WsgiDAV reads XML request bodies whole; anything larger is refused.
    max_xml_body: int = 1 << 20
    block_size: int = 1 << 20
    propfind_infinity: bool = False
    #: Depth 0/1 PROPFIND written as text from one listing (False: WsgiDAV's handler; for comparison).
    fast_propfind: bool = True
    #: Plain GET/HEAD/PUT of files answered without WsgiDAV's pipeline (davserver.dav.fastlane).
    fast_lane: bool = True
    #: "store": ._* and .DS_Store are ordinary files (Finder metadata round-trips);
    #: "refuse": creating them is answered 403, keeping shared trees clean.
    apple_double: str = "store"
    redis_url: str | None = None
    #: "sql": WebDAV locks in the metadata database (shared by the nodes on PostgreSQL, one
    #: query per request); "redis": WsgiDAV's Redis lock storage (needs redis_url).
    lock_storage: str = "sql"
    auth: AuthSettings = field(default_factory=AuthSettings)

    @classmethod
    def from_config(cls, cfg: ServerConfig) -> AppSettings:
        extra = cfg.extra
        policy = str(extra.get("apple_double", "store"))
        if policy not in APPLE_DOUBLE_POLICIES:
            raise ValueError(f"apple_double must be one of {', '.join(APPLE_DOUBLE_POLICIES)}")
        locks = str(extra.get("lock_storage", "sql"))
        if locks not in ("sql", "redis") or (locks == "redis" and not cfg.redis_url):
            raise ValueError('lock_storage must be "sql", or "redis" with redis_url set')
        proxies = extra.get("trusted_proxies", [])
        if isinstance(proxies, str):
            proxies = [p for p in proxies.replace(",", " ").split() if p]
        try:
            for proxy in proxies:
                ipaddress.ip_network(str(proxy), strict=False)
        except ValueError as exc:
            raise ValueError(f"trusted_proxies: {exc}") from None
        return cls(
            max_file_size=cfg.max_file_size,
            propfind_infinity=bool(extra.get("propfind_infinity", False)),
            apple_double=policy,
            redis_url=cfg.redis_url,
            lock_storage=locks,
            auth=AuthSettings(
                allow_insecure_basic=bool(extra.get("allow_insecure_basic", False)),
                trust_forwarded_proto=bool(extra.get("trust_forwarded_proto", False)),
                trusted_proxies=tuple(str(p) for p in proxies),
            ),
        )


def create_app(engine: Engine, settings: AppSettings) -> WSGIApp:
    dav, provider = _dav_app(engine, settings)
    if settings.fast_lane:
        dav = FastLane(dav, provider, DAV_PREFIX)
    # The API's writes respect WebDAV locks (a sync client must not replace a file Office has open).
    api = create_api(engine, account_key=ACCOUNT_KEY, lock_check=provider.refuse_locked)
    router = Router(dav, api, engine.readiness)
    throttle = None
    if settings.redis_url:
        # Behind a balancer the nodes count failed logins together.
        throttle = SharedLoginThrottle(settings.auth, settings.redis_url, engine.redis_namespace)
    authed = Authenticator(router, engine.accounts, settings.auth, throttle=throttle)
    return Guard(authed, settings)


def _lock_storage(engine: Engine, settings: AppSettings) -> Any:
    """Locks in SQL by default: on PostgreSQL every node shares them, and a PROPFIND reads
    an account's locks in one query. WsgiDAV's Redis storage (``lock_storage = "redis"``)
    costs a Redis round trip per listed entry (a 2000-entry PROPFIND went 36 -> 292 ms)."""
    if settings.lock_storage != "redis" or not settings.redis_url:
        return SqlLockStorage(engine.locks)
    return RedisLockStorage(settings.redis_url, namespace=engine.redis_namespace)


def _dav_app(engine: Engine, settings: AppSettings) -> tuple[WSGIApp, VolumeProvider]:
    provider = VolumeProvider(
        engine, propfind_infinity=settings.propfind_infinity, fast_propfind=settings.fast_propfind
    )
    config = {
        "provider_mapping": {DAV_PREFIX: provider},
        "middleware_stack": [ErrorResponses, WsgiDavDirBrowser, SyncCollectionReport, RequestResolver],
        "lock_storage": _lock_storage(engine, settings),
        "property_manager": None,
        "mutable_live_props": ["{DAV:}getlastmodified", "{DAV:}getcontenttype"],
        "hotfixes": {"emulate_win32_lastmod": True, "re_encode_path_info": True},
        "add_header_MS_Author_Via": True,
        "block_size": settings.block_size,
        "suppress_version_info": True,
        "logging": {"enable": False},
        "verbose": 0,
        "dir_browser": {"enable": True, "response_trailer": "davserver", "davmount": True},
        "http_authenticator": {},
    }
    return WsgiDAVApp(config), provider


class Router:
    def __init__(self, dav: WSGIApp, api: WSGIApp, ready: Callable[[], dict[str, str]]) -> None:
        self._dav = dav
        self._api = api
        self._ready = ready

    def _readiness(self, start_response: StartResponse) -> Iterable[bytes]:
        """200 when the database and the block store answer (Redis is optional), else 503."""
        checks = self._ready()
        ok = checks["database"] == "ok" and checks["blocks"] == "ok"
        body = json.dumps({"ready": ok, **checks}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        headers.append(("Cache-Control", "no-store"))
        start_response("200 OK" if ok else "503 Service Unavailable", headers)
        return [body]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path == DAV_PREFIX or path.startswith(DAV_PREFIX + "/"):
            return self._dav(environ, _DavHeader(start_response))
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            return self._api(environ, start_response)
        if path == "/healthz":
            return plain(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            return self._readiness(start_response)
        if path in ("/", "*"):
            if method == "OPTIONS":
                # Windows' mini-redirector probes the server root before anything else.
                start_response(
                    "200 OK",
                    [
                        ("DAV", DAV_COMPLIANCE),
                        ("MS-Author-Via", "DAV"),
                        ("Allow", "OPTIONS, GET, HEAD"),
                        ("Content-Length", "0"),
                    ],
                )
                return [b""]
            if method in ("GET", "HEAD"):
                start_response("302 Found", [("Location", DAV_PREFIX + "/"), ("Content-Length", "0")])
                return [b""]
        return plain(start_response, "404 Not Found", "not found\n")


class _DavHeader:
    """Rewrites WsgiDAV's DAV compliance header on the way out."""

    def __init__(self, start_response: StartResponse) -> None:
        self._start_response = start_response

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        headers = [(k, DAV_COMPLIANCE) if k.lower() == "dav" else (k, v) for k, v in headers]
        return self._start_response(status, headers, exc_info)


class Guard:
    """Cheap checks before anything reads a body or touches the database."""

    def __init__(self, app: WSGIApp, settings: AppSettings) -> None:
        self._app = app
        self._s = settings

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        answer = self._answer(environ, start_response)
        if environ.get("REQUEST_METHOD") == "HEAD":
            # cheroot sends whatever the app yields, even to a HEAD: an error page or a
            # problem document would be read by the client as the start of the next answer.
            return _without_body(answer)
        return answer

    def _answer(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        try:
            # WSGI hands the decoded path as latin-1 code points; ours must be UTF-8.
            environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
            unquote(environ.get("HTTP_DESTINATION", ""), errors="strict")
        except UnicodeError:
            return plain(start_response, "400 Bad Request", "path is not valid UTF-8\n", close=True)
        if "%2f" in environ.get("REQUEST_URI", "").partition("?")[0].lower():
            # cheroot leaves an encoded slash encoded in PATH_INFO, where it reads the same
            # as an encoded "%2F" (%252F): a name was about to be stored as "a%2Fb".
            return plain(start_response, "400 Bad Request", "a name cannot contain '/'\n", close=True)
        if method in ("MOVE", "COPY"):
            if not _parses(environ.get("HTTP_DESTINATION", "")):
                return plain(start_response, "400 Bad Request", "malformed Destination\n", close=True)
            # WsgiDAV compares the Destination's host with Host, which HTTP/1.0 may omit.
            server = f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
            environ.setdefault("HTTP_HOST", server)
        length_text = environ.get("CONTENT_LENGTH", "").strip()
        if length_text and "HTTP_TRANSFER_ENCODING" in environ:
            # RFC 9112 6.3: a request smuggling pattern; cheroot decoded the chunks and cut them
            # at the Content-Length (a truncated file, the rest read as the next request).
            return plain(
                start_response, "400 Bad Request", "Content-Length with Transfer-Encoding\n", close=True
            )
        if "HTTP_CONTENT_ENCODING" in environ:
            codings = {c.strip().lower() for c in environ["HTTP_CONTENT_ENCODING"].split(",")}
            if codings <= {"", "identity"}:
                del environ["HTTP_CONTENT_ENCODING"]  # no coding at all (WsgiDAV's PUT said 501)
            elif method == "PUT" or length_text not in ("", "0") or _chunked(environ):
                # A coded body would be stored as its coded bytes (the API) or refused with a
                # 5xx (WsgiDAV). RFC 9110 15.5.16 and RFC 7694: 415, naming what is accepted.
                return plain(
                    start_response,
                    "415 Unsupported Media Type",
                    "content codings are not supported: send the body as it is\n",
                    [("Accept-Encoding", "identity")],
                    close=True,
                )
        if length_text:
            parsed = digits(length_text)
            if parsed is None:
                return plain(start_response, "400 Bad Request", "bad Content-Length\n", close=True)
            length = parsed
        else:
            length = 0
        if method == "PUT":
            expected = digits(environ.get("HTTP_X_EXPECTED_ENTITY_LENGTH", "")) or 0
            declared = max(length, expected)
            if declared > self._s.max_file_size:
                return plain(
                    start_response,
                    "413 Content Too Large",
                    f"files are limited to {self._s.max_file_size} bytes\n",
                    close=True,
                )
        elif method in _XML_METHODS and length > self._s.max_xml_body:
            return plain(start_response, "413 Content Too Large", "request body too large\n", close=True)
        elif method in _XML_METHODS and not length_text and _chunked(environ):
            # WsgiDAV reads an XML body by its Content-Length only: a chunked one was taken
            # for none (PROPFIND as allprop, PROPPATCH and LOCK refused). Read it here, capped.
            stream = environ["wsgi.input"]
            try:
                body = stream.read(self._s.max_xml_body + 1)
                if len(body) > self._s.max_xml_body:
                    # Read on (within reason) so the client is not reset while still sending,
                    # which could cost it the answer.
                    drained = _drain(stream, _DRAIN_BYTES)
                    return plain(
                        start_response, "413 Content Too Large", "request body too large\n", close=not drained
                    )
            except MalformedBody as exc:
                return plain(start_response, "400 Bad Request", f"{exc}\n", close=True)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            del environ["HTTP_TRANSFER_ENCODING"]
        if self._s.apple_double == "refuse" and method in ("PUT", "MKCOL", "LOCK", "MOVE", "COPY"):
            target = environ.get("HTTP_DESTINATION") if method in ("MOVE", "COPY") else None
            name = _last_segment(urlsplit(target).path if target else environ.get("PATH_INFO", ""))
            if is_apple_double(name):
                return plain(
                    start_response,
                    "403 Forbidden",
                    "macOS metadata files (._*, .DS_Store) are not stored on this server\n",
                    close=length > 0,
                )
        return self._app(environ, start_response)


def _without_body(answer: Iterable[bytes]) -> Iterator[bytes]:
    """The answer run to its end (its status and headers set), its body dropped."""
    try:
        for _ in answer:
            pass
    finally:
        close = getattr(answer, "close", None)
        if close is not None:
            close()
    yield from ()


#: How much of an oversize chunked XML body is read and dropped before the 413.
_DRAIN_BYTES = 16 << 20


def _drain(stream: Any, limit: int) -> bool:
    """Read and drop up to ``limit`` bytes; whether the body ended within them."""
    while limit > 0:
        piece = stream.read(min(limit, 1 << 20))
        if not piece:
            return True
        limit -= len(piece)
    return False


def _chunked(environ: dict[str, Any]) -> bool:
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def _parses(url: str) -> bool:
    """Whether urllib takes ``url`` apart, port included (WsgiDAV's MOVE and COPY do, unguarded)."""
    try:
        port = urlsplit(url).port  # checked when read
    except ValueError:
        return False
    return port is None or port >= 0


def is_apple_double(name: str) -> bool:
    return name == ".DS_Store" or name.startswith("._")


def _last_segment(path: str) -> str:
    return unquote(path.rstrip("/").rsplit("/", 1)[-1])
