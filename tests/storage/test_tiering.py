"""The archive tier: cold blocks move to a second store, reads fall through to it,
recent reads keep blocks hot, and gc, fsck and stats see both stores as one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from storage.backends.tiered import TieredBackend
from storage.engine import Engine
from tests.storage.conftest import EngineFactory

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _objects(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "tails" not in p.parts}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tiered(make_engine: EngineFactory, tmp_path: Path, clock: Clock) -> Engine:
    engine = make_engine(archive_url=f"file://{tmp_path / 'archive'}", clock=clock)
    engine.accounts.create("alice", "alice-password")
    return engine


def test_cold_blocks_move_and_stay_readable(tiered: Engine, tmp_path: Path, clock: Clock) -> None:
    vol = tiered.volume("alice")
    cold, warm = bytes(range(256)) * 3000, b"w" * 300_000
    vol.write("cold.bin", io.BytesIO(cold))
    vol.write("warm.bin", io.BytesIO(warm))
    clock.now += 40 * DAY
    with vol.open("warm.bin") as r:
        assert r.read() == warm  # read recently: stays hot
    report = tiered.tier()
    assert report.blocks_moved >= 1
    archive = _objects(tmp_path / "archive")
    hot = _objects(tmp_path / "blocks")
    assert archive and not archive & hot
    with vol.open("cold.bin") as r:
        assert r.read() == cold
    tiers = tiered.bytes_per_tier()
    assert tiers[1][1] == report.bytes_moved and tiers[0][0] >= 1
    assert tiered.fsck(deep=True).clean


def test_gc_deletes_archived_blocks_from_the_archive(tiered: Engine, tmp_path: Path, clock: Clock) -> None:
    vol = tiered.volume("alice")
    vol.write("f", io.BytesIO(b"x" * 200_000))
    clock.now += 40 * DAY
    assert tiered.tier().blocks_moved == 1
    vol.delete("f")
    vol.purge_trash()
    assert tiered.gc(grace_seconds=0).blocks_deleted == 1
    assert _objects(tmp_path / "archive") == set()
    assert tiered.fsck().clean


def test_an_interrupted_move_is_finished_by_the_next_pass(tiered: Engine, clock: Clock) -> None:
    vol = tiered.volume("alice")
    vol.write("f", io.BytesIO(b"y" * 100_000))
    clock.now += 40 * DAY
    backend = tiered.backend
    assert isinstance(backend, TieredBackend)
    name = next(info.name for info in backend.hot.list("") if "tails" not in info.name)
    # Copied and marked as moving, then the process died before deleting the hot copy.
    backend.archive.put(name, backend.hot.get(name))
    with tiered.db.write() as conn:
        conn.exec_driver_sql("UPDATE blocks SET tier = 2")
    assert tiered.tier().finished == 1
    assert tiered.bytes_per_tier()[1][0] == 1
    assert [info.name for info in backend.hot.list("") if "tails" not in info.name] == []
    with vol.open("f") as r:
        assert r.read() == b"y" * 100_000


def test_without_an_archive_tier_refuses(make_engine: EngineFactory) -> None:
    with pytest.raises(ValueError, match="no archive"):
        make_engine().tier()


@pytest.mark.services
def test_an_s3_archive_behind_an_s3_hot_store(
    make_engine: EngineFactory, pg_url: str, s3_url: str, clock: Clock
) -> None:
    import os
    import secrets

    from tests.storage.conftest import fresh_pg_database

    run = secrets.token_hex(4)
    engine = make_engine(
        fresh_pg_database(pg_url),
        s3_url.replace("/blocks?", f"/hot-{run}?", 1),
        archive_url=s3_url.replace("/blocks?", f"/archive-{run}?", 1),
        clock=clock,
    )
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    data = os.urandom(700_000)
    vol.write("f.bin", io.BytesIO(data))
    clock.now += 40 * DAY
    moved = engine.tier()
    assert moved.blocks_moved > 0
    backend = engine.backend
    assert isinstance(backend, TieredBackend)
    assert [i for i in backend.hot.list("") if "tails" not in i.name] == []
    with vol.open("f.bin") as r:
        r.seek(500_000)
        assert r.read() == data[500_000:]
    check = engine.fsck(deep=True)
    assert check.clean and check.leak_free, check
