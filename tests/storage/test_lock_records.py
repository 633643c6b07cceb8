"""Lock records (storage.locks) on each database: the WebDAV face's lock storage underneath."""

from __future__ import annotations

from storage.engine import Engine
from storage.locks import LockRecords


def _records(engine: Engine, now: list[float]) -> LockRecords:
    return LockRecords(engine.db, lambda: now[0])


def test_put_get_update_delete(engine: Engine) -> None:
    now = [1000.0]
    locks = _records(engine, now)
    assert locks.get("t1") is None
    locks.put("t1", "/~1/dav/a.txt", {"owner": "alice", "depth": "0"}, expire=1060.0)
    locks.put("t2", "/~1/dav/dir", {"owner": "alice"}, expire=-1)  # never expires
    assert locks.get("t1") == {"owner": "alice", "depth": "0"}

    # put() again under the same token replaces the record (root and data).
    locks.put("t1", "/~1/dav/b.txt", {"owner": "bob"}, expire=1060.0)
    assert locks.get("t1") == {"owner": "bob"}
    assert locks.find("/~1/dav/a.txt", include_root=True, include_below=False) == []
    assert locks.find("/~1/dav/b.txt", include_root=True, include_below=False) == [{"owner": "bob"}]

    assert locks.update("t1", {"owner": "bob", "refreshed": True}, expire=1120.0)
    assert locks.get("t1") == {"owner": "bob", "refreshed": True}
    assert not locks.update("nope", {}, expire=2000.0)

    assert locks.delete("t1")
    assert not locks.delete("t1")
    assert locks.get("t1") is None
    assert locks.get("t2") == {"owner": "alice"}


def test_expired_records_are_invisible_and_cannot_be_refreshed(engine: Engine) -> None:
    now = [1000.0]
    locks = _records(engine, now)
    locks.put("t1", "/~1/dav/a.txt", {"n": 1}, expire=1060.0)
    now[0] = 1060.0
    assert locks.get("t1") == {"n": 1}  # valid through its expiry second
    now[0] = 1060.5
    assert locks.get("t1") is None
    assert not locks.update("t1", {"n": 2}, expire=2000.0)
    assert locks.find("/~1/dav", include_root=True, include_below=True) == []
    assert locks.purge_expired() == 1
    assert not locks.delete("t1")  # purged
