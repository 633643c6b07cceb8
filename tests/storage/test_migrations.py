"""Schema migrations: applied on demand, and unknown schemas refused."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from storage.errors import SchemaMismatch
from storage.metadata.db import Database
from storage.metadata.migrate import current_revision, ensure_schema, head_revision


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
