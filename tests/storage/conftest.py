"""Engines for storage tests: SQLite and real PostgreSQL, with fast key derivation."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from storage.backends.base import Backend
from storage.chunker import ChunkerParams
from storage.config import PasswordHashing, StorageConfig
from storage.engine import Engine
from storage.errors import BackendUnavailable
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


class CountingReader:
    """A body that hands out at most ``step`` bytes per read (like a socket) and counts them."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step
        self.count = 0

    def read(self, n: int = -1, /) -> bytes:
        n = self._step if n < 0 else min(n, self._step)
        piece = bytes(self._data[self.count : self.count + n])
        self.count += len(piece)
        return piece


class HandOffs:
    """The blocks writes hand to the engine's pool, each as (offset in its write's stream,
    size, bytes of ``body`` read by then)."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.body: CountingReader | None = None
        self.blocks: list[tuple[int, int, int]] = []
        real = engine.executor.submit

        def submit(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            if getattr(fn, "__name__", None) == "_prepare" and self.body is not None:
                data, offset = args
                self.blocks.append((offset, len(data), self.body.count))
            return real(fn, *args, **kwargs)

        monkeypatch.setattr(engine.executor, "submit", submit)


class VolatileTracking:
    """A backend wrapper that knows which objects were put without sync and not synced since."""

    def __init__(self, inner: Backend, *, fail_sync: bool = False) -> None:
        self.inner = inner
        self.fail_sync = fail_sync
        self.volatile: set[str] = set()
        self.syncs = 0
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes, *, sync: bool = True) -> None:
        self.inner.put(name, data, sync=sync)
        if not sync:
            with self._lock:
                self.volatile.add(name)

    def sync(self, names: Iterable[str]) -> None:
        names = list(names)
        if self.fail_sync:
            raise BackendUnavailable("disk full (injected)")
        self.inner.sync(names)
        with self._lock:
            self.syncs += 1
            self.volatile.difference_update(names)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return fresh_pg_database(request.getfixturevalue("pg_url"))


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[EngineFactory]:
    engines: list[Engine] = []
    # The session's Redis serves many tests whose databases repeat account and node ids: each
    # test's engines get a namespace of their own, or one would read another's cache entries.
    namespace = f"t-{secrets.token_hex(4)}"

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
            redis_namespace=kw.pop("redis_namespace", namespace),
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
