"""Hot statements compiled once per dialect and run on the DBAPI cursor.

SQLAlchemy's ``Connection.execute`` costs 50-70 µs of Python per statement on
this kind of machine (execution context, compiled-cache look-up, result set-up,
events), while SQLite answers an indexed look-up in about 5 µs. A 4 KiB PUT runs
about fifteen statements, a GET two, so that overhead was the largest single
cost of small-file requests (measured with cProfile on the WSGI app in-process).

:class:`Prepared` keeps the statement a SQLAlchemy Core construct, written and
reviewed like every other query, compiles it once per dialect (SQLite's ``?`` or
psycopg's ``%(name)s`` placeholders) and runs it on the connection's DBAPI cursor
inside the caller's transaction. Rows come back as named tuples, so callers read
``row.id`` as with SQLAlchemy rows. ``before_cursor_execute`` listeners still see
every statement (the query-count tests rely on it), and DBAPI errors are
raised as SQLAlchemy's exception classes, as from ``Connection.execute``.

Only for statements whose columns need no type processing (integers, floats,
text, bytes) and whose parameters are plain bind parameters: no expanding
``IN`` lists.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable


class Prepared:
    def __init__(self, stmt: Executable, *, keys: Sequence[str] | None = None) -> None:
        """``keys``: for an INSERT, the columns the parameters carry (compiled in that shape)."""
        self.stmt = stmt
        self._keys = list(keys) if keys is not None else None
        self._by_dialect: dict[str, _Compiled] = {}

    def _compiled(self, conn: Connection) -> _Compiled:
        compiled = self._by_dialect.get(conn.dialect.name)
        if compiled is None:
            compiled = self._by_dialect[conn.dialect.name] = _Compiled(self.stmt, conn.dialect, self._keys)
        return compiled

    def _run(self, conn: Connection, c: _Compiled, args: Any, *, many: bool) -> Any:
        dbapi_conn = conn.connection.dbapi_connection
        assert dbapi_conn is not None
        cursor = dbapi_conn.cursor()
        dispatch = conn.dispatch.before_cursor_execute
        if dispatch:
            for listener in dispatch:
                listener(conn, cursor, c.sql, args, None, many)
        try:
            if many:
                cursor.executemany(c.sql, args)
            else:
                cursor.execute(c.sql, args)
        except conn.dialect.loaded_dbapi.Error as exc:
            # The same exception classes SQLAlchemy raises, so callers handle one kind.
            invalidated = conn.dialect.is_disconnect(exc, dbapi_conn, cursor)
            if invalidated:
                conn.invalidate(exc)
            raise DBAPIError.instance(
                c.sql, args, exc, conn.dialect.loaded_dbapi.Error, connection_invalidated=invalidated
            ) from exc
        return cursor

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Run it; returns the DBAPI cursor."""
        c = self._compiled(conn)
        return self._run(conn, c, c.args(params), many=False)

    def execute_many(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        c = self._compiled(conn)
        batch = [c.args(r) for r in rows]
        if batch:
            self._run(conn, c, batch, many=True)

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        c = self._compiled(conn)
        cursor = self._run(conn, c, c.args(params), many=False)
        raw = cursor.fetchone()
        return None if raw is None else c.row_type(cursor)._make(raw)

    def all(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        c = self._compiled(conn)
        cursor = self._run(conn, c, c.args(params), many=False)
        make = c.row_type(cursor)._make
        return [make(raw) for raw in cursor.fetchall()]

    def scalar(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first column of the first row (an INSERT's RETURNING id); the row must exist."""
        raw = self.execute(conn, params).fetchone()
        if raw is None:
            raise LookupError("the statement returned no row")
        return raw[0]


class _Compiled:
    def __init__(self, stmt: Executable, dialect: Any, keys: list[str] | None) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=keys)  # type: ignore[attr-defined]
        if any(b.expanding for b in compiled.binds.values()):
            raise ValueError("expanding IN parameters cannot be prepared")
        self.sql: str = compiled.string
        #: Literal values written into the statement (``kind == 1``) travel as parameters too.
        self._defaults: dict[str, Any] = dict(compiled.params)
        #: Positional placeholders (SQLite's ``?``): the parameter tuple, taken from the
        #: caller's mapping in C (``itemgetter``); None for named ones (psycopg's).
        self._take: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None
        if compiled.positional:
            names = list(compiled.positiontup)
            if len(names) > 1:
                self._take = itemgetter(*names)
            elif names:
                get = itemgetter(names[0])
                self._take = lambda params: (get(params),)
            else:
                self._take = lambda params: ()
        self._escaped: dict[str, str] = dict(compiled.escaped_bind_names or {})
        self._row_type: Any = None

    def args(self, params: Mapping[str, Any]) -> Any:
        merged = {**self._defaults, **params} if self._defaults else params
        if self._take is not None:
            return self._take(merged)
        if self._escaped:
            return {self._escaped.get(k, k): v for k, v in merged.items()}
        return merged

    def row_type(self, cursor: Any) -> Any:
        """A named tuple of the result's column labels (the same for every run)."""
        if self._row_type is None:
            self._row_type = namedtuple("Row", [d[0] for d in cursor.description], rename=True)  # type: ignore[misc]
        return self._row_type
