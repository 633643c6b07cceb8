"""Small WSGI helpers shared by the middlewares (no state)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

#: environ key of the authenticated account's id, set by davserver.auth and read by
#: the faces (the extension API, which may not import davserver, uses the same string).
ACCOUNT_KEY = "davserver.account_id"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


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
