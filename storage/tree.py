"""SQL building blocks of the namespace tree, used inside Volume's transactions.

Every statement filters on the account id: isolation between accounts is a
property of these queries, not of URL routing in the faces.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Integer,
    LargeBinary,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    cast,
    func,
    insert,
    select,
    update,
)

from storage import paths
from storage.errors import Conflict, InvalidName, NotFound, QuotaExceeded
from storage.metadata import schema as t
from storage.metadata.prepared import Prepared
from storage.model import Committed, Entry

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


def to_entry(row: Row[Any], *, deleted_at: float | None = None) -> Entry:
    """``deleted_at``: for rows of trashed nodes (look-ups that include the trash)."""
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
        deleted_at=deleted_at,
    )


# The hottest look-up, built once: constructing and hashing a SELECT costs more
# than running it on SQLite.
_LIVE_NODE_SELECT = select_nodes().where(
    n.account_id == bindparam("b_account"), n.path == bindparam("b_path"), n.deleted_at.is_(None)
)
_LIVE_NODE = Prepared(_LIVE_NODE_SELECT)
_LIVE_NODE_FOR_UPDATE = Prepared(_LIVE_NODE_SELECT.with_for_update(of=t.nodes))


def live_node(conn: Connection, account_id: int, path: str, *, lock: bool = False) -> Row[Any] | None:
    q = _LIVE_NODE_FOR_UPDATE if lock else _LIVE_NODE
    return q.first(conn, {"b_account": account_id, "b_path": path})  # type: ignore[no-any-return]


_NODE_AND_PARENT_SELECT = select_nodes().where(
    n.account_id == bindparam("b_account"),
    n.path.in_([bindparam("b_path"), bindparam("b_parent")]),
    n.deleted_at.is_(None),
)
_NODE_AND_PARENT = Prepared(_NODE_AND_PARENT_SELECT)
_NODE_AND_PARENT_FOR_UPDATE = Prepared(_NODE_AND_PARENT_SELECT.with_for_update(of=t.nodes))


def node_and_parent(
    conn: Connection, account_id: int, path: str, *, lock: bool = False
) -> tuple[Row[Any] | None, Row[Any] | None]:
    """The live nodes at ``path`` and at its parent folder's path, in one look-up (a write's)."""
    parent_path = paths.parent_of(path)
    q = _NODE_AND_PARENT_FOR_UPDATE if lock else _NODE_AND_PARENT
    rows = q.all(conn, {"b_account": account_id, "b_path": path, "b_parent": parent_path})
    by_path = {row.path: row for row in rows}
    return by_path.get(path), by_path.get(parent_path)


def folder_for_new(parent: Row[Any] | None, parent_path: str) -> Row[Any]:
    """The folder something is being created in, or :class:`Conflict` (as live_folder)."""
    if parent is None:
        raise Conflict(f"folder {parent_path or '/'!r} does not exist")
    if parent.kind != t.KIND_DIR:
        raise Conflict(f"{parent_path!r} is a file, not a folder")
    return parent


def existing_node(conn: Connection, account_id: int, path: str, *, lock: bool = False) -> Row[Any]:
    """The live node at ``path``, or :class:`NotFound`."""
    row = live_node(conn, account_id, path, lock=lock)
    if row is None:
        raise NotFound(f"{path or '/'!r} does not exist")
    return row


def live_folder(conn: Connection, account_id: int, path: str) -> Row[Any]:
    """The live folder at ``path`` that something is being created in, or :class:`Conflict`."""
    return folder_for_new(live_node(conn, account_id, path), path)


def check_subtree_fits(conn: Connection, account_id: int, src: str, dst: str, *which: Any) -> None:
    """Refuse to put the subtree at ``src`` under ``dst`` when a path in it would grow past
    ``paths.MAX_PATH_BYTES`` (only ``dst`` itself was checked, and a file whose path is too
    long cannot be reached any more). ``which``: conditions narrowing the nodes that move."""
    growth = len(dst.encode("utf-8")) - len(src.encode("utf-8"))
    if growth <= 0:
        return
    if conn.dialect.name == "postgresql":
        size = func.octet_length(n.path)
    else:
        size = func.length(cast(n.path, LargeBinary))  # SQLite: a blob's length is in bytes
    too_long = size > paths.MAX_PATH_BYTES - growth
    found = conn.execute(
        select(n.id).where(n.account_id == account_id, in_subtree(src), too_long, *which).limit(1)
    ).first()
    if found is not None:
        raise InvalidName(f"a path below {dst!r} would be longer than {paths.MAX_PATH_BYTES} bytes")


def in_subtree(path: str) -> ColumnElement[bool]:
    """Live-or-not nodes strictly below ``path`` (byte order: '/' < '0')."""
    if path == "":
        return n.path != ""
    return and_(n.path > path + "/", n.path < path + "0")


_LOCK_ACCOUNT = Prepared(
    select(t.accounts.c.change_seq, t.accounts.c.used_bytes, t.accounts.c.quota_bytes)
    .where(t.accounts.c.id == bindparam("b_account"))
    .with_for_update()
)
_JOURNAL_KEYS = (
    "account_id",
    "seq",
    "node_id",
    "op",
    "kind",
    "path",
    "old_path",
    "version_id",
    "size",
    "mtime",
    "at",
)
_INSERT_JOURNAL = Prepared(insert(t.journal), keys=_JOURNAL_KEYS)
_FINISH = Prepared(
    update(t.accounts)
    .where(t.accounts.c.id == bindparam("b_account"))
    .values(change_seq=bindparam("b_seq"), used_bytes=t.accounts.c.used_bytes + bindparam("b_delta"))
)
_NODE_KEYS = ("account_id", "parent_id", "name", "path", "kind", "mtime", "created_at")
_INSERT_NODE = Prepared(insert(t.nodes).returning(t.nodes.c.id), keys=_NODE_KEYS)


class Change:
    """One mutating transaction of one account.

    Opening it locks the account row, which serialises an account's commits on
    PostgreSQL exactly as SQLite's write lock does; journal sequence numbers are
    therefore gap-free within a transaction and in commit order across them.
    """

    def __init__(self, conn: Connection, account_id: int, now: float) -> None:
        row = _LOCK_ACCOUNT.first(conn, {"b_account": account_id})
        if row is None:
            raise NotFound(f"no account {account_id}")
        self.conn = conn
        self.account_id = account_id
        self.now = now
        self.start = self.seq = int(row.change_seq)
        self.used = int(row.used_bytes)
        self.quota = row.quota_bytes
        self.delta = 0
        self._paths: set[str] = set()

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
        mtime: float | None = None,
    ) -> None:
        self.seq += 1
        self._paths.add(path)
        if old_path is not None:
            self._paths.add(old_path)
        _INSERT_JOURNAL.execute(
            self.conn,
            {
                "account_id": self.account_id,
                "seq": self.seq,
                "node_id": node_id,
                "op": op,
                "kind": kind,
                "path": path,
                "old_path": old_path,
                "version_id": version_id,
                "size": size,
                "mtime": mtime,
                "at": self.now,
            },
        )

    def journal_many(self, entries: list[dict[str, Any]]) -> None:
        """Several entries in one statement; each dict has journal()'s arguments."""
        if not entries:
            return
        rows = []
        for entry in entries:
            self.seq += 1
            self._paths.add(entry["path"])
            rows.append(
                {
                    "account_id": self.account_id,
                    "seq": self.seq,
                    "old_path": None,
                    "version_id": None,
                    "size": None,
                    "mtime": None,
                    "at": self.now,
                    **entry,
                }
            )
        _INSERT_JOURNAL.execute_many(self.conn, rows)

    def grow(self, delta: int) -> None:
        """Account for ``delta`` bytes of retained content; refuses to pass the quota.

        Usage counts every version that is kept (current, older, in the trash): a new
        version adds its size, and only removing versions (retention, purging the
        trash) gives room back.
        """
        if delta > 0 and self.quota is not None and self.used + self.delta + delta > self.quota:
            raise QuotaExceeded("the account's quota has no room for this")
        self.delta += delta

    def finish(self) -> Committed:
        """Record the new sequence and usage; the result is for listeners once committed."""
        self.seq = max(self.seq, self.start + 1)
        _FINISH.execute(self.conn, {"b_account": self.account_id, "b_seq": self.seq, "b_delta": self.delta})
        return Committed(self.account_id, self.seq, summarise_paths(self._paths))


