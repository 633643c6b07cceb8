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
from collections.abc import Iterator
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
        self._writer = SqliteWriter(self.engine) if file_sqlite else None

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


class SqliteWriter:
    """This process's SQLite write transactions, all on one connection, one at a time.

    SQLite lets one connection write at a time anyway. Spreading the writes over the
    pool cost twice: each pooled connection's page cache is dropped whenever another
    connection has written, so every write transaction read its B-tree pages again
    (about 40 preads for a small PUT, each also a GIL hand-off); and writers waiting
    for the lock sat in SQLite's busy handler, which sleeps 1, 2, 5... ms between
    tries. Here writers queue on a lock and the one connection keeps its cache warm.
    Other processes (the CLI) still meet the busy handler, as before.
    """

    def __init__(self, engine: Engine) -> None:
        pool = engine.pool.recreate()
        assert isinstance(pool, QueuePool)
        self._engine = engine
        self._pool = pool
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._owner: int | None = None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        if self._owner == threading.get_ident():
            # Waiting for ourselves would hang (with the pool it waited 60 s, then failed).
            raise RuntimeError("a write transaction inside another on the same thread")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                with self._begin() as conn:
                    yield conn
            finally:
                self._owner = None

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            conn = Connection(self._engine, connection=self._pool.connect())
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            self._conn = conn
        try:
            with conn.begin():
                yield conn
        except OperationalError:
            # A failed commit or a broken connection: start the next writer afresh.
            self._conn = None
            with contextlib.suppress(Exception):
                conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
        self._pool.dispose()


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
