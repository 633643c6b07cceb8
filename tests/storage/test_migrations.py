"""Schema migrations: applied on demand, and unknown schemas refused."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from storage.errors import SchemaMismatch
from storage.metadata.db import Database
from storage.metadata.migrate import current_revision, ensure_schema, head_revision
from tests.storage.conftest import EngineFactory


def test_an_empty_database_is_refused_unless_migration_is_allowed(database_url: str) -> None:
    db = Database(database_url)
    try:
        with pytest.raises(SchemaMismatch, match="davserver migrate"):
            ensure_schema(db, auto_migrate=False)
        ensure_schema(db, auto_migrate=True)
        assert current_revision(db) == head_revision()
        ensure_schema(db, auto_migrate=False)
    finally:
        db.dispose()


def test_a_schema_from_a_newer_release_is_refused(database_url: str) -> None:
    db = Database(database_url)
    try:
        ensure_schema(db, auto_migrate=True)
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'from-the-future'"))
        with pytest.raises(SchemaMismatch, match="does not know"):
            ensure_schema(db, auto_migrate=True)
    finally:
        db.dispose()


def test_the_migrations_build_exactly_the_declared_schema(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from storage.metadata.schema import metadata

    db = Database(database_url)
    try:
        ensure_schema(db, auto_migrate=True)
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
    finally:
        db.dispose()


def test_usage_is_recounted_from_the_retained_versions(make_engine: EngineFactory, database_url: str) -> None:
    """0005: usage counted live files only before; afterwards every retained version."""
    import io

    from alembic import command

    from storage.metadata.migrate import _config, upgrade

    engine = make_engine(database_url)
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    vol.write("f", io.BytesIO(b"a" * 100))
    vol.write("f", io.BytesIO(b"b" * 30))
    vol.write("g", io.BytesIO(b"c" * 7))
    vol.delete("g")
    with engine.db.engine.begin() as conn:
        conn.execute(text("UPDATE accounts SET used_bytes = 30"))  # what the old rule recorded
        cfg = _config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    upgrade(engine.db)
    assert vol.quota().used_bytes == 137
    assert engine.fsck().clean
