"""Small WSGI helpers shared by the middlewares (no state)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from webcommon.numbers import MAX_EPOCH

#: environ key of the authenticated account's id, set by davserver.auth and read by
#: the faces (the extension API, which may not import davserver, uses the same string).
ACCOUNT_KEY = "davserver.account_id"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def valid_time(secs: float) -> float:
    """``secs``, or 0 beyond +-MAX_EPOCH or NaN (a value stored before the range was enforced):
    a date no answer can format must not turn every answer about the file into a 500."""
    return secs if -MAX_EPOCH < secs < MAX_EPOCH else 0.0


def http_date(secs: float) -> str:
    """RFC 1123 date, locale independent (email.utils.formatdate, five times faster).

    Memoised per whole second: every response's Date repeats the same few values, and a
    small file's Last-Modified is usually one of them too (2% of a 4 KiB PUT's GIL time).
    """
    return _http_date(math.floor(valid_time(secs)))


@functools.lru_cache(maxsize=256)
def _http_date(secs: int) -> str:
    t = time.gmtime(secs)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def plain(
    start_response: StartResponse,
    status: str,
    body: str,
    headers: list[tuple[str, str]] | None = None,
    *,
    close: bool = False,
) -> list[bytes]:
    """A short text/plain response; ``close`` when the request body was not read."""
    data = body.encode()
    out = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    out += headers or []
    if close:
        out.append(("Connection", "close"))
    start_response(status, out)
    return [data]
