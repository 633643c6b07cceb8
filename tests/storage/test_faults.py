"""PostgreSQL going away and coming back: requests fail only while it is down, with the
typed "unavailable" error (503 at the faces), and nothing half-done is left."""

from __future__ import annotations

import io

import pytest

from storage.errors import BackendUnavailable, NotFound
from tests import services
from tests.storage.conftest import EngineFactory, fresh_pg_database


@pytest.mark.services
def test_a_postgresql_restart_costs_only_the_requests_made_while_it_is_down(
    make_engine: EngineFactory, pg_service: services.Service
) -> None:
    if not pg_service.controllable:
        pytest.fail("this test restarts PostgreSQL: run it with the test session's own server")
    engine = make_engine(fresh_pg_database(pg_service.url))
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    vol.write("kept.txt", io.BytesIO(b"before"))
    pg_service.stop()
    try:
        with pytest.raises(BackendUnavailable):
            vol.stat("kept.txt")
        with pytest.raises(BackendUnavailable):
            vol.write("lost.txt", io.BytesIO(b"never committed"))
    finally:
        pg_service.start()
    # The same engine (its pool held connections to the old server) works again.
    with vol.open("kept.txt") as r:
        assert r.read() == b"before"
    with pytest.raises(NotFound):
        vol.stat("lost.txt")
    vol.write("after.txt", io.BytesIO(b"after"))
    assert [e.name for e in vol.listdir("")] == ["after.txt", "kept.txt"]
    assert engine.fsck().clean
