"""Storage errors -> WebDAV statuses: the one table, looked up by class.

WsgiDAV turns any foreign exception into a 500, so every provider entry point
that calls the engine runs inside :func:`dav_errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_FORBIDDEN,
    HTTP_INTERNAL_ERROR,
    HTTP_LOCKED,
    HTTP_NOT_FOUND,
    HTTP_PRECONDITION_FAILED,
    HTTP_REQUEST_ENTITY_TOO_LARGE,
    HTTP_SERVICE_UNAVAILABLE,
    DAVError,
)

from storage import errors as e

HTTP_INSUFFICIENT_STORAGE = 507

STATUS: dict[type[e.StorageError], int] = {
    e.NotFound: HTTP_NOT_FOUND,
    e.AlreadyExists: HTTP_PRECONDITION_FAILED,
    e.Conflict: HTTP_CONFLICT,
    e.InvalidName: HTTP_BAD_REQUEST,
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


def to_dav_error(exc: e.StorageError) -> DAVError:
    return DAVError(status_for(exc), context_info=str(exc))


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


__all__ = ["HTTP_FORBIDDEN", "STATUS", "dav_errors", "status_for", "to_dav_error", "translated"]
