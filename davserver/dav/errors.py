"""Storage errors -> WebDAV statuses: the one table, looked up by class.

WsgiDAV turns any foreign exception into a 500, so every provider entry point
that calls the engine runs inside :func:`dav_errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_FORBIDDEN,
    HTTP_INTERNAL_ERROR,
    HTTP_LOCKED,
    HTTP_NO_CONTENT,
    HTTP_NOT_FOUND,
    HTTP_NOT_MODIFIED,
    HTTP_PRECONDITION_FAILED,
    HTTP_REQUEST_ENTITY_TOO_LARGE,
    HTTP_SERVICE_UNAVAILABLE,
    DAVError,
    get_http_status_string,
)
from wsgidav.mw.base_mw import BaseMiddleware
from wsgidav.util import SubAppStartResponse

from storage import errors as e
from webcommon.body import MalformedBody

HTTP_INSUFFICIENT_STORAGE = 507

STATUS: dict[type[e.StorageError], int] = {
    e.NotFound: HTTP_NOT_FOUND,
    e.AlreadyExists: HTTP_PRECONDITION_FAILED,
    # A sync token the journal no longer reaches (the REPORT adds DAV:valid-sync-token).
    e.CursorExpired: HTTP_FORBIDDEN,
    e.Conflict: HTTP_CONFLICT,
    e.InvalidName: HTTP_BAD_REQUEST,
    e.InvalidBlockList: HTTP_BAD_REQUEST,
    e.ChecksumMismatch: HTTP_BAD_REQUEST,
    e.PreconditionFailed: HTTP_PRECONDITION_FAILED,
    e.Locked: HTTP_LOCKED,
    e.QuotaExceeded: HTTP_INSUFFICIENT_STORAGE,
    e.TooLarge: HTTP_REQUEST_ENTITY_TOO_LARGE,
    e.AuthenticationFailed: HTTP_FORBIDDEN,
    e.IntegrityError: HTTP_INTERNAL_ERROR,
    e.SchemaMismatch: HTTP_SERVICE_UNAVAILABLE,
    e.BackendUnavailable: HTTP_SERVICE_UNAVAILABLE,
}


def status_for(exc: e.StorageError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return HTTP_INTERNAL_ERROR


def retry_after(status: int) -> list[tuple[str, str]]:
    """The headers a response of ``status`` carries: Retry-After on 503."""
    if status != HTTP_SERVICE_UNAVAILABLE:
        return []
    return [("Retry-After", str(e.BackendUnavailable.retry_after_seconds))]


def to_dav_error(exc: e.StorageError) -> DAVError:
    status = status_for(exc)
    return DAVError(status, context_info=str(exc), add_headers=retry_after(status) or None)


@contextmanager
def dav_errors() -> Iterator[None]:
    try:
        yield
    except e.StorageError as exc:
        raise to_dav_error(exc) from exc


F = TypeVar("F", bound=Callable[..., Any])


def translated(fn: F) -> F:
    """Decorator form of :func:`dav_errors` for provider methods."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with dav_errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


log = logging.getLogger("davserver.dav")


class ErrorResponses(BaseMiddleware):
    """Turns exceptions into responses; in place of WsgiDAV's ErrorPrinter.

    Differences that matter: storage errors map through :data:`STATUS`;
    unexpected exceptions are logged with their traceback and answered with a
    bare 500 (ErrorPrinter puts the exception's text in the page); an error
    after the response has started is re-raised so the server drops the
    connection and the client sees a truncated body, never a silently wrong one.
    """

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sub = SubAppStartResponse()
        started = False
        try:
            app_iter = self.next_app(environ, sub)
            try:
                for chunk in app_iter:
                    if not started:
                        start_response(sub.status, sub.response_headers, sub.exc_info)
                        started = True
                    yield chunk
            finally:
                close = getattr(app_iter, "close", None)
                if close is not None:
                    close()
            if not started:
                start_response(sub.status, sub.response_headers, sub.exc_info)
            return
        except DAVError as exc:
            # WsgiDAV's PUT wraps what its body copy raised in a 500 (util.fail).
            err = _malformed(exc.src_exception) if isinstance(exc.src_exception, MalformedBody) else exc
        except e.StorageError as exc:
            err = to_dav_error(exc)
        except MalformedBody as exc:
            err = _malformed(exc)
        except Exception:
            log.exception("%s %s failed", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            err = DAVError(HTTP_INTERNAL_ERROR)
        if started:
            log.error(
                "%s %s failed mid-response: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), err
            )
            raise err
        status = get_http_status_string(err)
        if err.value in (HTTP_NOT_MODIFIED, HTTP_NO_CONTENT):
            start_response(status, [("Content-Length", "0"), *(err.add_headers or [])])
            return
        if err.value == HTTP_INTERNAL_ERROR:
            if err.src_exception is not None or err.context_info:
                log.error("internal error: %s (%r)", err.context_info, err.src_exception)
            content_type, body = "text/plain; charset=utf-8", b"internal server error\n"
        else:
            content_type, body = err.get_response_page()
        start_response(
            status,
            [("Content-Type", content_type), ("Content-Length", str(len(body))), *(err.add_headers or [])],
        )
        yield body


def _malformed(exc: MalformedBody) -> DAVError:
    # The rest of the body cannot be told from the next request: the connection closes.
    return DAVError(HTTP_BAD_REQUEST, str(exc), add_headers=[("Connection", "close")])


__all__ = [
    "HTTP_FORBIDDEN",
    "STATUS",
    "ErrorResponses",
    "dav_errors",
    "status_for",
    "to_dav_error",
    "translated",
]
