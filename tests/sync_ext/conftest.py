"""The API in-process (httpx's WSGI transport over the whole app), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from davserver.app import AppSettings, create_app
from storage.engine import Engine
from tests.storage.conftest import EngineFactory, database_url, make_engine

__all__ = ["database_url", "make_engine"]

BASE = "http://127.0.0.1"


@pytest.fixture
def engine(make_engine: EngineFactory, database_url: str) -> Engine:
    engine = make_engine(database_url)
    engine.accounts.create("alice", "alice-password")
    engine.accounts.create("bob", "bob-password-1")
    return engine


@pytest.fixture
def transport(engine: Engine) -> httpx.WSGITransport:
    return httpx.WSGITransport(app=create_app(engine, AppSettings()))


@pytest.fixture
def api(transport: httpx.WSGITransport) -> Iterator[httpx.Client]:
    """alice's client, based at /api/v1."""
    with httpx.Client(transport=transport, base_url=BASE + "/api/v1", auth=("alice", "alice-password")) as c:
        yield c


@pytest.fixture
def bob(transport: httpx.WSGITransport) -> Iterator[httpx.Client]:
    with httpx.Client(transport=transport, base_url=BASE + "/api/v1", auth=("bob", "bob-password-1")) as c:
        yield c
