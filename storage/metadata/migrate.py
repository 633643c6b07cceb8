"""Schema migrations (alembic), run programmatically.

A node refuses to serve against a database whose revision it does not know (a
newer release migrated it) and, unless told to migrate, against one that is
behind: ``davserver migrate`` applies the migrations explicitly; the embedded
SQLite default migrates on open because there is no other node to surprise.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from storage.errors import SchemaMismatch
from storage.metadata.db import Database

_SCRIPTS = Path(__file__).parent / "migrations"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Database) -> None:
    cfg = _config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def ensure_schema(db: Database, *, auto_migrate: bool) -> None:
    """Migrate or refuse, as the module docstring says."""
    current = current_revision(db)
    head = head_revision()
    if current == head:
        return
    known = {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}
    if current is not None and current not in known:
        raise SchemaMismatch(
            f"the metadata database is at schema revision {current}, which this release "
            "does not know (was it migrated by a newer davserver?)"
        )
    if not auto_migrate:
        raise SchemaMismatch(
            f"the metadata database is at schema revision {current or 'none'}, this release "
            f"needs {head}: run 'davserver migrate'"
        )
    upgrade(db)
