"""SqlLockStorage's per-request snapshot: one query per request, never a stale answer."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from davserver.dav.lock_storage import SqlLockStorage
from storage.engine import Engine
from tests.davserver.statements import statements
from tests.storage.conftest import EngineFactory


@pytest.fixture
def engine(make_engine: EngineFactory, database_url: str) -> Engine:
    return make_engine(database_url)


def _lock(principal: str = "alice") -> dict[str, Any]:
    return {
        "type": "write",
        "scope": "exclusive",
        "depth": "0",
        "owner": b"<D:owner>test</D:owner>",
        "timeout": 60,
        "principal": principal,
    }


def _tokens(storage: SqlLockStorage, url: str) -> list[str]:
    return storage.get_lock_list(url, include_root=True, include_children=False, token_only=True)  # type: ignore[no-any-return]


def test_a_snapshot_answers_from_one_query(engine: Engine) -> None:
    storage = SqlLockStorage(engine.locks)
    token = storage.create("/~1/dav/a.txt", _lock())["token"]

    def lookups() -> None:
        with storage.snapshot("/~1"):
            for url in ("/~1/dav/a.txt", "/~1/dav", "/~1", "/~1/dav/b.txt"):
                _tokens(storage, url)
            assert _tokens(storage, "/~1/dav/a.txt") == [token]

    assert len([s for s in statements(engine, lookups) if "lock_records" in s]) == 1


def test_a_snapshot_sees_a_lock_granted_after_it_was_loaded(engine: Engine) -> None:
    """A PUT's snapshot is loaded before its write check; a LOCK granted in between by
    another request must be seen by that check, or the write ignores the new lock."""
    storage = SqlLockStorage(engine.locks)
    granted: list[str] = []
    with storage.snapshot("/~1"):
        assert _tokens(storage, "/~1/dav/a.txt") == []  # loaded: no locks yet
        other = threading.Thread(
            target=lambda: granted.append(storage.create("/~1/dav/a.txt", _lock())["token"])
        )
        other.start()
        other.join()
        assert _tokens(storage, "/~1/dav/a.txt") == granted
        # The request's own changes are seen too: a deleted lock is gone from its next look-up.
        assert storage.delete(granted[0])
        assert _tokens(storage, "/~1/dav/a.txt") == []
