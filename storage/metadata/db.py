"""Connections to the metadata database, chosen by URL.

``sqlite:///path`` (the embedded default) runs in WAL mode with foreign keys on.
Write transactions start with ``BEGIN IMMEDIATE`` so two writers queue on the
database lock instead of failing with "database is locked" when a reader tries
to upgrade; ``synchronous=FULL`` makes a commit durable before it returns
(``durable=False`` is the documented relaxed mode, ``NORMAL``).

``postgresql+psycopg://…`` uses a connection pool sized from the server's thread
count with pre-ping, so a database restart costs failed requests only while it
is down.

Connection failures surface as :class:`storage.errors.BackendUnavailable`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool, QueuePool

from storage.errors import BackendUnavailable


class Database:
    def __init__(self, url: str, *, durable: bool = True, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = _make_engine(url, durable=durable, pool_size=pool_size)
        file_sqlite = _is_file_sqlite(url)
        self._readers = ThreadReaders(self.engine) if file_sqlite else None
        self._writer = SqliteWriter(self.engine, group_commit=durable) if file_sqlite else None

    @contextmanager
    def read(self, *, snapshot: bool = True) -> Iterator[Connection]:
        """A connection for reads; one snapshot per statement (or per transaction on SQLite).

        ``snapshot=False``: no transaction, for callers whose statements need no common
        snapshot (each then sees its own). On SQLite that saves BEGIN and ROLLBACK, and
        the connection is the calling thread's own (ThreadReaders), not a pool checkout.
        """
        try:
            if not snapshot and self._readers is not None:
                with self._readers.connection() as conn:
                    yield conn
                return
            with self.engine.connect() as conn:
                if not snapshot:
                    yield conn
                    return
                # Begun here, not on the first execute: prepared statements bypass
                # SQLAlchemy's autobegin, and SQLite's snapshot starts with BEGIN.
                conn.begin()
                yield conn
                conn.rollback()
        except OperationalError as exc:
            if _is_disconnect(exc):
                raise _unavailable(exc) from exc
            raise

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction: committed when the block exits cleanly, rolled back otherwise."""
        try:
            if self._writer is not None:
                with self._writer.transaction() as conn:
                    yield conn
                return
            with self.engine.connect() as conn:
                if self.is_sqlite:
                    conn = conn.execution_options(sqlite_begin="IMMEDIATE")
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            if _is_disconnect(exc):
                raise _unavailable(exc) from exc
            raise

    def dispose(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._readers is not None:
            self._readers.close()
        self.engine.dispose()


class _Batch:
    """Write transactions that share one SQLite transaction, hence one commit (one fsync)."""

    __slots__ = ("done", "error", "members")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.members = 0


class SqliteWriter:
    """This process's SQLite write transactions, all on one connection, one at a time.

    SQLite lets one connection write at a time anyway. Spreading the writes over the
    pool cost twice: each pooled connection's page cache is dropped whenever another
    connection has written, so every write transaction read its B-tree pages again
    (about 40 preads for a small PUT, each also a GIL hand-off); and writers waiting
    for the lock sat in SQLite's busy handler, which sleeps 1, 2, 5... ms between
    tries. Here writers queue on a lock and the one connection keeps its cache warm.
    Other processes (the CLI) still meet the busy handler, as before.

    ``group_commit`` (durable mode): a durable commit waits for an fsync of the WAL,
    about 2 ms on this VM's disk under load, and the next writer waits for it too,
    which capped 4 clients at ~300 small PUTs/s. So when a writer finishes while others
    are queued, it leaves the transaction open for them (each later one inside a
    SAVEPOINT, so its failure undoes its own changes only) and the last one commits
    for all: one fsync per batch. Each caller still returns only after the commit that
    holds its changes, and nothing is visible to other connections before that commit
    (a commit with ``synchronous=NORMAL`` followed by an fsync would show data that a
    power cut could still take back).
    """

    #: Most write transactions in one commit (each waits for the others before returning).
    MAX_BATCH = 32
    #: A member whose batch is left open waits this long for the next writer to commit it,
    #: then commits it itself (the next writer left the queue without writing).
    HANDOFF_SECONDS = 0.05

    def __init__(self, engine: Engine, *, group_commit: bool = False) -> None:
        pool = engine.pool.recreate()
        assert isinstance(pool, QueuePool)
        self._engine = engine
        self._pool = pool
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._owner: int | None = None
        #: Without group commit (relaxed mode: a commit costs no fsync) each write is a batch.
        self._max_batch = self.MAX_BATCH if group_commit else 1
        self._batch: _Batch | None = None
        self._trans: Any = None
        #: Threads waiting for ``_lock`` (under ``_count_lock``).
        self._queued = 0
        self._count_lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        if self._owner == threading.get_ident():
            # Waiting for ourselves would hang (with the pool it waited 60 s, then failed).
            raise RuntimeError("a write transaction inside another on the same thread")
        with self._count_lock:
            self._queued += 1
        self._lock.acquire()
        try:
            with self._count_lock:
                self._queued -= 1
            self._owner = threading.get_ident()
            batch = yield from self._member()
        finally:
            self._owner = None
            self._lock.release()
        if not batch.done.wait(self.HANDOFF_SECONDS):
            with self._lock:
                if self._batch is batch:
                    self._commit()
            batch.done.wait()
        if batch.error is not None:
            raise BackendUnavailable(f"the metadata commit failed: {batch.error}") from batch.error

    def _member(self) -> Generator[Connection, None, _Batch]:
        """One writer's turn, holding ``_lock``: joins or opens the batch, and commits it
        unless other writers are queued. Returns the batch (as the generator's value)."""
        conn = self._connection()
        joining = self._batch is not None
        if not joining:
            try:
                self._trans = conn.begin()
            except OperationalError:
                self._drop_connection()  # the database stayed locked, or the connection broke
                raise
            self._batch = _Batch()
        batch = self._batch
        assert batch is not None
        if joining:
            _raw(conn, "SAVEPOINT batch_member")
        try:
            yield conn
        except BaseException as exc:
            self._undo(conn, joining, exc)
            raise
        if joining:
            _raw(conn, "RELEASE batch_member")
        batch.members += 1
        if self._queued == 0 or batch.members >= self._max_batch:
            self._commit()
        return batch

    def _undo(self, conn: Connection, joining: bool, exc: BaseException) -> None:
        """Roll back a failed member's changes and nothing else, where SQLite allows."""
        if joining and _in_transaction(conn):
            try:
                _raw(conn, "ROLLBACK TO batch_member")
                _raw(conn, "RELEASE batch_member")
            except Exception as err:
                self._finish(err)
                return
            if self._queued == 0:
                self._commit()  # the earlier members' changes; a failure reaches them
            return
        # The batch's first member (nothing else is in it), or a transaction SQLite
        # aborted itself (every member's changes are gone: they fail too).
        self._finish(exc)

    def _commit(self) -> None:
        """Commit the open batch; a failure is handed to its members, not raised here."""
        try:
            self._trans.commit()
        except Exception as exc:
            self._finish(exc)
            return
        self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        """End the batch: rolled back when ``error`` (or left empty), its members told."""
        batch, trans = self._batch, self._trans
        self._batch = self._trans = None
        if trans is not None and trans.is_active:
            try:
                trans.rollback()
            except Exception:
                self._drop_connection()
        if isinstance(error, OperationalError):
            self._drop_connection()  # a failed commit or a broken connection: start afresh
        if batch is not None:
            batch.error = error
            batch.done.set()

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            conn = Connection(self._engine, connection=self._pool.connect())
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop_connection()
        self._pool.dispose()


def _raw(conn: Connection, sql: str) -> None:
    """A statement on the DBAPI connection, bypassing SQLAlchemy: a member's SAVEPOINT
    through ``begin_nested`` was compiled anew each time (savepoint names differ), a
    tenth of a small PUT's time holding the GIL with 4 clients. The batch's own
    transaction stays SQLAlchemy's; these nest inside it."""
    conn.connection.dbapi_connection.execute(sql)  # type: ignore[union-attr]


def _in_transaction(conn: Connection) -> bool:
    dbapi = conn.connection.dbapi_connection
    return bool(getattr(dbapi, "in_transaction", True))


class ThreadReaders:
    """One SQLite connection per thread, kept between snapshot-free reads.

    Checking a connection out of the pool and wrapping it costs about 25 µs of
    Python per request, the largest single cost of a 4 KiB GET after the look-up
    itself. A connection idle in autocommit holds no lock and no WAL read mark, so
    keeping one per request thread costs a file handle. They come from a second pool
    configured like the engine's (so they never starve writers of pooled connections),
    as many as its size (the server sizes it from its thread count); threads beyond
    that check out as usual.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        pool = engine.pool.recreate()
        assert isinstance(pool, QueuePool)
        self._pool = pool
        self._slots = pool.size()
        self._local = threading.local()
        self._open: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _own(self) -> Connection | None:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed or len(self._open) >= self._slots:
                return None
            conn = Connection(self._engine, connection=self._pool.connect())
            self._open.append(conn)
        self._local.conn = conn
        return conn

    def _drop(self, conn: Connection) -> None:
        self._local.conn = None
        with self._lock:
            if conn in self._open:
                self._open.remove(conn)
        with contextlib.suppress(Exception):
            conn.close()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        conn = self._own()
        if conn is None:
            with self._engine.connect() as pooled:
                yield pooled
            return
        try:
            yield conn
        except OperationalError:
            self._drop(conn)  # the caller maps the error
            raise
        except BaseException:
            if conn.in_transaction():
                conn.rollback()
            raise
        if conn.in_transaction():
            conn.rollback()  # a SQLAlchemy execute autobegins; the next use starts clean

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._open = self._open, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._pool.dispose()


def _make_engine(url: str, *, durable: bool, pool_size: int) -> Engine:
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 60}}
        if memory:
            from sqlalchemy.pool import StaticPool

            kwargs["poolclass"] = StaticPool
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine, durable=durable, wal=not memory)
        return engine
    if url.startswith("postgresql"):
        return create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_recycle=3600,
        )
    # Other SQLAlchemy URLs are accepted for experiments but get no tuning.
    return create_engine(url, poolclass=NullPool)


def _is_file_sqlite(url: str) -> bool:
    return url.startswith("sqlite") and url not in ("sqlite://", "sqlite:///:memory:")


def _configure_sqlite(engine: Engine, *, durable: bool, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own is deferred-only).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if wal:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        # On the DBAPI connection: a full SQLAlchemy execute costs 40 µs here.
        conn.connection.dbapi_connection.execute(f"BEGIN {mode}")  # type: ignore[union-attr]


_DISCONNECT_MARKERS = (
    "could not connect",
    "connection refused",
    "connection failed",
    "server closed the connection",
    "terminating connection",
    "connection is closed",
    "the database system is",
    "unable to open database file",
)


def _is_disconnect(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return bool(exc.connection_invalidated) or any(m in text for m in _DISCONNECT_MARKERS)


def _unavailable(exc: DBAPIError) -> BackendUnavailable:
    return BackendUnavailable(f"metadata database unavailable: {str(exc.orig).splitlines()[0]}")