#: More paths than this are told to listeners as their common ancestor (a big COPY).
MAX_EVENT_PATHS = 32


def summarise_paths(touched: set[str]) -> tuple[str, ...]:
    if len(touched) <= MAX_EVENT_PATHS:
        return tuple(sorted(touched))
    common = os.path.commonpath(["/" + p for p in touched])
    return (common.lstrip("/"),)


def trash(change: Change, node: Row[Any]) -> None:
    """Move a node (and its subtree) to the trash; one journal entry for the top.

    The quota keeps counting what is in the trash (it is retained) until it is purged.
    """
    conn, account_id = change.conn, change.account_id
    if node.kind == t.KIND_DIR:
        conn.execute(
            update(t.nodes)
            .where(n.account_id == account_id, n.deleted_at.is_(None), in_subtree(node.path))
            .values(deleted_at=change.now, trash_id=node.id)
        )
    conn.execute(update(t.nodes).where(n.id == node.id).values(deleted_at=change.now, trash_id=node.id))
    change.journal("delete", node.id, node.kind, node.path, mtime=node.mtime)


def insert_node(change: Change, *, parent_id: int, path: str, name: str, kind: str, mtime: float) -> int:
    params = {
        "account_id": change.account_id,
        "parent_id": parent_id,
        "name": name,
        "path": path,
        "kind": kind,
        "mtime": mtime,
        "created_at": change.now,
    }
    return int(_INSERT_NODE.scalar(change.conn, params))


