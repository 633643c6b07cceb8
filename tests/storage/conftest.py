"""Engines for storage tests: SQLite and real PostgreSQL, with fast key derivation."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from storage.chunker import ChunkerParams
from storage.config import PasswordHashing, StorageConfig
from storage.engine import Engine
from storage.keys import MasterKey

WEAK_HASHING = PasswordHashing(time_cost=1, memory_cost_kib=8, parallelism=1)
#: Small blocks keep multi-block tests fast; the default parameters get their own tests.
SMALL_CHUNKS = ChunkerParams(min_size=16 << 10, avg_size=64 << 10, max_size=256 << 10)


def fresh_pg_database(server_url: str) -> str:
    """Create an empty database on the test server and return its URL."""
    url = make_url(server_url)
    name = f"t_{secrets.token_hex(6)}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


EngineFactory = Callable[..., Engine]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return fresh_pg_database(request.getfixturevalue("pg_url"))


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[EngineFactory]:
    engines: list[Engine] = []

    def factory(database_url: str | None = None, blocks_url: str | None = None, **kw: Any) -> Engine:
        config = StorageConfig(
            database_url=database_url or f"sqlite:///{tmp_path / 'meta.db'}",
            blocks_url=blocks_url or f"file://{tmp_path / 'blocks'}",
            master_key=kw.pop("master_key", None) or MasterKey.generate(),
            password_hashing=WEAK_HASHING,
            chunker=kw.pop("chunker", SMALL_CHUNKS),
            # Every block an object in the block store unless a test asks for inline blocks
            # (with the small test chunker, most blocks would fit in a row otherwise).
            inline_block_bytes=kw.pop("inline_block_bytes", 0),
        )
        engine = Engine.open(replace(config, **kw))
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        engine.close()


@pytest.fixture
def engine(make_engine: EngineFactory, database_url: str) -> Engine:
    """An engine on each database (SQLite, PostgreSQL) with the file block backend."""
    return make_engine(database_url)
