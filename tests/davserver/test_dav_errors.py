"""Exceptions become clean responses: storage errors by the table, surprises as a bare 500."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from davserver.app import AppSettings, create_app
from davserver.dav.errors import STATUS, status_for
from storage import errors
from storage.engine import Engine
from storage.volume import Volume
from tests.storage.conftest import EngineFactory


@pytest.fixture
def client(make_engine: EngineFactory) -> Iterator[tuple[Engine, httpx.Client]]:
    engine = make_engine()
    engine.accounts.create("alice", "alice-password")
    app = create_app(engine, AppSettings())
    transport = httpx.WSGITransport(app=app)
    auth = ("alice", "alice-password")
    with httpx.Client(transport=transport, base_url="http://127.0.0.1", auth=auth) as c:
        yield engine, c


def test_unexpected_exception_is_a_bare_500(
    client: tuple[Engine, httpx.Client], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _, c = client

    def boom(self: Volume, path: str) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(Volume, "listdir", boom)
    r = c.request("PROPFIND", "/dav/", headers={"Depth": "1"})
    assert r.status_code == 500
    assert b"secret" not in r.content and b"RuntimeError" not in r.content
    assert "secret internal detail" in caplog.text  # but the operator sees it


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.QuotaExceeded("full"), 507),
        (errors.BackendUnavailable("s3 down"), 503),
        (errors.InvalidName("bad"), 400),
        (errors.Locked("busy"), 423),
    ],
)
def test_storage_errors_map_through_the_table(
    client: tuple[Engine, httpx.Client], monkeypatch: pytest.MonkeyPatch, exc: Exception, status: int
) -> None:
    _, c = client

    def fail(self: Volume, path: str) -> None:
        raise exc

    monkeypatch.setattr(Volume, "listdir", fail)
    assert c.request("PROPFIND", "/dav/", headers={"Depth": "1"}).status_code == status


def test_every_storage_error_is_in_the_table() -> None:
    """A new storage error must be given a status, not fall through to 500."""
    public = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.StorageError)]
    assert len(public) > 10
    for cls in public:
        if cls is errors.StorageError:
            continue
        assert any(base in STATUS for base in cls.__mro__), cls
        assert status_for(cls("x")) == next(STATUS[b] for b in cls.__mro__ if b in STATUS)
