"""storage.metadata.db: snapshot-free reads on a thread's own SQLite connection, and the
SQLite writer's group commit."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from storage.errors import BackendUnavailable
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


# -- group commit (durable SQLite) ----------------------------------------------------------


def _commits(db: Database) -> list[int]:
    """Count COMMITs on the database (each one an fsync of the WAL in durable mode)."""
    seen: list[int] = []
    event.listen(db.engine, "commit", lambda conn: seen.append(1))
    return seen


def _queued(db: Database, n: int) -> None:
    writer = db._writer
    assert writer is not None
    deadline = time.monotonic() + 10
    while writer._queued < n:
        assert time.monotonic() < deadline, "writers did not queue"
        time.sleep(0.001)


def _insert(
    db: Database, v: int, *, gate: tuple[threading.Event, threading.Event] | None = None, fail: bool = False
) -> None:
    """Insert ``v`` in a write transaction; with ``gate`` = (holding, release) it sets
    ``holding`` and waits for ``release`` inside the transaction; ``fail`` raises at its end."""
    with db.write() as conn:
        conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": v})
        if gate is not None:
            gate[0].set()
            gate[1].wait()
        if fail:
            raise ValueError("this writer fails")


def _rows(db: Database) -> list[int]:
    with db.read() as conn:
        return sorted(conn.execute(text("SELECT v FROM t")).scalars())


def test_queued_writers_share_one_commit_and_each_returns_after_it(db: Database) -> None:
    commits = _commits(db)
    holding, release = threading.Event(), threading.Event()
    returned: dict[int, list[int]] = {}

    def write(v: int, hold: bool = False) -> None:
        _insert(db, v, gate=(holding, release) if hold else None)
        returned[v] = _rows(db)  # what another connection sees once this write returned

    first = threading.Thread(target=write, args=(10, True))
    first.start()
    holding.wait()
    others = [threading.Thread(target=write, args=(v,)) for v in (11, 12, 13)]
    for th in others:
        th.start()
    _queued(db, 3)
    release.set()
    for th in [first, *others]:
        th.join()
    assert _rows(db) == [1, 10, 11, 12, 13]
    assert len(commits) == 1  # one transaction, one fsync, for four writers
    for v, seen in returned.items():
        assert v in seen and seen == [1, 10, 11, 12, 13], (v, seen)


def test_nothing_in_a_batch_is_visible_before_its_commit(db: Database) -> None:
    second_in, release = threading.Event(), threading.Event()
    first_done = threading.Event()

    def first() -> None:
        with db.write() as conn:
            conn.execute(text("INSERT INTO t VALUES (20)"))
            _queued(db, 1)  # the second writer waits: this one leaves the batch open
        first_done.set()

    def second() -> None:
        with db.write() as conn:
            conn.execute(text("INSERT INTO t VALUES (21)"))
            second_in.set()
            release.wait()

    a = threading.Thread(target=first)
    a.start()
    time.sleep(0.05)  # let the first writer take the lock
    b = threading.Thread(target=second)
    b.start()
    second_in.wait()
    assert _rows(db) == [1]  # the first writer's row is in the open batch, not committed
    assert not first_done.is_set()  # and its write has not returned
    release.set()
    a.join()
    b.join()
    assert first_done.is_set()
    assert _rows(db) == [1, 20, 21]


def test_a_failing_member_undoes_only_its_own_changes(db: Database) -> None:
    holding, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def write(v: int, *, hold: bool = False, fail: bool = False) -> None:
        try:
            _insert(db, v, gate=(holding, release) if hold else None, fail=fail)
        except ValueError as exc:
            errors.append(exc)

    first = threading.Thread(target=write, args=(30,), kwargs={"hold": True})
    first.start()
    holding.wait()
    failing = threading.Thread(target=write, args=(31,), kwargs={"fail": True})
    failing.start()
    _queued(db, 1)
    last = threading.Thread(target=write, args=(32,))
    last.start()
    _queued(db, 2)
    release.set()
    for th in (first, failing, last):
        th.join()
    assert len(errors) == 1
    assert _rows(db) == [1, 30, 32]


def test_a_failed_commit_fails_every_member_and_commits_nothing(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = db._writer
    assert writer is not None
    holding, release = threading.Event(), threading.Event()
    outcomes: dict[int, BaseException | None] = {}
    real_commit = writer._commit

    def failing_commit() -> None:
        writer._trans.rollback()
        writer._trans = _Failing()
        real_commit()

    class _Failing:
        is_active = False

        def commit(self) -> None:
            raise OperationalError("COMMIT", {}, Exception("disk I/O error (injected)"))

    monkeypatch.setattr(writer, "_commit", failing_commit)

    def write(v: int, hold: bool = False) -> None:
        try:
            _insert(db, v, gate=(holding, release) if hold else None)
            outcomes[v] = None
        except BackendUnavailable as exc:
            outcomes[v] = exc

    first = threading.Thread(target=write, args=(40, True))
    first.start()
    holding.wait()
    second = threading.Thread(target=write, args=(41,))
    second.start()
    _queued(db, 1)
    release.set()
    first.join()
    second.join()
    assert set(outcomes) == {40, 41}
    assert all(isinstance(e, BackendUnavailable) for e in outcomes.values()), outcomes
    monkeypatch.undo()
    assert _rows(db) == [1]
    with db.write() as conn:  # the writer recovers: a fresh connection, a fresh batch
        conn.execute(text("INSERT INTO t VALUES (42)"))
    assert _rows(db) == [1, 42]


def test_a_batch_left_open_for_a_writer_that_never_came_is_committed_by_its_member(db: Database) -> None:
    writer = db._writer
    assert writer is not None
    with writer._count_lock:
        writer._queued += 1  # someone seems to be queued, then gives up without writing
    try:
        start = time.monotonic()
        with db.write() as conn:
            conn.execute(text("INSERT INTO t VALUES (50)"))
        waited = time.monotonic() - start
    finally:
        with writer._count_lock:
            writer._queued -= 1
    assert _rows(db) == [1, 50]
    assert waited >= writer.HANDOFF_SECONDS  # it waited for the hand-off, then committed itself


def test_relaxed_mode_commits_each_write_on_its_own(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'r.db'}", durable=False)
    with db.write() as conn:
        conn.execute(text("CREATE TABLE t (v INTEGER)"))
    commits = _commits(db)
    for v in range(3):
        with db.write() as conn:
            conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": v})
    assert len(commits) == 3
    db.dispose()


def test_a_begin_that_fails_leaves_the_writer_usable(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = db._writer
    assert writer is not None
    with db.write() as conn:
        conn.execute(text("INSERT INTO t VALUES (60)"))
    broken = writer._conn
    assert broken is not None

    def locked(*args: object) -> None:
        raise OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked (injected)"))

    monkeypatch.setattr(broken, "begin", locked)
    with pytest.raises(OperationalError), db.write():
        pass
    with db.write() as conn:  # a fresh connection, not the wedged one
        assert conn is not broken
        conn.execute(text("INSERT INTO t VALUES (61)"))
    assert _rows(db) == [1, 60, 61]
