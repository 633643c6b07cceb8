"""Revisions of a file: finding them (for live and trashed files) and restoring one.

History is never rewritten: restoring a revision appends a new version that
shares the old one's block list (no byte is copied), with its own journal entry.
A trashed file is found by the path it had when it was deleted; restoring one
of its revisions brings the file back to that path, history included.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, insert, literal, select, update

from storage import paths, tree
from storage.errors import Conflict, NotFound
from storage.metadata import schema as t
from storage.model import Entry, Revision

n = t.nodes.c
v = t.versions.c
vb = t.version_blocks.c


def find_node(conn: Connection, account_id: int, path: str, *, include_deleted: bool) -> Row[Any]:
    """The live node at ``path``; else, if asked, the file most recently trashed from there."""
    live = tree.live_node(conn, account_id, path)
    if live is not None:
        return conn.execute(tree.select_nodes().add_columns(n.deleted_at).where(n.id == live.id)).one()
    if include_deleted:
        row = conn.execute(
            tree.select_nodes()
            .add_columns(n.deleted_at)
            .where(n.account_id == account_id, n.path == path, n.deleted_at.is_not(None))
            .order_by(n.deleted_at.desc(), n.id.desc())
            .limit(1)
        ).first()
        if row is not None:
            return row
    raise NotFound(f"{path or '/'!r} does not exist")


def list_revisions(
    conn: Connection, account_id: int, node: Row[Any], *, limit: int | None, before: int | None
) -> list[Revision]:
    """Newest first; ``before``: only revisions older than that one (paging)."""
    query = (
        select(v.id, v.size, v.sha256, v.mtime, v.created_at, v.device, v.pinned)
        .where(v.node_id == node.id, v.account_id == account_id)
        .order_by(v.id.desc())
    )
    if before is not None:
        query = query.where(v.id < before)
    if limit is not None:
        query = query.limit(limit)
    current = node.version_id if node.deleted_at is None else None
    return [
        Revision(
            r.id, r.size, bytes(r.sha256), r.mtime, r.created_at, r.device, bool(r.pinned), r.id == current
        )
        for r in conn.execute(query)
    ]


def restore(change: tree.Change, path: str, version_id: int, device: str | None) -> tuple[Entry, bool]:
    """Make ``version_id`` current again as a new version.

    Returns the new entry and whether the file came back from the trash.
    """
    conn, account_id = change.conn, change.account_id
    node = tree.live_node(conn, account_id, path, lock=True)
    if node is not None and node.kind == t.KIND_DIR:
        raise Conflict(f"{path!r} is a folder")
    owners = [node.id] if node is not None else _trashed_files_at(conn, account_id, path)
    old = conn.execute(
        select(v.id, v.node_id, v.size, v.sha256, v.chunker_id, v.block_count).where(
            v.id == version_id, v.account_id == account_id, v.node_id.in_(owners or [-1])
        )
    ).first()
    if old is None:
        raise NotFound(f"{path!r} has no revision {version_id}")
    revived = node is None
    if revived:
        parent = tree.live_folder(conn, account_id, paths.parent_of(path))
        conn.execute(
            update(t.nodes)
            .where(n.id == old.node_id)
            .values(deleted_at=None, trash_id=None, parent_id=parent.id, name=paths.name_of(path))
        )
        node_id, created_at = old.node_id, _created_at(conn, old.node_id)
    else:
        assert node is not None
        node_id, created_at = node.id, node.created_at
    change.grow(int(old.size))
    new_id = int(
        conn.execute(
            insert(t.versions)
            .values(
                node_id=node_id,
                account_id=account_id,
                size=old.size,
                sha256=old.sha256,
                mtime=change.now,
                created_at=change.now,
                device=device,
                chunker_id=old.chunker_id,
                block_count=old.block_count,
            )
            .returning(v.id)
        ).scalar_one()
    )
    conn.execute(
        insert(t.version_blocks).from_select(
            ["version_id", "idx", "block_id", "offset"],
            select(literal(new_id), vb.idx, vb.block_id, vb.offset).where(vb.version_id == old.id),
        )
    )
    conn.execute(
        update(t.nodes).where(n.id == node_id).values(version_id=new_id, size=old.size, mtime=change.now)
    )
    change.journal(
        "create" if revived else "modify",
        node_id,
        t.KIND_FILE,
        path,
        version_id=new_id,
        size=int(old.size),
        mtime=change.now,
    )
    entry = Entry(
        node_id,
        path,
        paths.name_of(path),
        False,
        int(old.size),
        change.now,
        created_at,
        new_id,
        bytes(old.sha256),
    )
    return entry, revived


def _trashed_files_at(conn: Connection, account_id: int, path: str) -> list[int]:
    rows = conn.execute(
        select(n.id).where(
            n.account_id == account_id,
            n.path == path,
            n.kind == t.KIND_FILE,
            n.deleted_at.is_not(None),
        )
    )
    return [int(r.id) for r in rows]


def _created_at(conn: Connection, node_id: int) -> float:
    return float(conn.execute(select(n.created_at).where(n.id == node_id)).scalar_one())
