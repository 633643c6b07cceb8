"""storage.metadata.db: snapshot-free reads on a thread's own SQLite connection."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from storage.metadata.db import Database


@pytest.fixture
def db(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.write() as conn:
        conn.execute(text("CREATE TABLE t (v INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    return db


def test_a_thread_keeps_its_reader_and_never_holds_a_stale_snapshot(db: Database) -> None:
    with db.read(snapshot=False) as first:
        # A SQLAlchemy execute begins a transaction by itself: it must not outlive the block.
        assert first.execute(text("SELECT v FROM t")).scalar_one() == 1
    with db.write() as conn:
        conn.execute(text("UPDATE t SET v = 2"))
    with db.read(snapshot=False) as again:
        assert again is first
        assert not again.in_transaction()
        assert again.execute(text("SELECT v FROM t")).scalar_one() == 2
    with pytest.raises(ZeroDivisionError), db.read(snapshot=False) as conn:
        conn.execute(text("SELECT v FROM t"))
        raise ZeroDivisionError
    with db.read(snapshot=False) as conn:
        assert conn is first and not conn.in_transaction()


def test_each_thread_has_its_own_reader_and_dispose_closes_them(db: Database) -> None:
    seen = []

    def read() -> None:
        with db.read(snapshot=False) as conn:
            seen.append(conn)
            assert conn.execute(text("SELECT v FROM t")).scalar_one() == 1

    threads = [threading.Thread(target=read) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len({id(c) for c in seen}) == 3
    db.dispose()
    assert all(c.closed for c in seen)


def test_threads_beyond_the_slots_use_the_pool(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'y.db'}", pool_size=1)
    barrier = threading.Barrier(3)
    kept = []

    def read() -> None:
        with db.read(snapshot=False) as conn:
            kept.append(conn)
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
            barrier.wait(10)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(kept) == 3
    db.dispose()


def test_writers_take_turns_on_one_connection_and_a_failed_one_leaves_nothing(db: Database) -> None:
    def add(k: int) -> None:
        for _ in range(20):
            with db.write() as conn:
                conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": k})

    threads = [threading.Thread(target=add, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    with pytest.raises(ZeroDivisionError), db.write() as conn:
        conn.execute(text("INSERT INTO t VALUES (99)"))
        raise ZeroDivisionError
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1 + 80
        assert conn.execute(text("SELECT count(*) FROM t WHERE v = 99")).scalar_one() == 0
    with db.write() as first, db.read(snapshot=False) as reader:
        assert first is not reader  # writes never run on a reader's connection
    with db.write() as again:
        assert again is first


def test_a_broken_writer_connection_is_replaced(db: Database) -> None:
    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError), db.write() as conn:
        conn.execute(text("INSERT INTO no_such_table VALUES (1)"))
    with db.write() as conn:
        conn.execute(text("UPDATE t SET v = 5"))
    with db.read() as conn:
        assert conn.execute(text("SELECT v FROM t")).scalar_one() == 5


def test_a_write_inside_a_write_on_one_thread_fails_instead_of_hanging(db: Database) -> None:
    with db.write() as conn:
        conn.execute(text("UPDATE t SET v = 3"))
        with pytest.raises(RuntimeError, match="inside another"), db.write():
            pass
    with db.read() as conn:
        assert conn.execute(text("SELECT v FROM t")).scalar_one() == 3
