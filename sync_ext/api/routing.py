"""The API's small WSGI core: requests, responses, routes, and the one error boundary.

Routes are declared once, with their OpenAPI operation next to the handler, so
the served document (:mod:`sync_ext.api.openapi`) is generated from the same
table that dispatches requests and cannot list a route that does not exist.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from storage import errors as e
from storage.engine import Engine
from storage.volume import Volume
from webcommon import problems
from webcommon.body import MalformedBody, RequestBody
from webcommon.numbers import digits, epoch_seconds
from webcommon.problems import Problem, bad_request

log = logging.getLogger("davserver.api")

StartResponse = Callable[..., Any]
#: Where the API is mounted.
PREFIX = "/api/v1"
#: JSON request bodies are small documents; anything larger is refused.
MAX_JSON_BODY = 1 << 20


def optional_mtime(raw: object, what: str) -> float | None:
    """An optional modification time from a parameter, metadata or JSON; 400 naming ``what``."""
    if raw is None or raw == "":
        return None
    try:
        return epoch_seconds(str(raw))
    except ValueError as exc:
        raise bad_request(f"{what}: {exc}") from None


#: ``(environ, path, members, parent)``: raises :class:`storage.errors.Locked` when a WebDAV
#: lock stands in the way of a write to ``path`` (``members``: or to anything below it;
#: ``parent``: the write adds or removes a member of its folder; None: it does if the path
#: does not exist yet). The API has no lock tokens: any lock does. The composition root
#: passes the WebDAV face's.
LockCheck = Callable[[dict[str, Any], str, bool, "bool | None"], None]


class Request:
    def __init__(
        self,
        environ: dict[str, Any],
        volume: Volume | None,
        path_params: dict[str, str] | None = None,
        *,
        lock_check: LockCheck | None = None,
    ) -> None:
        self.environ = environ
        self._volume = volume
        self._lock_check = lock_check
        #: Values of ``{name}`` segments of the route's path.
        self.path_params = path_params or {}
        try:
            query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise bad_request("the query string is not valid UTF-8") from None
        duplicated = sorted(k for k, values in query.items() if len(values) > 1)
        if duplicated:
            raise bad_request(f"parameter given more than once: {', '.join(duplicated)}")
        self.query: dict[str, str] = {k: values[0] for k, values in query.items()}

    @property
    def volume(self) -> Volume:
        if self._volume is None:
            raise Problem(401, "unauthorized", "Authentication required")
        return self._volume

    def check_unlocked(self, path: str, *, members: bool = False, parent: bool | None = False) -> None:
        """Refuse (423) a write that a client's WebDAV lock forbids (see :data:`LockCheck`)."""
        if self._lock_check is not None:
            self._lock_check(self.environ, path, members, parent)

    def check_unlocked_if_last(self, path: str | None, length: int | None, end: int | None) -> None:
        """:meth:`check_unlocked` for an upload session's chunk ending at ``end`` (None: not
        known yet): only the chunk that ends the upload writes the file, and a check costs a
        query. ``path`` None: a partial upload, which writes no file."""
        if path is not None and (length is None or end is None or end >= length):
            self.check_unlocked(path, parent=None)

    def header(self, name: str) -> str | None:
        key = name.upper().replace("-", "_")
        # WSGI keeps these two without the HTTP_ prefix.
        value = self.environ.get(key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key)
        return None if value is None else str(value)

    def param(self, name: str) -> str:
        value = self.query.get(name)
        if value is None or value == "":
            raise bad_request(f"the {name!r} parameter is required")
        return value

    def int_param(self, name: str, *, default: int | None = None, minimum: int = 0) -> int | None:
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        value = digits(raw)
        if value is None or value < minimum:
            raise bad_request(f"{name} must be an integer >= {minimum}")
        return value

    def device(self) -> str | None:
        """The client's name for the revision's device field (its User-Agent, shortened)."""
        agent = self.header("User-Agent")
        return agent[:200] if agent else None

    def if_match(self) -> str | None:
        """A single entity tag (or ``*``) from If-Match; lists are refused here."""
        raw = (self.header("If-Match") or "").strip()
        if not raw:
            return None
        if raw == "*":
            return raw
        if "," in raw:
            raise bad_request("If-Match takes one entity tag here")
        return raw if raw.startswith('"') else f'"{raw}"'

    def content_length(self) -> int | None:
        raw = self.environ.get("CONTENT_LENGTH", "").strip()
        if not raw:
            return None
        length = digits(raw)
        if length is None:
            raise bad_request("bad Content-Length")
        return length

    def body(self) -> RequestBody:
        return RequestBody(self.environ["wsgi.input"], self.content_length())

    def json(self, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
        """The body as a JSON object of at most ``limit`` bytes (413 beyond)."""
        ctype = self.environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise Problem(415, "unsupported-media-type", "Unsupported media type", "send application/json")
        length = self.content_length()
        too_large = Problem(413, "too-large", "Too large", f"this JSON body is limited to {limit} bytes")
        if length is not None and length > limit:
            raise too_large
        raw = self.body().read_up_to(limit + 1)
        if len(raw) > limit:
            raise too_large
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            # ValueError: not JSON, not UTF-8, or an integer of over 4300 digits; RecursionError:
            # nesting deeper than the parser's stack.
            raise bad_request(f"the body is not valid JSON: {type(exc).__name__}: {exc}"[:300]) from None
        if not isinstance(doc, dict):
            raise bad_request("the body must be a JSON object")
        return doc


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Iterable[bytes] = ()

    @classmethod
    def json(cls, status: int, doc: Any, headers: list[tuple[str, str]] | None = None) -> Response:
        data = json.dumps(doc, separators=(",", ":")).encode()
        out = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        return cls(status, out + (headers or []), [data])


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    #: The OpenAPI operation object (summary, parameters, requestBody, responses).
    operation: dict[str, Any]
    #: Served without credentials (the OpenAPI document).
    public: bool = False


#: Reason phrases that differ from the standard ones (or have none there).
_REASONS = {
    308: "Resume Incomplete",  # the resumable upload protocol's meaning of 308
    413: "Content Too Large",
    460: "Checksum Mismatch",  # tus checksum extension
}


def status_line(status: int) -> str:
    phrase = _REASONS.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
    return f"{status} {phrase}"


class Api:
    """The WSGI app mounted at ``prefix`` (``/api/v1``), behind the authenticator."""

    def __init__(
        self,
        engine: Engine,
        routes: list[Route],
        *,
        prefix: str,
        account_key: str,
        lock_check: LockCheck | None = None,
    ) -> None:
        self.engine = engine
        self._lock_check = lock_check
        self.routes = routes
        self.prefix = prefix
        self._account_key = account_key
        self._by_path: dict[str, dict[str, Route]] = {}
        self._templates: list[tuple[re.Pattern[str], dict[str, Route]]] = []
        for route in routes:
            self._by_path.setdefault(route.path, {})[route.method] = route
        for template, methods in self._by_path.items():
            if "{" in template:
                # Route paths are plain segments and {name} placeholders (one segment each).
                pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
                self._templates.append((re.compile(f"^{pattern}$"), methods))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            response = self._dispatch(environ)
            if response.status == 0:
                # The connection left the server (a long-poll, through the server's detach
                # hook): nothing more goes through WSGI, not even start_response.
                return []
        except Problem as problem:
            response = _problem_response(problem)
        except e.StorageError as exc:
            response = _problem_response(problems.from_storage_error(exc))
        except MalformedBody as exc:
            response = _problem_response(Problem(400, "malformed-body", "Malformed request body", str(exc)))
            response.headers.append(("Connection", "close"))
        except Exception:
            log.exception("%s %s failed", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            response = _problem_response(Problem(500, "internal-error", "Internal server error"))
        start_response(status_line(response.status), response.headers)
        return _guarded(response.body, environ)

    def _dispatch(self, environ: dict[str, Any]) -> Response:
        path = environ.get("PATH_INFO", "")[len(self.prefix) :] or "/"
        methods = self._by_path.get(path)
        params: dict[str, str] = {}
        if methods is None:
            for pattern, candidates in self._templates:
                m = pattern.match(path)
                if m is not None:
                    methods, params = candidates, m.groupdict()
                    break
        if methods is None:
            raise Problem(404, "not-found", "Not found", f"no API endpoint {path!r}")
        method = environ.get("REQUEST_METHOD", "GET")
        override = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE")
        if override and method == "POST":
            # For clients behind proxies that drop PATCH or DELETE (tus 1.0). Never HEAD: the
            # answer would keep a GET's Content-Length without its body, and the client wait.
            if override.upper() == "HEAD":
                raise bad_request("X-HTTP-Method-Override cannot turn a POST into a HEAD")
            method = override.upper()
        route = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
        if route is None:
            problem = Problem(405, "method-not-allowed", "Method not allowed")
            problem.headers.append(("Allow", ", ".join(sorted(methods))))
            raise problem
        volume = None
        account_id = environ.get(self._account_key)
        if account_id is not None:
            volume = self.engine.volume(int(account_id))
        elif not route.public:
            raise Problem(401, "unauthorized", "Authentication required")
        response = route.handler(Request(environ, volume, params, lock_check=self._lock_check))
        if method == "HEAD":
            _close(response.body)
            response.body = ()
        return response


def _problem_response(problem: Problem) -> Response:
    data = problem.body()
    headers = [("Content-Type", problems.CONTENT_TYPE), ("Content-Length", str(len(data))), *problem.headers]
    if problem.status == 413:
        headers.append(("Connection", "close"))
    return Response(problem.status, headers, [data])


def _guarded(body: Iterable[bytes], environ: dict[str, Any]) -> Iterable[bytes]:
    """Pass the body through; an error after the headers drops the connection (never a short 200)."""
    if isinstance(body, list | tuple):
        return body
    return _Guarded(body, environ)


class _Guarded:
    def __init__(self, body: Iterable[bytes], environ: dict[str, Any]) -> None:
        self._body = body
        self._environ = environ

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        except Exception as exc:
            log.error("%s failed mid-response: %s", self._environ.get("PATH_INFO"), exc)
            raise

    def close(self) -> None:
        _close(self._body)


def _close(body: Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()
