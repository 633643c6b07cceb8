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

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from storage.errors import BackendUnavailable


class Database:
    def __init__(self, url: str, *, durable: bool = True, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = _make_engine(url, durable=durable, pool_size=pool_size)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads; one snapshot per statement (or per transaction on SQLite)."""
        try:
            with self.engine.connect() as conn:
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
        self.engine.dispose()


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