def make_folders(change: Change, path: str) -> int:
    """The id of the live folder at ``path``, created with its missing ancestors (each
    journaled as a create) when it is gone; :class:`Conflict` when a file is in the way."""
    missing: list[str] = []
    at = path
    while (row := live_node(change.conn, change.account_id, at, lock=True)) is None and at:
        missing.append(at)
        at = paths.parent_of(at)
    folder_id = int(folder_for_new(row, at).id)
    for folder in reversed(missing):
        folder_id = insert_folder(change, folder_id, folder, change.now)
    return folder_id


def insert_folder(change: Change, parent_id: int, path: str, mtime: float) -> int:
    """A new folder at ``path`` in the folder ``parent_id``, journaled as a create; its id."""
    node_id = insert_node(
        change, parent_id=parent_id, path=path, name=paths.name_of(path), kind=t.KIND_DIR, mtime=mtime
    )
    change.journal("create", node_id, t.KIND_DIR, path, mtime=mtime)
    return node_id


def allocate_ids(conn: Connection, table: Table, count: int) -> list[int]:
    """``count`` fresh primary keys, so rows can go in with one executemany (no RETURNING).

    Called inside a write transaction: on SQLite the database is locked for
    writing, so max(id) cannot move; on PostgreSQL the ids come from the
    column's sequence, as a default would.
    """
    if count == 0:
        return []
    if conn.dialect.name == "postgresql":
        seq = conn.execute(select(func.pg_get_serial_sequence(table.name, "id"))).scalar_one()
        rows = conn.execute(select(func.nextval(seq)).select_from(func.generate_series(1, count)))
        return [int(r[0]) for r in rows]
    top = int(conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one())
    return list(range(top + 1, top + 1 + count))


# A COPY's rows go in with executemany on the DBAPI cursor: SQLAlchemy's own per-row
# parameter processing cost more than the inserts themselves (500 files: ~10 ms).
_COPY_NODES = Prepared(insert(t.nodes), keys=("id", *_NODE_KEYS, "version_id", "size"))
#: The columns a new version row is written with (its id aside).
VERSION_KEYS = (
    "node_id",
    "account_id",
    "size",
    "sha256",
    "mtime",
    "created_at",
    "device",
    "chunker_id",
    "block_count",
)
#: A copied file's version: the source's content fields, a new id, node and time.
_COPY_VERSION = Prepared(
    insert(t.versions).from_select(
        ["id", *VERSION_KEYS],
        select(
            bindparam("b_new", type_=Integer),
            bindparam("b_node", type_=Integer),
            v.account_id,
            v.size,
            v.sha256,
            v.mtime,
            bindparam("b_now", type_=Float),
            v.device,
            v.chunker_id,
            v.block_count,
        ).where(v.id == bindparam("b_old")),
    )
)
_COPY_BLOCK_LIST = Prepared(
    insert(t.version_blocks).from_select(
        ["version_id", "idx", "block_id", "offset"],
        select(
            bindparam("b_new", type_=Integer),
            t.version_blocks.c.idx,
            t.version_blocks.c.block_id,
            t.version_blocks.c.offset,
        ).where(t.version_blocks.c.version_id == bindparam("b_old")),
    )
)


