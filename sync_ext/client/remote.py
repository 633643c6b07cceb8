"""The server as ``davsync`` sees it: the extension API over HTTP, with retries.

Every call goes through :meth:`Remote._send`, which retries what is worth
retrying (connection failures, timeouts, 502/503/504 and 429, honouring
``Retry-After``) with exponential backoff and jitter, and turns the rest into
:class:`ApiError` carrying the problem type the server sent, so the sync engine
can switch on ``stale-parent`` or ``cursor-reset`` rather than on prose.

:class:`Traffic` counts what crossed the wire: request lines, headers and
bodies out, status lines, headers and bodies in. Delta sync is judged by those
figures (``davsync sync --stats``), so they are measured here, where the bytes
are, not estimated from block sizes.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

API = "/api/v1"
PROBLEM_PREFIX = "urn:davserver:problem:"
#: Statuses that say "try again later" rather than "you are wrong".
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class ClientError(Exception):
    """Something the user has to act on; the message says what."""


class AuthError(ClientError):
    pass


class Offline(ClientError):
    """The server could not be reached (or kept failing) within the retry budget."""


class ApiError(ClientError):
    def __init__(self, status: int, slug: str, detail: str, doc: dict[str, Any]) -> None:
        super().__init__(f"{status} {slug}: {detail}")
        self.status = status
        self.slug = slug
        self.doc = doc


@dataclass
class Traffic:
    """Bytes and requests on the wire, in both directions (thread-safe)."""

    sent: int = 0
    received: int = 0
    requests: int = 0
    blocks_sent: int = 0
    blocks_received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, request: httpx.Request, response: httpx.Response, body_in: int) -> None:
        out = len(request.method) + len(request.url.raw_path) + 11
        out += sum(len(k) + len(v) + 4 for k, v in request.headers.raw) + 2
        out += int(request.headers.get("content-length", "0"))
        back = 15 + len(response.reason_phrase) + sum(len(k) + len(v) + 4 for k, v in response.headers.raw)
        with self._lock:
            self.sent += out
            self.received += back + 2 + body_in
            self.requests += 1

    def count_block(self, *, sent: bool) -> None:
        with self._lock:
            if sent:
                self.blocks_sent += 1
            else:
                self.blocks_received += 1

    def as_dict(self) -> dict[str, int]:
        return {
            "bytes_sent": self.sent,
            "bytes_received": self.received,
            "requests": self.requests,
            "blocks_sent": self.blocks_sent,
            "blocks_received": self.blocks_received,
        }


@dataclass(frozen=True)
class RetryPolicy:
    #: Attempts per call before giving up (0: forever, for the continuous mode).
    attempts: int = 6
    first_delay: float = 0.5
    max_delay: float = 30.0


def base_url(url: str) -> str:
    """The server's root from what a user types: ``…/dav/`` and ``…/api/v1`` are accepted too."""
    url = url.strip().rstrip("/")
    for suffix in ("/api/v1", "/dav"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    if not url.startswith(("http://", "https://")):
        raise ClientError(f"{url!r} is not an http:// or https:// URL")
    return url


class Remote:
    """One account's API. ``auth`` is a device token (Bearer) or a (user, password) pair."""

    def __init__(
        self,
        url: str,
        auth: str | tuple[str, str],
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        on_wait: Callable[[str, float], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = base_url(url)
        self.retry = retry or RetryPolicy()
        self.traffic = Traffic()
        #: Set to stop waiting between retries (davsync's shutdown): the call raises Offline.
        self.cancelled = threading.Event()
        self._on_wait = on_wait or (lambda why, delay: None)
        headers = {"User-Agent": "davsync/0.1"}
        basic: tuple[str, str] | None = None
        if isinstance(auth, str):
            headers["Authorization"] = f"Bearer {auth}"
        else:
            basic = auth
        self._http = httpx.Client(
            base_url=self.url + API,
            headers=headers,
            auth=basic,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # -- account and tree -------------------------------------------------------------

    def account(self) -> dict[str, Any]:
        return self._json("GET", "/account")

    def create_token(self, label: str) -> dict[str, Any]:
        return self._json("POST", "/account/tokens", json={"label": label})

    def revoke_token(self, token_id: int) -> None:
        self._json("DELETE", f"/account/tokens/{token_id}")

    def config(self) -> dict[str, Any]:
        return self._json("GET", "/config")

    def list_folder(self, path: str = "", *, recursive: bool = True, limit: int = 5000) -> Iterable[Any]:
        """Yields the first page's cursor, then every entry below ``path``, page by page."""
        after: str | None = None
        first = True
        while True:
            params: dict[str, Any] = {"path": path, "recursive": str(recursive).lower(), "limit": limit}
            if after is not None:
                params["after"] = after
            page = self._json("GET", "/files/list_folder", params=params)
            if first:
                yield page["cursor"]
                first = False
            yield from page["entries"]
            if not page["has_more"]:
                return
            after = page["next_after"]

    def latest_cursor(self) -> str:
        return str(self._json("GET", "/changes/latest_cursor")["cursor"])

    def changes(self, cursor: str, limit: int = 1000) -> dict[str, Any]:
        return self._json("GET", "/changes/list", params={"cursor": cursor, "limit": limit})

    def longpoll(self, cursor: str, timeout: int = 60) -> dict[str, Any]:
        # The server may add up to 25% jitter (at most 90 s) to the timeout.
        return self._json(
            "GET",
            "/changes/longpoll",
            params={"cursor": cursor, "timeout": timeout},
            timeout=timeout * 1.25 + 100,
        )

    def create_folder(self, path: str, mtime: float | None = None) -> dict[str, Any]:
        return self._json("POST", "/files/create_folder", json={"path": path, "mtime": mtime})

    def move(self, src: str, dst: str, rev: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"from_path": src, "to_path": dst}
        if rev is not None:
            body["rev"] = rev
        return self._json("POST", "/files/move", json=body)

    def delete(self, path: str, rev: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"path": path}
        if rev is not None:
            body["rev"] = rev
        return self._json("POST", "/files/delete", json=body)

    # -- blocks -----------------------------------------------------------------------

    def missing(self, hashes: list[str]) -> set[str]:
        return set(self._json("POST", "/blocks/missing", json={"hashes": hashes})["missing"])

    def put_block(self, sha256: str, data: bytes) -> None:
        self._json("PUT", f"/blocks/{sha256}", content=data)
        self.traffic.count_block(sent=True)

    def get_block(self, sha256: str) -> bytes:
        response = self._send("GET", f"/blocks/{sha256}")
        self.traffic.count_block(sent=False)
        return response.content

    def manifest(self, path: str) -> dict[str, Any]:
        return self._json("GET", "/files/manifest", params={"path": path})

    def commit(
        self, path: str, blocks: list[tuple[str, int]], *, size: int, mtime: float, parent_rev: int | None
    ) -> dict[str, Any]:
        body = {
            "path": path,
            "size": size,
            "mtime": mtime,
            "parent_rev": parent_rev,
            "blocks": [{"hash": h, "size": s} for h, s in blocks],
        }
        # The server reads the listed blocks back to hash the whole file before it answers:
        # allow for that at a slow 20 MiB/s (10 GB: about 8 minutes).
        return self._json("POST", "/files/commit", json=body, timeout=max(60.0, size / (20 << 20)))

    # -- the wire ---------------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return {}
        doc: dict[str, Any] = response.json()
        return doc

    def _send(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            delay = min(self.retry.max_delay, self.retry.first_delay * 2 ** (attempt - 1))
            delay *= 0.5 + random.random()
            try:
                if timeout is not None:
                    kwargs["timeout"] = httpx.Timeout(timeout, connect=10.0)
                response = self._http.request(method, path, **kwargs)
                self.traffic.count(response.request, response, len(response.content))
            except (httpx.TransportError, httpx.DecodingError) as exc:
                why = f"cannot reach {self.url}: {_reason(exc)}"
                if self.retry.attempts and attempt >= self.retry.attempts:
                    raise Offline(why) from None
                self._on_wait(why, delay)
                self._pause(delay, why)
                continue
            if response.status_code < 400:
                return response
            if response.status_code in RETRY_STATUSES and (
                not self.retry.attempts or attempt < self.retry.attempts
            ):
                delay = max(delay, _retry_after(response))
                self._on_wait(f"the server answered {response.status_code}; retrying", delay)
                self._pause(delay, f"the server answered {response.status_code}")
                continue
            raise _error(response)

    def _pause(self, delay: float, why: str) -> None:
        if self.cancelled.wait(delay):
            raise Offline(f"stopped while retrying ({why})")


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(300.0, float(response.headers.get("retry-after", "0")))
    except ValueError:
        return 0.0


def _error(response: httpx.Response) -> ClientError:
    try:
        doc = response.json()
        if not isinstance(doc, dict):
            raise ValueError
    except ValueError:
        doc = {}
    slug = str(doc.get("type", "")).removeprefix(PROBLEM_PREFIX) or "http-error"
    detail = str(doc.get("detail") or doc.get("title") or response.reason_phrase)
    if response.status_code == 401:
        return AuthError(
            "the server refused the credentials (wrong password, or the device token was revoked): "
            "run `davsync login` again"
        )
    if response.status_code in RETRY_STATUSES:
        return Offline(f"the server keeps answering {response.status_code}: {detail}")
    return ApiError(response.status_code, slug, detail, doc)
