"""The trash: what deletes leave behind, listed, restored or purged.

A delete marks a node and its subtree ``deleted_at`` with ``trash_id`` = the
deleted top node's id, keeping their paths as they were; that top node is the
trash item. Restoring brings back exactly the nodes of that deletion (things
deleted earlier from inside the folder are separate items and stay in the
trash), to the original path or another one; a live file or folder at the target
is a conflict, never overwritten. Purging deletes the item's nodes for good;
their versions go with them and their blocks become garbage.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, and_, delete, func, literal, or_, select, update

from storage import paths, tree
from storage.errors import AlreadyExists, NotFound
from storage.metadata import schema as t
from storage.model import Entry, TrashItem

n = t.nodes.c


def items(conn: Connection, account_id: int, *, limit: int | None = None) -> list[TrashItem]:
    """The account's trash, most recently deleted first."""
    sizes = (
        select(n.trash_id, func.coalesce(func.sum(n.size), 0).label("size"))
        .where(n.account_id == account_id, n.deleted_at.is_not(None), n.kind == t.KIND_FILE)
        .group_by(n.trash_id)
        .subquery()
    )
    query = (
        select(n.id, n.path, n.kind, n.deleted_at, func.coalesce(sizes.c.size, 0).label("size"))
        .outerjoin(sizes, sizes.c.trash_id == n.id)
        .where(n.account_id == account_id, n.deleted_at.is_not(None), n.trash_id == n.id)
        .order_by(n.deleted_at.desc(), n.id.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    return [
        TrashItem(r.id, r.path, r.kind == t.KIND_DIR, int(r.size), r.deleted_at) for r in conn.execute(query)
    ]


def _item(conn: Connection, account_id: int, item_id: int) -> Row[Any]:
    row = conn.execute(
        tree.select_nodes().where(
            n.id == item_id, n.account_id == account_id, n.deleted_at.is_not(None), n.trash_id == n.id
        )
    ).first()
    if row is None:
        raise NotFound(f"no trash item {item_id}")
    return row


def original_path(conn: Connection, account_id: int, item_id: int) -> str:
    """Where the item was when it was deleted (where a restore without a target puts it)."""
    return str(_item(conn, account_id, item_id).path)


def restore(change: tree.Change, item_id: int, target: str | None) -> Entry:
    conn, account_id = change.conn, change.account_id
    item = _item(conn, account_id, item_id)
    dst = item.path if target is None else target
    if dst == "":
        raise AlreadyExists("the root folder exists")
    parent = tree.live_folder(conn, account_id, paths.parent_of(dst))
    if tree.live_node(conn, account_id, dst, lock=True) is not None:
        raise AlreadyExists(f"{dst!r} exists; restore to another path")
    members = and_(n.account_id == account_id, n.trash_id == item.id, n.deleted_at.is_not(None))
    if item.kind == t.KIND_DIR and dst != item.path:
        tree.check_subtree_fits(conn, account_id, item.path, dst, members)
        conn.execute(
            update(t.nodes)
            .where(members, n.id != item.id, tree.in_subtree(item.path))
            .values(path=literal(dst) + func.substr(n.path, len(item.path) + 1))
        )
    conn.execute(
        update(t.nodes).where(n.id == item.id).values(parent_id=parent.id, name=paths.name_of(dst), path=dst)
    )
    conn.execute(update(t.nodes).where(members).values(deleted_at=None, trash_id=None))
    # One entry per restored node, parents first: a change feed replays it as creates.
    restored = conn.execute(
        tree.select_nodes()
        .where(n.account_id == account_id, n.deleted_at.is_(None), or_(n.path == dst, tree.in_subtree(dst)))
        .order_by(n.path)
    ).all()
    change.journal_many(
        [
            {
                "op": "create",
                "node_id": r.id,
                "kind": r.kind,
                "path": r.path,
                "version_id": r.version_id,
                "size": r.size if r.kind == t.KIND_FILE else None,
                "mtime": r.mtime,
            }
            for r in restored
        ]
    )
    return tree.to_entry(restored[0])


def purge(conn: Connection, account_id: int, item_id: int, now: float) -> None:
    """Delete the item and everything below it (also things trashed from inside it earlier)."""
    item = _item(conn, account_id, item_id)
    below = select(n.id).where(n.id == item.id).cte("below", recursive=True)
    below = below.union_all(select(n.id).where(n.parent_id == below.c.id))
    tree.release(conn, account_id, tree.version_bytes(conn, select(below.c.id)))
    tree.mark_released(conn, tree.versions_of(select(below.c.id)), now)
    conn.execute(delete(t.nodes).where(n.id == item.id))
