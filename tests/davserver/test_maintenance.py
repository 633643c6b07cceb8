"""The server runs the retention pass on its own timer."""

from __future__ import annotations

import io
from pathlib import Path

from davserver.maintenance import RetentionTimer
from storage.retention import RetentionPolicy
from tests.e2e.harness import wait_until
from tests.storage.conftest import EngineFactory


def test_the_timer_thins_versions_and_stops(make_engine: EngineFactory) -> None:
    engine = make_engine(retention=RetentionPolicy(max_versions=1))
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    for i in range(3):
        vol.write("f", io.BytesIO(b"v%d" % i))
    timer = RetentionTimer(engine, 0.05)
    timer.start()
    try:
        assert wait_until(lambda: len(vol.revisions("f")) == 1, timeout=10)
    finally:
        timer.stop()
    vol.write("f", io.BytesIO(b"after the timer stopped"))
    assert len(vol.revisions("f")) == 2


def test_block_reads_are_written_out_even_without_retention_passes(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    engine = make_engine(archive_url=f"file://{tmp_path / 'archive'}")
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    vol.write("f", io.BytesIO(b"x" * 1000))
    with vol.open("f") as r:
        r.read()

    def recorded() -> bool:
        with engine.db.read() as conn:
            return (
                conn.exec_driver_sql("SELECT count(*) FROM blocks WHERE last_read_at IS NOT NULL").scalar()
                == 1
            )

    timer = RetentionTimer(engine, 0, flush_seconds=0.05)
    timer.start()
    try:
        assert wait_until(recorded, timeout=10)
    finally:
        timer.stop()