def copy_subtree(change: Change, rows: list[Row[Any]], src: str, dst: str, new_ids: dict[int, int]) -> None:
    """Copy nodes (parents before children), their current versions' block lists and properties.

    A fixed number of statements per folder level, whatever the number of
    files: rows go in with executemany, block lists and properties with
    INSERT ... SELECT per (old, new) pair in one executemany each.
    ``new_ids`` maps the source parent's id to the destination parent's.
    """
    conn = change.conn
    new_paths = {row.id: dst + row.path[len(src) :] for row in rows}
    # Version ids first, so each new file node goes in with its version (nodes.version_id
    # has no foreign key; the versions follow once their nodes exist).
    files = [row for row in rows if row.kind == t.KIND_FILE and row.version_id is not None]
    version_ids = allocate_ids(conn, t.versions, len(files))
    new_versions = {row.id: version_id for row, version_id in zip(files, version_ids, strict=True)}
    levels: dict[int, list[Row[Any]]] = {}
    for row in rows:
        levels.setdefault(row.path.count("/"), []).append(row)
    for depth in sorted(levels):
        level = levels[depth]
        ids = allocate_ids(conn, t.nodes, len(level))
        _COPY_NODES.execute_many(
            conn,
            [
                {
                    "id": node_id,
                    "account_id": change.account_id,
                    "parent_id": new_ids[row.parent_id],
                    "name": paths.name_of(new_paths[row.id]),
                    "path": new_paths[row.id],
                    "kind": row.kind,
                    "mtime": row.mtime,
                    "created_at": change.now,
                    "version_id": new_versions.get(row.id),
                    "size": row.size if row.id in new_versions else 0,
                }
                for row, node_id in zip(level, ids, strict=True)
            ],
        )
        for row, node_id in zip(level, ids, strict=True):
            new_ids[row.id] = node_id

    if files:
        _COPY_VERSION.execute_many(
            conn,
            [
                {
                    "b_new": new_versions[row.id],
                    "b_node": new_ids[row.id],
                    "b_now": change.now,
                    "b_old": row.version_id,
                }
                for row in files
            ],
        )
        _COPY_BLOCK_LIST.execute_many(
            conn, [{"b_new": new_versions[row.id], "b_old": row.version_id} for row in files]
        )
        change.grow(sum(int(row.size) for row in files))

    p = t.properties.c
    with_props: list[int] = []
    for i in range(0, len(rows), 500):
        chunk = [row.id for row in rows[i : i + 500]]
        with_props += conn.execute(select(p.node_id).distinct().where(p.node_id.in_(chunk))).scalars()
    if with_props:
        conn.execute(
            insert(t.properties).from_select(
                ["node_id", "name", "value"],
                select(bindparam("b_dst", type_=Integer), p.name, p.value).where(
                    p.node_id == bindparam("b_src")
                ),
            ),
            [{"b_dst": new_ids[node_id], "b_src": node_id} for node_id in with_props],
        )
    change.journal_many(
        [
            {
                "op": "create",
                "node_id": new_ids[row.id],
                "kind": row.kind,
                "path": new_paths[row.id],
                "version_id": new_versions.get(row.id),
                "size": row.size if row.id in new_versions else None,
                "mtime": row.mtime,
            }
            for row in rows
        ]
    )


def release(conn: Connection, account_id: int, nbytes: int) -> None:
    """Versions of ``nbytes`` in total were removed: give the room back (outside a Change)."""
    if nbytes:
        conn.execute(
            update(t.accounts)
            .where(t.accounts.c.id == account_id)
            .values(used_bytes=t.accounts.c.used_bytes - nbytes)
        )


def mark_released(conn: Connection, version_ids: Any, now: float) -> None:
    """The given versions (a list or a subquery of ids) are about to go for good: their
    blocks are stamped, so gc leaves them for its grace period from now (a reader that
    opened one of these versions earlier still finds its blocks)."""
    vb = t.version_blocks.c
    conn.execute(
        update(t.blocks)
        .where(t.blocks.c.id.in_(select(vb.block_id).where(vb.version_id.in_(version_ids))))
        .values(released_at=now)
    )


def versions_of(node_ids: Any) -> Any:
    """The ids of every version of the given nodes (a list or a subquery of ids), as a subquery."""
    return select(t.versions.c.id).where(t.versions.c.node_id.in_(node_ids))


def version_bytes(conn: Connection, node_ids: Any) -> int:
    """Total size of every version of the given nodes (a list or a subquery of ids)."""
    v = t.versions.c
    return int(
        conn.execute(select(func.coalesce(func.sum(v.size), 0)).where(v.node_id.in_(node_ids))).scalar_one()
    )
