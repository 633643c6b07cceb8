"""Prepared statements behave like Connection.execute on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, event, insert, select
from sqlalchemy.exc import IntegrityError

from storage.engine import Engine
from storage.metadata import schema as t
from storage.metadata.prepared import Prepared
from storage.tree import select_nodes
from tests.storage.conftest import EngineFactory

a = t.accounts.c

_BY_NAME = Prepared(select(a.id, a.name, a.quota_bytes).where(a.name == bindparam("b_name")))
_CHUNKER_BY_ID = Prepared(select(t.chunkers).where(t.chunkers.c.id == bindparam("b_id")))


def test_rows_read_like_sqlalchemy_rows(engine: Engine) -> None:
    engine.accounts.create("alice", "alice-password")
    engine.accounts.set_quota("alice", 12345)
    with engine.db.read() as conn:
        row = _BY_NAME.first(conn, {"b_name": "alice"})
        expected = conn.execute(select(a.id, a.name, a.quota_bytes).where(a.name == "alice")).one()
        assert _BY_NAME.first(conn, {"b_name": "nobody"}) is None
        assert _BY_NAME.all(conn, {"b_name": "alice"}) == [tuple(expected)]
    assert (row.id, row.name, row.quota_bytes) == (expected.id, "alice", 12345)


def test_duplicate_column_names_get_distinct_fields(engine: Engine) -> None:
    """nodes.size and a joined table's size: both survive, as SQLAlchemy labels them."""
    engine.accounts.create("alice", "alice-password")
    stmt = Prepared(
        select_nodes().add_columns(t.versions.c.size).where(t.nodes.c.path == bindparam("b_path"))
    )
    with engine.db.read() as conn:
        row = stmt.first(conn, {"b_path": ""})
    assert row is not None and row.path == "" and len(row) == len(row._fields) == 11


def test_constraint_violations_raise_sqlalchemys_integrity_error(engine: Engine) -> None:
    engine.accounts.create("alice", "alice-password")
    with engine.db.read() as conn:
        chunker = conn.execute(select(t.chunkers)).first()
    assert chunker is not None
    duplicate = Prepared(insert(t.chunkers), keys=list(chunker._mapping))
    with pytest.raises(IntegrityError), engine.db.write() as conn:
        duplicate.execute(conn, dict(chunker._mapping))
    with engine.db.read() as conn:  # the failed transaction left the connection usable
        assert _CHUNKER_BY_ID.first(conn, {"b_id": chunker.id}) is not None


def test_statement_listeners_see_prepared_statements(engine: Engine) -> None:
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(engine.db.engine, "before_cursor_execute", record)
    try:
        with engine.db.read() as conn:
            _BY_NAME.first(conn, {"b_name": "x"})
    finally:
        event.remove(engine.db.engine, "before_cursor_execute", record)
    assert any("accounts.name" in s for s in seen)


def test_expanding_parameters_are_refused(engine: Engine) -> None:
    stmt = Prepared(select(a.id).where(a.name.in_(bindparam("b_names", expanding=True))))
    with pytest.raises(ValueError, match="expanding"), engine.db.read() as conn:
        stmt.first(conn, {"b_names": ["a"]})


def test_a_read_is_one_snapshot_on_sqlite(make_engine: EngineFactory) -> None:
    """Prepared statements skip SQLAlchemy's autobegin: Database.read must begin itself."""
    engine = make_engine()
    engine.accounts.create("alice", "alice-password")
    with engine.db.read() as conn:
        before = _BY_NAME.first(conn, {"b_name": "alice"}).quota_bytes
        engine.accounts.set_quota("alice", 777)  # commits on another connection
        assert _BY_NAME.first(conn, {"b_name": "alice"}).quota_bytes == before
    with engine.db.read() as conn:
        assert _BY_NAME.first(conn, {"b_name": "alice"}).quota_bytes == 777
