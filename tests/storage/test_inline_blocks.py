"""Small blocks kept in their metadata row (StorageConfig.inline_block_bytes)."""

from __future__ import annotations

import hashlib
import io
import random
import time

import pytest
from sqlalchemy import func, select

from storage import errors as e
from storage.cache import Cache
from storage.engine import Engine
from storage.metadata import schema as t
from storage.reader import BlockLocation
from tests.storage.conftest import EngineFactory, database_url

__all__ = ["database_url"]

INLINE = 32 << 10
b = t.blocks.c


@pytest.fixture
def engine(make_engine: EngineFactory, database_url: str) -> Engine:
    engine = make_engine(database_url, inline_block_bytes=INLINE)
    engine.accounts.create("alice", "alice-password")
    return engine


def _objects(engine: Engine) -> list[str]:
    return [info.name for info in engine.backend.list("")]


def _rows(engine: Engine) -> list[tuple[int, bool]]:
    with engine.db.read() as conn:
        rows = conn.execute(select(b.stored_size, b.inline_data.is_not(None)).order_by(b.id)).all()
    return [(int(size), bool(inline)) for size, inline in rows]


def test_a_small_file_lives_in_its_row_and_reads_back(engine: Engine) -> None:
    vol = engine.volume("alice")
    data = random.Random(1).randbytes(5000)
    vol.write("small.txt", io.BytesIO(data))
    assert _objects(engine) == []
    assert _rows(engine) == [(5000 + 40, True)]
    for _ in range(2):  # the second read takes the block list from the cache
        with vol.open("small.txt") as f:
            assert f.read() == data
            f.seek(4000)
            assert f.read(2000) == data[4000:]
    report = engine.fsck(deep=True)
    assert report.clean, report.problems
    assert report.blocks_checked == 1


def test_large_blocks_go_to_the_store_and_only_small_ones_stay_inline(engine: Engine) -> None:
    vol = engine.volume("alice")
    data = random.Random(2).randbytes(3 << 20)
    vol.write("big.bin", io.BytesIO(data))
    rows = _rows(engine)
    assert len(_objects(engine)) == sum(1 for _, inline in rows if not inline) > 0
    assert all(size <= INLINE for size, inline in rows if inline)
    assert all(size > INLINE for size, inline in rows if not inline)
    with vol.open("big.bin") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    assert engine.fsck(deep=True).clean


def test_inline_blocks_are_deduplicated_and_collected(engine: Engine) -> None:
    vol = engine.volume("alice")
    vol.write("a", io.BytesIO(b"same small content" * 100))
    vol.write("b", io.BytesIO(b"same small content" * 100))
    assert len(_rows(engine)) == 1
    vol.delete("a")
    vol.delete("b")
    engine.apply_retention(now=time.time() + 400 * 86400)
    report = engine.gc(grace_seconds=0)
    assert report.blocks_deleted == 1
    assert _rows(engine) == []
    assert engine.fsck().leak_free


def test_a_tampered_inline_block_fails_authentication(engine: Engine) -> None:
    vol = engine.volume("alice")
    vol.write("f", io.BytesIO(b"secret" * 500))
    with engine.db.write() as conn:
        blob = bytearray(conn.execute(select(b.inline_data)).scalar_one())
        blob[-1] ^= 1
        conn.execute(t.blocks.update().values(inline_data=bytes(blob)))
    with pytest.raises(e.IntegrityError), vol.open("f") as f:
        f.read()
    assert not engine.fsck(deep=True).clean


def test_blocks_uploaded_through_the_block_api_and_sessions_may_be_inline(engine: Engine) -> None:
    vol = engine.volume("alice")
    sync = vol.block_sync
    data = b"block api " * 300
    sha = hashlib.sha256(data).digest()
    assert sync.put(sha, data) is True
    assert sync.get(sha) == data
    sync.commit("via-api", [(sha, len(data))], size=len(data), parent_rev=None)
    session = vol.uploads.create(kind="tus", path="via-tus", length=7000)
    vol.uploads.append(session.id, 0, io.BytesIO(b"t" * 7000))
    assert _objects(engine) == [] or all("/tails/" in name for name in _objects(engine))
    with vol.open("via-api") as f:
        assert f.read() == data
    with vol.open("via-tus") as f:
        assert f.read() == b"t" * 7000
    assert engine.fsck(deep=True).clean


def test_the_archive_tier_leaves_inline_blocks_in_their_rows(
    make_engine: EngineFactory, database_url: str
) -> None:
    engine = make_engine(database_url, inline_block_bytes=INLINE, archive_url="memory://")
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    vol.write("small", io.BytesIO(b"x" * 3000))
    vol.write("big", io.BytesIO(random.Random(3).randbytes(1 << 20)))
    inline_rows = sum(1 for _, inline in _rows(engine) if inline)
    assert inline_rows >= 1
    report = engine.tier(days=0)
    with engine.db.read() as conn:
        hot_inline = conn.execute(
            select(func.count()).where(b.inline_data.is_not(None), b.tier == 0)
        ).scalar_one()
    assert hot_inline == inline_rows
    assert report.blocks_moved == len(_rows(engine)) - inline_rows > 0
    with vol.open("small") as f:
        assert f.read() == b"x" * 3000


def test_block_lists_with_inline_objects_survive_the_shared_cache_encoding() -> None:
    class BytesCache(Cache):
        """The JSON path every shared (Redis) cache takes."""

        def __init__(self) -> None:
            super().__init__()
            self.items: dict[str, bytes] = {}

        def get(self, key: str) -> bytes | None:
            return self.items.get(key)

        def set(self, key: str, value: bytes) -> None:
            self.items[key] = value

    blocks = [
        BlockLocation(0, 10, "1/aa/x", b"\x01" * 32),
        BlockLocation(10, 5, "1/bb/y", b"\x02" * 32, inline=b"sealed"),
    ]
    cache = BytesCache()
    assert cache.blocks(7, lambda: blocks) == blocks
    assert cache.blocks(7, lambda: pytest.fail("not cached")) == blocks
