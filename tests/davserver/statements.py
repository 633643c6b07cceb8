"""What SQL a piece of code runs, seen through SQLAlchemy's events."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import event

from storage.engine import Engine


def statements(engine: Engine, fn: Callable[[], object], kind: str = "before_cursor_execute") -> list[str]:
    """The SQL statements ``fn`` runs (or with ``kind="begin"``, one entry per transaction)."""
    seen: list[str] = []

    def record(conn: object, *args: object) -> None:
        seen.append(str(args[1]) if args[1:] else "BEGIN")

    event.listen(engine.db.engine, kind, record)
    try:
        fn()
    finally:
        event.remove(engine.db.engine, kind, record)
    return seen
