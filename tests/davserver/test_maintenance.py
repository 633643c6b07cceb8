"""The server runs the retention pass on its own timer."""

from __future__ import annotations

import io

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
