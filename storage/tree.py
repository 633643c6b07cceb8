"""SQL building blocks of the namespace tree, used inside Volume's transactions.

Every statement filters on the account id: isolation between accounts is a
property of these queries, not of URL routing in the faces.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    and_,
    func,
    insert,
    literal,
    select,
    update,
)

from storage.errors import Conflict, QuotaExceeded
from storage.metadata import schema as t
from storage.model import Entry

n = t.nodes.c
v = t.versions.c

NODE_COLUMNS = (
    n.id,
    n.parent_id,
    n.path,
    n.name,
    n.kind,
    n.size,
    n.mtime,
    n.created_at,
    n.version_id,
    v.sha256,
)


def select_nodes() -> Select[Any]:
    return select(*NODE_COLUMNS).select_from(t.nodes.outerjoin(t.versions, t.versions.c.id == n.version_id))


def to_entry(row: Row[Any]) -> Entry:
    return Entry(
        node_id=row.id,
        path=row.path,
        name=row.name,
        is_dir=row.kind == t.KIND_DIR,
        size=row.size,
        mtime=row.mtime,
        created_at=row.created_at,
        version_id=row.version_id,
        sha256=bytes(row.sha256) if row.sha256 is not None else None,
    )


def live_node(conn: Connection, account_id: int, path: str, *, lock: bool = False) -> Row[Any] | None:
    q = select_nodes().where(n.account_id == account_id, n.path == path, n.deleted_at.is_(None))
    if lock:
        q = q.with_for_update(of=t.nodes)
    return conn.execute(q).first()


def live_folder(conn: Connection, account_id: int, path: str) -> Row[Any]:
    """The live folder at ``path`` that something is being created in, or :class:`Conflict`."""
    row = live_node(conn, account_id, path)
    if row is None:
        raise Conflict(f"folder {path or '/'!r} does not exist")
    if row.kind != t.KIND_DIR:
        raise Conflict(f"{path!r} is a file, not a folder")
    return row


def in_subtree(path: str) -> ColumnElement[bool]:
    """Live-or-not nodes strictly below ``path`` (byte order: '/' < '0')."""
    if path == "":
        return n.path != ""
    return and_(n.path > path + "/", n.path < path + "0")


class Change:
    """One mutating transaction of one account.

    Opening it locks the account row, which serialises an account's commits on
    PostgreSQL exactly as SQLite's write lock does; journal sequence numbers are
    therefore gap-free within a transaction and in commit order across them.
    """

    def __init__(self, conn: Connection, account_id: int, now: float) -> None:
        a = t.accounts.c
        row = conn.execute(
            select(a.change_seq, a.used_bytes, a.quota_bytes).where(a.id == account_id).with_for_update()
        ).one()
        self.conn = conn
        self.account_id = account_id
        self.now = now
        self.start = self.seq = int(row.change_seq)
        self.used = int(row.used_bytes)
        self.quota = row.quota_bytes
        self.delta = 0

    def journal(
        self,
        op: str,
        node_id: int,
        kind: str,
        path: str,
        *,
        old_path: str | None = None,
        version_id: int | None = None,
        size: int | None = None,
    ) -> None:
        self.seq += 1
        self.conn.execute(
            insert(t.journal).values(
                account_id=self.account_id,
                seq=self.seq,
                node_id=node_id,
                op=op,
                kind=kind,
                path=path,
                old_path=old_path,
                version_id=version_id,
                size=size,
                at=self.now,
            )
        )

    def grow(self, delta: int) -> None:
        """Account for ``delta`` bytes of live file content; refuses to pass the quota."""
        if delta > 0 and self.quota is not None and self.used + self.delta + delta > self.quota:
            raise QuotaExceeded("the account's quota has no room for this")
        self.delta += delta

    def finish(self) -> int:
        self.seq = max(self.seq, self.start + 1)
        a = t.accounts.c
        self.conn.execute(
            update(t.accounts)
            .where(a.id == self.account_id)
            .values(change_seq=self.seq, used_bytes=a.used_bytes + self.delta)
        )
        return self.seq


def trash(change: Change, node: Row[Any]) -> None:
    """Move a node (and its subtree) to the trash; one journal entry for the top."""
    conn, account_id = change.conn, change.account_id
    freed = int(node.size) if node.kind == t.KIND_FILE else 0
    if node.kind == t.KIND_DIR:
        freed = int(
            conn.execute(
                select(func.coalesce(func.sum(n.size), 0)).where(
                    n.account_id == account_id,
                    n.deleted_at.is_(None),
                    n.kind == t.KIND_FILE,
                    in_subtree(node.path),
                )
            ).scalar_one()
        )
        conn.execute(
            update(t.nodes)
            .where(n.account_id == account_id, n.deleted_at.is_(None), in_subtree(node.path))
            .values(deleted_at=change.now, trash_id=node.id)
        )
    conn.execute(update(t.nodes).where(n.id == node.id).values(deleted_at=change.now, trash_id=node.id))
    change.grow(-freed)
    change.journal("delete", node.id, node.kind, node.path)


def insert_node(change: Change, *, parent_id: int, path: str, name: str, kind: str, mtime: float) -> int:
    return int(
        change.conn.execute(
            insert(t.nodes)
            .values(
                account_id=change.account_id,
                parent_id=parent_id,
                name=name,
                path=path,
                kind=kind,
                mtime=mtime,
                created_at=change.now,
            )
            .returning(n.id)
        ).scalar_one()
    )


def copy_version(change: Change, version_id: int, new_node_id: int) -> int:
    """Duplicate a version's row and block list for another node (no block is copied)."""
    conn = change.conn
    src = conn.execute(select(t.versions).where(v.id == version_id)).one()
    new_id = int(
        conn.execute(
            insert(t.versions)
            .values(
                node_id=new_node_id,
                account_id=change.account_id,
                size=src.size,
                sha256=src.sha256,
                mtime=src.mtime,
                created_at=change.now,
                device=src.device,
                chunker_id=src.chunker_id,
                block_count=src.block_count,
            )
            .returning(v.id)
        ).scalar_one()
    )
    vb = t.version_blocks.c
    conn.execute(
        insert(t.version_blocks).from_select(
            ["version_id", "idx", "block_id", "offset"],
            select(literal(new_id), vb.idx, vb.block_id, vb.offset).where(vb.version_id == version_id),
        )
    )
    return new_id


def copy_properties(conn: Connection, src_node: int, dst_node: int) -> None:
    p = t.properties.c
    conn.execute(
        insert(t.properties).from_select(
            ["node_id", "name", "value"],
            select(literal(dst_node), p.name, p.value).where(p.node_id == src_node),
        )
    )
