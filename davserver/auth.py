"""Authentication in front of both faces (/dav and /api/v1).

Accepts ``Authorization: Basic`` with an account password or a device token as
the password, and ``Authorization: Bearer <device token>``. On success the
account id is put in ``environ["davserver.account_id"]`` (the documented
contract the faces read; neither face imports this module).

Why it looks like this:

* argon2id costs ~100 ms by design, and WebDAV clients authenticate every
  request, so verified passwords are cached in memory for ``cache_seconds``
  (keyed by a SHA-256 of name and secret, never the secret itself). A password
  change therefore takes effect within that time. Device tokens need no KDF
  (one indexed read of their SHA-256), so they are checked on every request
  and a revocation bites at once, on every node.
* Failed logins are throttled per account name and per client address: past
  ``max_failures`` in ``window`` seconds, further attempts get 429 with
  Retry-After without any password check, which caps online guessing.
* Basic credentials travel in clear over plain HTTP, so they are refused (403)
  unless the request is HTTPS, comes from loopback, or the config allows it
  (e.g. behind a TLS-terminating proxy that sets X-Forwarded-Proto).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from davserver.wsgi import ACCOUNT_KEY, StartResponse, WSGIApp, plain
from storage.accounts import Accounts, is_token
from storage.errors import AuthenticationFailed, BackendUnavailable
from webcommon.problems import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from webcommon.problems import Problem, bad_request, from_storage_error

ACCOUNT_NAME_KEY = "davserver.account_name"
T = TypeVar("T")
log = logging.getLogger("davserver.auth")


@dataclass(frozen=True)
class AuthSettings:
    realm: str = "davserver"
    protected_prefixes: tuple[str, ...] = ("/dav", "/api/v1")
    public_paths: frozenset[str] = frozenset({"/api/v1/openapi.json"})
    #: Where refusals are RFC 9457 problem details rather than text.
    problem_prefixes: tuple[str, ...] = ("/api/v1",)
    allow_insecure_basic: bool = False
    trust_forwarded_proto: bool = False
    #: Load balancers / proxies (addresses or networks) whose X-Forwarded-For is believed:
    #: behind them the client is the last address in it that is not one of theirs.
    trusted_proxies: tuple[str, ...] = ()
    cache_seconds: float = 30.0
    cache_size: int = 10_000
    max_failures: int = 10
    window_seconds: float = 300.0
    lockout_seconds: float = 60.0


_LOOPBACK = frozenset({"127.0.0.1", "::1"})


class LoginThrottle:
    """Counts failures per key in a sliding window; thread-safe, in memory."""

    def __init__(self, settings: AuthSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._s = settings
        self._clock = clock
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def retry_after(self, keys: Iterable[str]) -> float:
        now = self._clock()
        with self._lock:
            waits = [self._locked_until.get(k, 0) - now for k in keys]
        return max([0.0, *waits])

    def failed(self, keys: Iterable[str]) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                recent = [t for t in self._failures.get(key, []) if t > now - self._s.window_seconds]
                recent.append(now)
                self._failures[key] = recent
                if len(recent) >= self._s.max_failures:
                    self._locked_until[key] = now + self._s.lockout_seconds
                    self._failures[key] = []
            if len(self._failures) > 100_000:  # bound memory under a spray attack
                self._failures.clear()

    def succeeded(self, account_key: str) -> None:
        with self._lock:
            self._failures.pop(account_key, None)

    def shared_retry_after(self, keys: Iterable[str]) -> float:
        """What the other nodes know (nothing here: this throttle is one node's)."""
        return 0.0


class Throttled(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"retry in {seconds:.0f} s")
        self.seconds = seconds


class SharedLoginThrottle(LoginThrottle):
    """The throttle of all nodes at once, in Redis: N nodes behind a balancer must not allow
    N times the guesses.

    Failures are counted per key in a fixed window (``SET NX EX`` then ``INCR``); reaching
    ``max_failures`` sets a lock key that expires after ``lockout_seconds``. Everything is
    also counted in memory, which is what protects this node while Redis is unreachable
    (then checks skip Redis for ``BYPASS_SECONDS`` rather than wait on it each time).
    Only logins that need a check consult Redis (cached passwords do not: they were
    right a moment ago), so a busy node makes no Redis round trip per request.
    """

    BYPASS_SECONDS = 5.0

    def __init__(
        self,
        settings: AuthSettings,
        redis_url: str,
        namespace: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(settings, clock)
        self._redis = redis.Redis.from_url(
            redis_url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        self._prefix = f"{namespace}:login:"
        self._down_until = 0.0

    def shared_retry_after(self, keys: Iterable[str]) -> float:
        keys = list(keys)
        # PTTL is -2 for no lock, -1 for one without expiry (not written by this class).
        return self._shared(lambda r: max([0.0, *(ms / 1000 for ms in self._pttls(r, keys))]), 0.0)

    def failed(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        super().failed(keys)
        self._shared(lambda r: self._count(r, keys), None)

    def succeeded(self, account_key: str) -> None:
        super().succeeded(account_key)
        self._shared(lambda r: r.delete(self._prefix + "fail:" + account_key), None)

    def _pttls(self, r: redis.Redis, keys: list[str]) -> list[int]:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(self._prefix + "lock:" + key)
        return [int(ms) for ms in pipe.execute()]

    def _count(self, r: redis.Redis, keys: list[str]) -> None:
        window, lockout = int(self._s.window_seconds) or 1, int(self._s.lockout_seconds) or 1
        pipe = r.pipeline(transaction=False)
        for key in keys:
            # The window starts with the first failure (SET NX EX; INCR keeps the expiry).
            pipe.set(self._prefix + "fail:" + key, 0, ex=window, nx=True)
            pipe.incr(self._prefix + "fail:" + key)
        counts = pipe.execute()[1::2]
        for key, count in zip(keys, counts, strict=True):
            if int(count) >= self._s.max_failures:
                r.set(self._prefix + "lock:" + key, 1, ex=lockout)
                r.delete(self._prefix + "fail:" + key)

    def _shared(self, action: Callable[[redis.Redis], T], fallback: T) -> T:
        if self._clock() < self._down_until:
            return fallback
        try:
            return action(self._redis)
        except (redis.RedisError, OSError) as exc:
            log.warning("login throttle: Redis unreachable (%s); counting on this node only", exc)
            self._down_until = self._clock() + self.BYPASS_SECONDS
            return fallback


class Authenticator:
    def __init__(
        self,
        app: WSGIApp,
        accounts: Accounts,
        settings: AuthSettings,
        clock: Callable[[], float] = time.monotonic,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self._app = app
        self._accounts = accounts
        self._s = settings
        self._clock = clock
        self.throttle = throttle or LoginThrottle(settings, clock)
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies]
        self._cache: OrderedDict[bytes, tuple[int, str, float]] = OrderedDict()
        self._cache_lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not self._protected(path):
            return self._app(environ, start_response)
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme not in ("basic", "bearer"):
            return self._challenge(environ, start_response)
        if not self._secure_channel(environ):
            return self._refuse(
                environ,
                start_response,
                Problem(
                    403, "insecure-channel", "Forbidden", "credentials over plain HTTP are refused: use HTTPS"
                ),
            )
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
                name, _, secret = decoded.partition(":")
            except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII text
                return self._refuse(environ, start_response, bad_request("malformed Basic credentials"))
        else:
            name, secret = "", value.strip()
        client = f"ip:{self.client_address(environ)}"
        keys = [client, f"account:{name.lower()}"] if name else [client]
        wait = self.throttle.retry_after(keys)
        if wait > 0:
            problem = Problem(
                429, "too-many-failed-logins", "Too many requests", "too many failed logins; retry later"
            )
            problem.headers.append(("Retry-After", str(int(wait) + 1)))
            return self._refuse(environ, start_response, problem)
        try:
            account_id, account_name = self._verify(name, secret, keys)
        except Throttled as exc:
            problem = Problem(
                429, "too-many-failed-logins", "Too many requests", "too many failed logins; retry later"
            )
            problem.headers.append(("Retry-After", str(int(exc.seconds) + 1)))
            return self._refuse(environ, start_response, problem)
        except AuthenticationFailed:
            self.throttle.failed(keys)
            return self._challenge(environ, start_response)
        except BackendUnavailable as exc:
            return self._refuse(environ, start_response, from_storage_error(exc))
        self.throttle.succeeded(f"account:{account_name.lower()}")
        environ[ACCOUNT_KEY] = account_id
        environ[ACCOUNT_NAME_KEY] = account_name
        environ["wsgidav.auth.user_name"] = account_name
        environ["wsgidav.auth.realm"] = self._s.realm
        return self._app(environ, start_response)

    def _protected(self, path: str) -> bool:
        if path in self._s.public_paths:
            return False
        return any(path == p or path.startswith(p + "/") for p in self._s.protected_prefixes)

    def _secure_channel(self, environ: dict[str, Any]) -> bool:
        if self._s.allow_insecure_basic or environ.get("wsgi.url_scheme") == "https":
            return True
        if self._s.trust_forwarded_proto and environ.get("HTTP_X_FORWARDED_PROTO", "").lower() == "https":
            return True
        address = self.client_address(environ)
        if address in _LOOPBACK:
            return True  # the usual case, without parsing the address
        try:
            return ipaddress.ip_address(address).is_loopback
        except ValueError:
            return False

    def client_address(self, environ: dict[str, Any]) -> str:
        """The client's address: REMOTE_ADDR, or behind a trusted proxy what it forwarded.

        X-Forwarded-For is read right to left, skipping trusted proxies, so a client
        cannot choose its address by sending the header itself (only the entries the
        trusted proxies appended are believed).
        """
        remote = str(environ.get("REMOTE_ADDR", ""))
        if not self._proxies or not self._trusted(remote):
            return remote
        hops = [h.strip() for h in str(environ.get("HTTP_X_FORWARDED_FOR", "")).split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else remote

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._proxies)

    def _verify(self, name: str, secret: str, keys: list[str]) -> tuple[int, str]:
        if is_token(secret):
            # One indexed read, no KDF: not cached, so a revoked token stops at once, on every node.
            # (Guessing a 256-bit token is hopeless: this node's throttle is enough.)
            return self._check(name, secret)
        key = hashlib.sha256(f"{name}\0{secret}".encode()).digest()
        now = self._clock()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and hit[2] > now:
                self._cache.move_to_end(key)
                return hit[0], hit[1]
        # A password to check: first ask the other nodes whether this is a guessing spree.
        wait = self.throttle.shared_retry_after(keys)
        if wait > 0:
            raise Throttled(wait)
        account_id, account = self._check(name, secret)
        with self._cache_lock:
            self._cache[key] = (account_id, account, now + self._s.cache_seconds)
            while len(self._cache) > self._s.cache_size:
                self._cache.popitem(last=False)
        return account_id, account

    def _check(self, name: str, secret: str) -> tuple[int, str]:
        info = self._accounts.authenticate(name, secret) if name else self._accounts.account_for_token(secret)
        return info.id, info.name

    def _challenge(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        problem = Problem(401, "unauthorized", "Authentication required")
        problem.headers.append(("WWW-Authenticate", f'Basic realm="{self._s.realm}", charset="UTF-8"'))
        return self._refuse(environ, start_response, problem)

    def _refuse(
        self, environ: dict[str, Any], start_response: StartResponse, problem: Problem
    ) -> Iterable[bytes]:
        """problem+json on the extension API, short text elsewhere (WebDAV clients show it as is)."""
        path = environ.get("PATH_INFO", "")
        status = f"{problem.status} {HTTPStatus(problem.status).phrase}"
        if any(path == p or path.startswith(p + "/") for p in self._s.problem_prefixes):
            body = problem.body()
            headers = [
                ("Content-Type", PROBLEM_CONTENT_TYPE),
                ("Content-Length", str(len(body))),
                *problem.headers,
            ]
            start_response(status, headers)
            return [body]
        return plain(start_response, status, (problem.detail or problem.title) + "\n", problem.headers)
