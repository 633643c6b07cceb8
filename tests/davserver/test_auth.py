"""The authentication middleware in-process: channels, caching, throttling, tokens."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable
from typing import Any

import pytest

from davserver.auth import ACCOUNT_KEY, Authenticator, AuthSettings, SharedLoginThrottle
from storage.engine import Engine
from tests.davserver.statements import statements
from tests.storage.conftest import EngineFactory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _inner(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(environ.get(ACCOUNT_KEY)).encode()]


def call(
    app: Authenticator, path: str = "/dav/", auth: str | None = None, **environ: Any
) -> tuple[int, bytes]:
    env: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "REMOTE_ADDR": "127.0.0.1"}
    env["wsgi.url_scheme"] = "http"
    if auth is not None:
        env["HTTP_AUTHORIZATION"] = auth
    env.update(environ)
    seen: list[str] = []
    body = b"".join(app(env, lambda status, headers, exc=None: seen.append(status)))
    return int(seen[0][:3]), body


def basic(name: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()


@pytest.fixture
def engine(make_engine: EngineFactory) -> Engine:
    e = make_engine()
    e.accounts.create("alice", "alice-password")
    return e


def make(engine: Engine, clock: Clock | None = None, **settings: Any) -> Authenticator:
    return Authenticator(_inner, engine.accounts, AuthSettings(**settings), clock=clock or Clock())


def test_paths_outside_the_faces_need_no_credentials(engine: Engine) -> None:
    app = make(engine)
    assert call(app, "/healthz")[0] == 200
    assert call(app, "/readyz")[0] == 200
    assert call(app, "/api/v1/openapi.json")[0] == 200
    assert call(app, "/dav/")[0] == 401
    assert call(app, "/davx")[0] == 200  # not a prefix match on a partial segment


def test_basic_password_sets_the_account(engine: Engine) -> None:
    status, body = call(make(engine), auth=basic("alice", "alice-password"))
    assert status == 200
    assert body == str(engine.accounts.context_by_name("alice").id).encode()


def test_plain_http_from_another_host_is_refused(engine: Engine) -> None:
    cred = basic("alice", "alice-password")
    assert call(make(engine), auth=cred, REMOTE_ADDR="192.0.2.7")[0] == 403
    assert call(make(engine), auth=cred, REMOTE_ADDR="192.0.2.7", **{"wsgi.url_scheme": "https"})[0] == 200
    assert call(make(engine, allow_insecure_basic=True), auth=cred, REMOTE_ADDR="192.0.2.7")[0] == 200
    proxied = {"REMOTE_ADDR": "192.0.2.7", "HTTP_X_FORWARDED_PROTO": "https"}
    assert call(make(engine), auth=cred, **proxied)[0] == 403
    assert call(make(engine, trust_forwarded_proto=True), auth=cred, **proxied)[0] == 200
    assert call(make(engine), auth=cred, REMOTE_ADDR="::1")[0] == 200


def test_verified_credentials_are_cached_for_a_while(engine: Engine) -> None:
    clock = Clock()
    app = make(engine, clock, cache_seconds=30)
    cred = basic("alice", "alice-password")
    assert call(app, auth=cred)[0] == 200
    engine.accounts.set_password("alice", "changed-password")
    assert call(app, auth=cred)[0] == 200  # still cached
    clock.now += 31
    assert call(app, auth=cred)[0] == 401
    assert call(app, auth=basic("alice", "changed-password"))[0] == 200


def test_a_revoked_token_stops_working_at_once(engine: Engine) -> None:
    clock = Clock()
    app = make(engine, clock, cache_seconds=30)
    info, token = engine.accounts.create_token("alice", "phone")
    assert call(app, auth=f"Bearer {token}")[0] == 200
    assert call(app, auth=basic("alice", token))[0] == 200
    engine.accounts.revoke_token("alice", info.id)
    # Tokens are not cached (no KDF to spare), so no cache time to wait out.
    assert call(app, auth=f"Bearer {token}")[0] == 401
    assert call(app, auth=basic("alice", token))[0] == 401


def test_token_use_is_recorded_at_most_once_a_minute(engine: Engine) -> None:
    clock = Clock()
    app = make(engine, clock, cache_seconds=30)
    _, token = engine.accounts.create_token("alice", "phone")
    assert call(app, auth=f"Bearer {token}")[0] == 200  # records the first use
    writes = [
        s
        for s in statements(engine, lambda: call(app, auth=f"Bearer {token}"))
        if s.lstrip().startswith("UPDATE")
    ]
    assert writes == []


def test_throttle_per_account_and_per_address(engine: Engine) -> None:
    clock = Clock()
    app = make(engine, clock, max_failures=3, window_seconds=60, lockout_seconds=30)
    for _ in range(3):
        assert (
            call(app, auth=basic("alice", "wrong"), REMOTE_ADDR="10.0.0.1", **{"wsgi.url_scheme": "https"})[0]
            == 401
        )
    good = basic("alice", "alice-password")
    https = {"wsgi.url_scheme": "https"}
    # The account is locked for every address, and the guessing address for every account.
    assert call(app, auth=good, REMOTE_ADDR="10.0.0.2", **https)[0] == 429
    assert call(app, auth=basic("bob", "x"), REMOTE_ADDR="10.0.0.1", **https)[0] == 429
    clock.now += 31
    assert call(app, auth=good, REMOTE_ADDR="10.0.0.2", **https)[0] == 200


def test_malformed_authorization_headers(engine: Engine) -> None:
    app = make(engine)
    assert call(app, auth="Basic ***")[0] == 400
    assert call(app, auth="Digest username=alice")[0] == 401
    assert call(app, auth="Basic " + base64.b64encode(b"\xff\xfe:x").decode())[0] == 400
    assert call(app, auth="Bearer ")[0] == 401


def test_behind_a_trusted_proxy_the_forwarded_client_is_throttled_not_the_proxy(engine: Engine) -> None:
    app = make(engine, trusted_proxies=("10.0.0.0/8",), max_failures=3)
    via_lb = {"REMOTE_ADDR": "10.1.2.3", "wsgi.url_scheme": "https"}
    attacker = {**via_lb, "HTTP_X_FORWARDED_FOR": "203.0.113.9"}
    for _ in range(3):
        assert call(app, auth=basic("mallory", "wrong"), **attacker)[0] == 401
    assert call(app, auth=basic("mallory", "wrong"), **attacker)[0] == 429
    # Another client behind the same balancer is not locked out with the attacker...
    other = {**via_lb, "HTTP_X_FORWARDED_FOR": "198.51.100.7"}
    assert call(app, auth=basic("alice", "alice-password"), **other)[0] == 200
    # ...a client cannot choose its address (only what the proxy appended counts)...
    spoofed = {"REMOTE_ADDR": "10.1.2.3", "HTTP_X_FORWARDED_FOR": "127.0.0.1, 203.0.113.9"}
    assert app.client_address(spoofed) == "203.0.113.9"
    # Without a trusted proxy the header is ignored.
    direct = {"REMOTE_ADDR": "192.0.2.1", "HTTP_X_FORWARDED_FOR": "127.0.0.1"}
    assert app.client_address(direct) == "192.0.2.1"


def test_a_remote_client_through_a_local_plain_http_proxy_is_not_loopback(engine: Engine) -> None:
    local_proxy = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}
    alice = basic("alice", "alice-password")
    assert call(make(engine), auth=alice, **local_proxy)[0] == 200  # looks local without the setting
    assert call(make(engine, trusted_proxies=("127.0.0.1",)), auth=alice, **local_proxy)[0] == 403


@pytest.mark.services
def test_nodes_sharing_redis_throttle_guesses_together(engine: Engine, redis_url: str) -> None:
    """Two nodes behind a balancer: failures on either count once, for both."""
    settings = AuthSettings(max_failures=4, window_seconds=60, lockout_seconds=30)
    namespace = f"t{uuid.uuid4().hex[:8]}"
    nodes = [
        Authenticator(
            _inner, engine.accounts, settings, throttle=SharedLoginThrottle(settings, redis_url, namespace)
        )
        for _ in range(2)
    ]
    https = {"wsgi.url_scheme": "https"}
    for i in range(4):  # two guesses on each node
        assert (
            call(nodes[i % 2], auth=basic("alice", f"guess-{i}"), REMOTE_ADDR=f"10.0.0.{i}", **https)[0]
            == 401
        )
    good = basic("alice", "alice-password")
    assert call(nodes[0], auth=good, REMOTE_ADDR="10.9.9.9", **https)[0] == 429
    assert call(nodes[1], auth=good, REMOTE_ADDR="10.9.9.9", **https)[0] == 429


def test_a_shared_throttle_without_redis_still_throttles_this_node(engine: Engine) -> None:
    settings = AuthSettings(max_failures=3, window_seconds=60, lockout_seconds=30)
    throttle = SharedLoginThrottle(settings, "redis://127.0.0.1:9/0", "t")  # nothing listens
    app = Authenticator(_inner, engine.accounts, settings, throttle=throttle)
    https = {"wsgi.url_scheme": "https"}
    for _ in range(3):
        assert call(app, auth=basic("alice", "wrong"), **https)[0] == 401
    assert call(app, auth=basic("alice", "alice-password"), **https)[0] == 429
