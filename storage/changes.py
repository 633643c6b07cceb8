"""The change feed: the journal read from a position, scoped to a folder, compacted.

A position is a value of the account's change sequence (``accounts.change_seq``):
every committing transaction of the account raises it, and the journal entries it
wrote carry the sequence numbers in between, so "everything after position P" is
exactly ``seq > P`` (see :mod:`storage.metadata.schema`). Some transactions write
no entry (a property change), so the numbers have gaps; a page that reaches the
end therefore hands back the account's sequence, not its last entry's.

A scope is a folder path: entries at or below it are seen, and a move across
its border is seen as what it is from inside -- a ``delete`` of the old path when
the node left, a ``create`` of the new path when it arrived (a folder arriving
that way comes as one entry: the client lists it to learn its contents). When an
ancestor of the scope is deleted or moved away, the reader sees a ``delete`` of
the scope folder itself; when one is moved to the scope's place, a ``create``.

Compaction deletes entries older than the journal's retention and raises the
account's ``journal_floor``; a position below the floor (or beyond the account's
sequence, e.g. after the database was restored from a backup) cannot be
continued from and raises :class:`~storage.errors.CursorExpired`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Row, and_, delete, func, or_, select, update

from storage.errors import CursorExpired, NotFound
from storage.metadata import schema as t
from storage.model import Change

j = t.journal.c
a = t.accounts.c


@dataclass(frozen=True, slots=True)
class ChangePage:
    changes: list[Change]
    #: The position to read on from: the last entry examined, or the account's sequence at the end.
    position: int
    has_more: bool


def in_scope(path: str, scope: str) -> bool:
    return scope == "" or path == scope or path.startswith(scope + "/")


def affects(path: str, scope: str) -> bool:
    """Whether a change at ``path`` can matter to a reader of ``scope`` (inside it, or an ancestor)."""
    return in_scope(path, scope) or scope.startswith(path + "/") or path == ""


def _ancestors(scope: str) -> list[str]:
    parts = scope.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _at_or_below(column: Column[Any], scope: str) -> ColumnElement[bool]:
    # Byte order: '/' < '0', so a subtree is one range of the path index.
    return or_(column == scope, and_(column > scope + "/", column < scope + "0"))


def position(conn: Connection, account_id: int) -> tuple[int, int]:
    """The account's (change sequence, journal floor)."""
    row = conn.execute(select(a.change_seq, a.journal_floor).where(a.id == account_id)).first()
    if row is None:
        raise NotFound(f"no account {account_id}")
    return int(row.change_seq), int(row.journal_floor)


def read(conn: Connection, account_id: int, after: int, *, limit: int, scope: str = "") -> ChangePage:
    """Entries after position ``after`` in commit order, at most ``limit`` examined."""
    seq, floor = position(conn, account_id)
    if after < floor:
        raise CursorExpired(f"changes before position {floor} were compacted away")
    if after > seq:
        raise CursorExpired(f"position {after} is ahead of the account's history ({seq})")
    query = (
        select(t.journal, t.versions.c.sha256)
        .select_from(t.journal.outerjoin(t.versions, t.versions.c.id == j.version_id))
        .where(j.account_id == account_id, j.seq > after)
    )
    if scope:
        near = [_at_or_below(j.path, scope), _at_or_below(j.old_path, scope)]
        if ancestors := _ancestors(scope):
            near += [j.path.in_(ancestors), j.old_path.in_(ancestors)]
        query = query.where(or_(*near))
    rows = conn.execute(query.order_by(j.seq).limit(limit + 1)).all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    changes = [c for c in (_scoped(_change(r), scope) for r in rows) if c is not None]
    return ChangePage(changes, rows[-1].seq if has_more else seq, has_more)


def any_after(conn: Connection, account_id: int, after: int, scope: str = "") -> tuple[bool, int]:
    """Whether a reader at ``after`` (within ``scope``) has something to read; and how far this looked."""
    # Unscoped, any entry counts; scoped, a page may hold only entries the scope drops.
    limit = 200 if scope else 1
    page = read(conn, account_id, after, limit=limit, scope=scope)
    while not page.changes and page.has_more:
        page = read(conn, account_id, page.position, limit=limit, scope=scope)
    return bool(page.changes), page.position


def _change(r: Row[Any]) -> Change:
    sha = None if r.sha256 is None else bytes(r.sha256)
    return Change(
        r.seq,
        r.op,
        r.node_id,
        r.kind == t.KIND_DIR,
        r.path,
        r.old_path,
        r.version_id,
        r.size,
        r.mtime,
        r.at,
        sha,
    )


def _scoped(change: Change, scope: str) -> Change | None:
    if not scope:
        return change
    if change.op in ("create", "modify"):
        return change if in_scope(change.path, scope) else None
    if change.op == "delete":
        if in_scope(change.path, scope):
            return change
        # An ancestor went: so did the scope folder (node_id stays the ancestor's).
        return replace(change, path=scope, is_dir=True, version_id=None, size=None, sha256=None)
    assert change.old_path is not None
    if in_scope(change.path, scope) and in_scope(change.old_path, scope):
        return change
    if in_scope(change.path, scope):
        return replace(change, op="create", old_path=None)
    if in_scope(change.old_path, scope):
        return replace(
            change, op="delete", path=change.old_path, old_path=None, version_id=None, size=None, sha256=None
        )
    # An ancestor left (delete of the scope) or arrived at its place (create: list it anew).
    op = "delete" if scope.startswith(change.old_path + "/") else "create"
    return replace(
        change, op=op, path=scope, old_path=None, is_dir=True, version_id=None, size=None, sha256=None
    )


def compact(conn: Connection, before: float) -> int:
    """Delete every account's entries older than ``before``; returns how many went."""
    heads = conn.execute(
        select(j.account_id, func.max(j.seq).label("upto")).where(j.at < before).group_by(j.account_id)
    ).all()
    removed = 0
    for account_id, upto in heads:
        # A prefix of the sequence, so the floor alone tells which positions are gone.
        removed += conn.execute(delete(t.journal).where(j.account_id == account_id, j.seq <= upto)).rowcount
        conn.execute(update(t.accounts).where(a.id == account_id).values(journal_floor=upto))
    return removed
