"""The storage fixtures (engines on SQLite and PostgreSQL) serve the face's in-process tests too."""

from tests.storage.conftest import database_url, make_engine

__all__ = ["database_url", "make_engine"]
