"""One account's file tree: the facade both faces use.

Every mutation is one transaction (:class:`storage.tree.Change`) that also
appends to the change journal and bumps the account's change sequence; the
engine's listeners hear of it only after the commit. Writes stream into blocks
first (:mod:`storage.writer`) and become visible in that final transaction
only, so a failed or killed upload leaves the previous version untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from storage import changes as changes_mod
from storage import paths, revisions, tree
from storage import trash as trash_mod
from storage.accounts import AccountContext
from storage.blockstore import BlockStore
from storage.cache import Cache, NoCache
from storage.changes import ChangePage
from storage.chunker import BufferPool, Readable
from storage.codec import is_precompressed
from storage.config import StorageConfig
from storage.delta import BlockSync
from storage.errors import (
    AlreadyExists,
    BackendUnavailable,
    Conflict,
    NotFound,
    PreconditionFailed,
    QuotaExceeded,
    TooLarge,
)
from storage.metadata import schema as t
from storage.metadata.db import Database
from storage.metadata.prepared import Prepared
from storage.model import Change, Committed, Entry, Quota, Revision, TrashItem, TreePage
from storage.reader import BlockLocation, VersionReader
from storage.uploads import HasherCache, PendingAppends, Uploads
from storage.writer import BlockWriter, HashThreads, LimitedReader, VanishedBlocks

n = t.nodes.c
v = t.versions.c


class BlockRefLike(Protocol):
    @property
    def block_id(self) -> int | None: ...

    @property
    def offset(self) -> int: ...


class Committable(Protocol):
    """What a version commit needs from its source: a streamed write or a finished upload session."""

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> bytes: ...

    @property
    def refs(self) -> Sequence[BlockRefLike]: ...

    def finish_in(self, conn: Connection) -> None: ...

    def retry_after(self, exc: Exception) -> None: ...

    def committed(self) -> None: ...


@dataclass(frozen=True)
class Services:
    """What every volume of an engine shares."""

    config: StorageConfig
    db: Database
    blocks: BlockStore
    executor: ThreadPoolExecutor
    notify: Callable[[Committed], None]
    cache: Cache = field(default_factory=NoCache)
    hashers: HasherCache = field(default_factory=HasherCache)
    pending: PendingAppends = field(default_factory=PendingAppends)
    buffers: BufferPool = field(default_factory=BufferPool)
    hash_threads: HashThreads = field(default_factory=HashThreads)


class Volume:
    def __init__(self, ctx: AccountContext, services: Services) -> None:
        self.account = ctx
        self._s = services
        self._db = services.db
        self._clock = services.config.clock

    @property
    def block_sync(self) -> BlockSync:
        """This account's block-level sync (storage.delta)."""
        return BlockSync(self, self._s)

    @property
    def uploads(self) -> Uploads:
        """This account's resumable upload sessions."""
        return Uploads(self, self._s.hashers, self._clock)

    # -- reading the tree ------------------------------------------------------------

    def stat(self, path: str) -> Entry:
        path = paths.normalize_path(path)
        # One statement needs no snapshot: without one, no BEGIN/ROLLBACK and no pool
        # checkout (67 -> 22 us a call; WsgiDAV looks resources up several times a request).
        with self._db.read(snapshot=False) as conn:
            row = tree.existing_node(conn, self.account.id, path)
        return tree.to_entry(row)

    def listdir(self, path: str) -> list[Entry]:
        """The live children of a folder, in one query (or from the cache, storage.cache)."""
        path = paths.normalize_path(path)
        with self._db.read() as conn:
            generation = self._generation(conn)

            def load() -> list[Entry]:
                folder = tree.existing_node(conn, self.account.id, path)
                if folder.kind != t.KIND_DIR:
                    raise Conflict(f"{path!r} is not a folder")
                rows = conn.execute(
                    tree.select_nodes()
                    .where(n.parent_id == folder.id, n.deleted_at.is_(None))
                    .order_by(n.name)
                ).all()
                return [tree.to_entry(r) for r in rows]

            return self._s.cache.listing(self.account.id, generation, path, load)

    def _generation(self, conn: Connection) -> int:
        """The account's change sequence: the change-feed position, and the generation the
        metadata cache keys listings by (read before what is cached under it)."""
        return int(_GENERATION.scalar(conn, {"b_account": self.account.id}))

    def walk(self, path: str) -> list[Entry]:
        """Every live node below ``path`` (not itself), parents before children."""
        path = paths.normalize_path(path)
        with self._db.read() as conn:
            tree.existing_node(conn, self.account.id, path)
            rows = conn.execute(
                tree.select_nodes()
                .where(n.account_id == self.account.id, n.deleted_at.is_(None), tree.in_subtree(path))
                .order_by(n.path)
            ).all()
        return [tree.to_entry(r) for r in rows]

    def walk_page(
        self, path: str, *, after: str | None = None, limit: int, recursive: bool = True
    ) -> TreePage:
        """One page of the live nodes below folder ``path`` (not itself) in path order, so
        parents come before children; ``recursive=False``: its direct children only.

        ``after`` (a path) continues a listing: only nodes whose path sorts after it. The
        page is one indexed query (``ORDER BY path LIMIT``), never an offset scan: a
        subtree is one range of the live-path index, read in order; children come by
        the parent index (a range of the path index would also read their subtrees,
        say the whole account for the root's children). The page's ``position`` is the
        account's change sequence, read before the listing: replaying the change feed
        from it over the listing's entries ends at the current tree.
        """
        path = paths.normalize_path(path)
        start = None if after is None else paths.normalize_path(after)
        with self._db.read() as conn:
            position = self._generation(conn)
            folder = tree.existing_node(conn, self.account.id, path)
            if folder.kind != t.KIND_DIR:
                raise Conflict(f"{path!r} is not a folder")
            where: list[ColumnElement[bool]] = [n.deleted_at.is_(None)]
            if recursive:
                where += [n.account_id == self.account.id, tree.in_subtree(path)]
            else:
                where.append(n.parent_id == folder.id)
            if start is not None:
                where.append(n.path > start)
            rows = conn.execute(tree.select_nodes().where(*where).order_by(n.path).limit(limit + 1)).all()
        return TreePage([tree.to_entry(r) for r in rows[:limit]], len(rows) > limit, position)

    def quota(self) -> Quota:
        a = t.accounts.c
        with self._db.read(snapshot=False) as conn:
            row = conn.execute(select(a.used_bytes, a.quota_bytes).where(a.id == self.account.id)).one()
        return Quota(int(row.used_bytes), row.quota_bytes)

    def journal(self, after: int = 0, limit: int = 1000) -> list[Change]:
        """Journal entries with ``seq > after`` in commit order."""
        return self.changes(after, limit=limit).changes

    def change_seq(self) -> int:
        """The account's current change-feed position."""
        with self._db.read(snapshot=False) as conn:
            return self._generation(conn)

    def changes(self, after: int, *, limit: int = 1000, scope: str = "") -> ChangePage:
        """What changed after position ``after`` (within folder ``scope``); see storage.changes."""
        scope = paths.normalize_path(scope)
        with self._db.read() as conn:
            return changes_mod.read(conn, self.account.id, after, limit=limit, scope=scope)

    def has_changes(self, after: int, *, scope: str = "") -> tuple[bool, int]:
        """Whether :meth:`changes` would return anything, and the position checked up to."""
        scope = paths.normalize_path(scope)
        with self._db.read() as conn:
            return changes_mod.any_after(conn, self.account.id, after, scope)

    # -- changing the tree -----------------------------------------------------------

    def mkdir(self, path: str, *, mtime: float | None = None) -> Entry:
        path = paths.normalize_path(path)
        if path == "":
            raise AlreadyExists("the root folder exists")
        with self._db.write() as conn:
            change = tree.Change(conn, self.account.id, self._clock())
            parent = tree.live_folder(conn, self.account.id, paths.parent_of(path))
            if tree.live_node(conn, self.account.id, path) is not None:
                raise AlreadyExists(f"{path!r} exists")
            tree.insert_folder(change, parent.id, path, change.now if mtime is None else mtime)
            committed = change.finish()
            entry = tree.to_entry(tree.live_node(conn, self.account.id, path))  # type: ignore[arg-type]
        self._s.notify(committed)
        return entry

    def write(
        self,
        path: str,
        stream: Readable,
        *,
        size_hint: int | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
        mtime: float | None = None,
        device: str | None = None,
    ) -> Entry:
        """Store ``stream`` as the new current version of the file at ``path``."""
        pending = self.begin_write(
            path,
            size_hint=size_hint,
            if_match=if_match,
            if_none_match=if_none_match,
            mtime=mtime,
            device=device,
        )
        with pending:
            pending.feed(stream)
            return pending.commit()

    def begin_write(
        self,
        path: str,
        *,
        size_hint: int | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
        mtime: float | None = None,
        device: str | None = None,
    ) -> PendingWrite:
        """Check a write can start (before any body is read) and return it, unfed.

        ``if_match`` / ``if_none_match`` take an entity tag or ``"*"`` and are
        checked now and again inside the commit, so a concurrent writer cannot
        slip between the check and the commit.
        """
        path = paths.normalize_path(path)
        if path == "":
            raise Conflict("cannot write to the root folder")
        cfg = self._s.config
        if size_hint is not None and size_hint > cfg.max_file_size:
            raise TooLarge(f"files are limited to {cfg.max_file_size} bytes")
        room = self._precheck(path, if_match, if_none_match, size_hint)
        writer = BlockWriter(
            self.account,
            self._db,
            self._s.blocks,
            self._s.executor,
            compress=not is_precompressed(paths.name_of(path)),
            depth=cfg.pipeline_depth,
            pin_every_bytes=cfg.pin_every_bytes,
            lease_seconds=cfg.write_lease_seconds,
            clock=self._clock,
            buffers=self._s.buffers,
            hash_threads=self._s.hash_threads,
        )
        return PendingWrite(self, path, writer, room, _WriteOptions(if_match, if_none_match, mtime, device))

    def _precheck(
        self, path: str, if_match: str | None, if_none_match: str | None, size_hint: int | None
    ) -> int | None:
        """Fail fast before reading a body; returns the room left under the quota."""
        with self._db.read(snapshot=False) as conn:
            node, parent = tree.node_and_parent(conn, self.account.id, path)
            tree.folder_for_new(parent, paths.parent_of(path))
            _check_target(node, if_match, if_none_match)
            q = _QUOTA.first(conn, {"b_account": self.account.id})
        if q.quota_bytes is None:
            return None
        room = int(q.quota_bytes) - int(q.used_bytes)
        if size_hint is not None and size_hint > room:
            raise QuotaExceeded("the account's quota has no room for this file")
        return max(room, 0)

    def _commit_source(
        self,
        path: str,
        source: Committable,
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
        mtime: float | None = None,
        device: str | None = None,
        make_folders: bool = False,
    ) -> tuple[Entry, bool]:
        """Commit blocks already stored -- a finished upload session (storage.uploads) or a
        client's block list (storage.delta) -- as the file's new version.

        ``make_folders``: folders missing on the way to ``path`` are created (and journaled)
        in the same transaction instead of the commit failing with :class:`Conflict`.
        Returns the entry and whether the file is new.
        """
        options = _WriteOptions(if_match, if_none_match, mtime, device, make_folders)
        entry, committed, created = self._commit(path, source, options)
        self._s.notify(committed)
        return entry, created

    def _commit(
        self, path: str, writer: Committable, options: _WriteOptions
    ) -> tuple[Entry, Committed, bool]:
        for _ in range(4):
            try:
                with self._db.write() as conn:
                    result = self._commit_in(conn, path, writer, options)
            except (VanishedBlocks, DBIntegrityError) as exc:
                writer.retry_after(exc)
                continue
            writer.committed()
            return result
        raise BackendUnavailable("the commit kept conflicting with concurrent changes; retry")

    def _commit_in(
        self, conn: Connection, path: str, writer: Committable, options: _WriteOptions
    ) -> tuple[Entry, Committed, bool]:
        """Commit the version; returns its entry, the commit (for listeners) and whether the file is new."""
        change = tree.Change(conn, self.account.id, self._clock())
        writer.finish_in(conn)
        node, parent = tree.node_and_parent(conn, self.account.id, path, lock=True)
        _check_target(node, options.if_match, options.if_none_match)
        mtime = change.now if options.mtime is None else options.mtime
        device = options.device
        if node is None:
            if parent is None and options.make_folders:
                parent_id = tree.make_folders(change, paths.parent_of(path))
            else:
                parent_id = tree.folder_for_new(parent, paths.parent_of(path)).id
            node_id = tree.insert_node(
                change,
                parent_id=parent_id,
                path=path,
                name=paths.name_of(path),
                kind=t.KIND_FILE,
                mtime=mtime,
            )
            op, created_at = "create", change.now
        else:
            node_id, op, created_at = node.id, "modify", node.created_at
        change.grow(writer.size)
        version_id = int(
            _INSERT_VERSION.scalar(
                conn,
                {
                    "node_id": node_id,
                    "account_id": self.account.id,
                    "size": writer.size,
                    "sha256": writer.sha256,
                    "mtime": mtime,
                    "created_at": change.now,
                    "device": device,
                    "chunker_id": self.account.chunker_id,
                    "block_count": len(writer.refs),
                },
            )
        )
        _INSERT_VERSION_BLOCKS.execute_many(
            conn,
            (
                {"version_id": version_id, "idx": i, "block_id": r.block_id, "offset": r.offset}
                for i, r in enumerate(writer.refs)
            ),
        )
        _SET_NODE_VERSION.execute(
            conn,
            {"b_node": node_id, "b_version": version_id, "b_size": writer.size, "b_mtime": mtime},
        )
        change.journal(op, node_id, t.KIND_FILE, path, version_id=version_id, size=writer.size, mtime=mtime)
        committed = change.finish()
        entry = Entry(
            node_id,
            path,
            paths.name_of(path),
            False,
            writer.size,
            mtime,
            created_at,
            version_id,
            writer.sha256,
        )
        return entry, committed, op == "create"

    def delete(self, path: str, *, if_rev: int | None = None) -> int:
        """Move a file or folder (with everything below it) to the trash; returns the trash item's id.

        ``if_rev``: a file must still be at that revision (checked in the transaction),
        else :class:`PreconditionFailed` and nothing is deleted; folders have none to check.
        """
        path = paths.normalize_path(path)
        if path == "":
            raise Conflict("the root folder cannot be deleted")
        with self._db.write() as conn:
            change = tree.Change(conn, self.account.id, self._clock())
            node = tree.existing_node(conn, self.account.id, path, lock=True)
            _check_rev(node, if_rev)
            tree.trash(change, node)
            committed = change.finish()
        self._s.notify(committed)
        return int(node.id)

    def trash(self, *, limit: int | None = None) -> list[TrashItem]:
        """What was deleted, most recent first."""
        with self._db.read() as conn:
            return trash_mod.items(conn, self.account.id, limit=limit)

    def trash_item_path(self, item_id: int) -> str:
        """Where a trash item was deleted from; :class:`NotFound` for no such item."""
        with self._db.read() as conn:
            return trash_mod.original_path(conn, self.account.id, item_id)

    def restore_from_trash(self, item_id: int, path: str | None = None) -> Entry:
        """Bring a trash item back, to where it was or to ``path``; an existing target is a conflict."""
        target = None if path is None else paths.normalize_path(path)
        with self._db.write() as conn:
            change = tree.Change(conn, self.account.id, self._clock())
            entry = trash_mod.restore(change, item_id, target)
            committed = change.finish()
        self._s.notify(committed)
        return entry

    def purge_trash_item(self, item_id: int) -> None:
        """Delete one trash item for good; its blocks become garbage."""
        with self._db.write() as conn:
            trash_mod.purge(conn, self.account.id, item_id, self._clock())

    def purge_trash(self, *, deleted_before: float | None = None) -> int:
        """Delete trashed nodes for good (with their versions); returns how many went.

        Their bytes leave the quota; their blocks become unreferenced and are
        reclaimed by garbage collection.
        """
        with self._db.write() as conn:
            change = tree.Change(conn, self.account.id, self._clock())
            cond = [n.account_id == self.account.id, n.deleted_at.is_not(None)]
            if deleted_before is not None:
                cond.append(n.deleted_at < deleted_before)
            # Counted first: SQLite's rowcount misses rows its cascades removed. The
            # selection holds whole deletions (a folder's members were trashed with it or
            # before it), so it also covers what the cascade removes.
            count = conn.execute(select(func.count()).select_from(t.nodes).where(*cond)).scalar_one()
            doomed = select(n.id).where(*cond)
            tree.release(conn, self.account.id, tree.version_bytes(conn, doomed))
            tree.mark_released(conn, tree.versions_of(doomed), change.now)
            conn.execute(delete(t.nodes).where(*cond))
            committed = change.finish()
        self._s.notify(committed)
        return int(count)

    def move(self, src: str, dst: str, *, overwrite: bool = False, if_rev: int | None = None) -> Entry:
        """Rename or move; the node keeps its id, so revisions and properties follow.

        ``if_rev``: as for :meth:`delete`, a file must still be at that revision.
        """
        src, dst = paths.normalize_path(src), paths.normalize_path(dst)
        self._check_transfer(src, dst)
        with self._db.write() as conn:
            change = tree.Change(conn, self.account.id, self._clock())
            node = self._transfer_source(conn, src)
            _check_rev(node, if_rev)
            parent = self._prepare_destination(change, dst, overwrite)
            _RENAME_NODE.execute(
                conn, {"b_node": node.id, "b_parent": parent.id, "b_name": paths.name_of(dst), "b_path": dst}
            )
            if node.kind == t.KIND_DIR:
                tree.check_subtree_fits(conn, self.account.id, src, dst, n.deleted_at.is_(None))
                # src is never the root here (_check_transfer), so the subtree is this range.
                _REPATH_SUBTREE.execute(
                    conn,
                    {
                        "b_account": self.account.id,
                        "b_above": src + "/",
                        "b_below": src + "0",
                        "b_dst": dst,
                        "b_cut": len(src) + 1,
                    },
                )
            change.journal(
                "move",
                node.id,
                node.kind,
                dst,
                old_path=src,
                version_id=node.version_id,
                size=node.size,
                mtime=node.mtime,
            )
            committed = change.finish()
            entry = tree.to_entry(tree.live_node(conn, self.account.id, dst))  # type: ignore[arg-type]
        self._s.notify(committed)
        return entry

    def copy(self, src: str, dst: str, *, overwrite: bool = False, recursive: bool = True) -> Entry:
        """Copy block lists and properties, never bytes. ``recursive=False`` copies a folder alone."""
        src, dst = paths.normalize_path(src), paths.normalize_path(dst)
        self._check_transfer(src, dst)
        with self._db.write() as conn:
            change = tree.Change(conn, self.account.id, self._clock())
            node = self._transfer_source(conn, src)
            parent = self._prepare_destination(change, dst, overwrite)
            new_ids = {node.parent_id: parent.id}
            subtree: list[Row[Any]] = [node]
            if node.kind == t.KIND_DIR and recursive:
                tree.check_subtree_fits(conn, self.account.id, src, dst, n.deleted_at.is_(None))
                subtree += conn.execute(
                    tree.select_nodes()
                    .where(n.account_id == self.account.id, n.deleted_at.is_(None), tree.in_subtree(src))
                    .order_by(n.path)
                ).all()
            tree.copy_subtree(change, subtree, src, dst, new_ids)
            committed = change.finish()
            entry = tree.to_entry(tree.live_node(conn, self.account.id, dst))  # type: ignore[arg-type]
        self._s.notify(committed)
        return entry

    @staticmethod
    def _check_transfer(src: str, dst: str) -> None:
        if src == "" or dst == "":
            raise Conflict("the root folder cannot be moved, copied or replaced")
        if src == dst:
            raise Conflict("source and destination are the same")
        if paths.is_within(dst, src):
            raise Conflict("cannot move or copy a folder into itself")
        if paths.is_within(src, dst):
            # Replacing the destination would first remove it, and the source with it.
            raise Conflict("cannot move or copy onto a folder that holds the source")

    def _transfer_source(self, conn: Connection, src: str) -> Row[Any]:
        return tree.existing_node(conn, self.account.id, src, lock=True)

    def _prepare_destination(self, change: tree.Change, dst: str, overwrite: bool) -> Row[Any]:
        parent = tree.live_folder(change.conn, self.account.id, paths.parent_of(dst))
        existing = tree.live_node(change.conn, self.account.id, dst, lock=True)
        if existing is not None:
            if not overwrite:
                raise AlreadyExists(f"{dst!r} exists")
            tree.trash(change, existing)
        return parent

    def set_mtime(self, path: str, mtime: float) -> Entry:
        path = paths.normalize_path(path)
        with self._db.write() as conn:
            change = tree.Change(conn, self.account.id, self._clock())
            node = tree.existing_node(conn, self.account.id, path, lock=True)
            conn.execute(update(t.nodes).where(n.id == node.id).values(mtime=mtime))
            if node.kind == t.KIND_FILE:
                change.journal(
                    "modify",
                    node.id,
                    node.kind,
                    path,
                    version_id=node.version_id,
                    size=node.size,
                    mtime=mtime,
                )
            committed = change.finish()
            entry = tree.to_entry(tree.live_node(conn, self.account.id, path))  # type: ignore[arg-type]
        self._s.notify(committed)
        return entry

    # -- dead properties ---------------------------------------------------------------

    def get_properties(self, path: str) -> dict[str, str]:
        path = paths.normalize_path(path)
        p = t.properties.c
        with self._db.read() as conn:
            node = tree.existing_node(conn, self.account.id, path)
            rows = conn.execute(select(p.name, p.value).where(p.node_id == node.id)).all()
        return {r.name: r.value for r in rows}

    def child_properties(self, path: str) -> dict[int, dict[str, str]]:
        """Dead properties of every live child of a folder, by node id, in one query."""
        path = paths.normalize_path(path)
        p = t.properties.c
        with self._db.read() as conn:
            generation = self._generation(conn)

            def load() -> dict[int, dict[str, str]]:
                folder = tree.existing_node(conn, self.account.id, path)
                rows = conn.execute(
                    select(p.node_id, p.name, p.value)
                    .join(t.nodes, n.id == p.node_id)
                    .where(n.parent_id == folder.id, n.deleted_at.is_(None))
                ).all()
                found: dict[int, dict[str, str]] = {}
                for r in rows:
                    found.setdefault(r.node_id, {})[r.name] = r.value
                return found

            return self._s.cache.properties(self.account.id, generation, path, load)

    def set_properties(self, path: str, set_: Mapping[str, str], remove: Iterable[str] = ()) -> None:
        """Set and remove dead properties atomically (all or nothing)."""
        path = paths.normalize_path(path)
        p = t.properties.c
        with self._db.write() as conn:
            change = tree.Change(conn, self.account.id, self._clock())
            node = tree.existing_node(conn, self.account.id, path, lock=True)
            names = set(set_) | set(remove)
            if names:
                conn.execute(delete(t.properties).where(p.node_id == node.id, p.name.in_(names)))
            if set_:
                conn.execute(
                    insert(t.properties),
                    [{"node_id": node.id, "name": k, "value": val} for k, val in set_.items()],
                )
            committed = change.finish()
        self._s.notify(committed)

    # -- revisions and content -----------------------------------------------------------

    def lookup(self, path: str, *, include_deleted: bool = False) -> Entry:
        """Like :meth:`stat`; with ``include_deleted`` a path whose file is in the trash finds it
        (``deleted_at`` set) instead of :class:`NotFound`."""
        path = paths.normalize_path(path)
        with self._db.read() as conn:
            row = revisions.find_node(conn, self.account.id, path, include_deleted=include_deleted)
        return tree.to_entry(row, deleted_at=row.deleted_at)

    def revisions(
        self,
        path: str,
        *,
        include_deleted: bool = False,
        limit: int | None = None,
        before: int | None = None,
    ) -> list[Revision]:
        """A file's revisions, newest first (``before``: older than that version id)."""
        path = paths.normalize_path(path)
        with self._db.read() as conn:
            node = revisions.find_node(conn, self.account.id, path, include_deleted=include_deleted)
            if node.kind == t.KIND_DIR:
                raise Conflict(f"{path or '/'!r} is a folder")
            return revisions.list_revisions(conn, self.account.id, node, limit=limit, before=before)

    def pin_revision(self, path: str, version_id: int, *, pinned: bool = True) -> Revision:
        """Pin a revision (retention never removes it), or unpin it."""
        path = paths.normalize_path(path)
        with self._db.write() as conn:
            node = revisions.find_node(conn, self.account.id, path, include_deleted=True)
            done = conn.execute(
                update(t.versions)
                .where(v.id == version_id, v.node_id == node.id, v.account_id == self.account.id)
                .values(pinned=pinned)
            ).rowcount
            if not done:
                raise NotFound(f"{path!r} has no revision {version_id}")
            found = revisions.list_revisions(conn, self.account.id, node, limit=1, before=version_id + 1)
        return found[0]

    def restore(self, path: str, version_id: int, *, device: str | None = None) -> Entry:
        """Make an older revision current again, as a new version (brings a trashed file back)."""
        path = paths.normalize_path(path)
        if path == "":
            raise Conflict("the root folder has no revisions")
        with self._db.write() as conn:
            change = tree.Change(conn, self.account.id, self._clock())
            entry, _ = revisions.restore(change, path, version_id, device)
            committed = change.finish()
        self._s.notify(committed)
        return entry

    def open(
        self, path: str, *, version_id: int | None = None, include_deleted: bool = False
    ) -> VersionReader:
        """A seekable reader of the current (or a given) version of a file.

        ``include_deleted``: a path whose file is in the trash reads that file's versions.
        """
        path = paths.normalize_path(path)
        with self._db.read(snapshot=False) as conn:
            if include_deleted:
                node = revisions.find_node(conn, self.account.id, path, include_deleted=True)
            else:
                node = tree.existing_node(conn, self.account.id, path)
            if node.kind == t.KIND_DIR:
                raise Conflict(f"{path or '/'!r} is a folder")
            entry = tree.to_entry(node)
            if version_id is not None and version_id != node.version_id:
                ver = conn.execute(
                    select(v.size, v.sha256, v.mtime).where(
                        v.id == version_id, v.node_id == node.id, v.account_id == self.account.id
                    )
                ).first()
                if ver is None:
                    raise NotFound(f"{path!r} has no revision {version_id}")
                entry = Entry(
                    entry.node_id,
                    entry.path,
                    entry.name,
                    False,
                    ver.size,
                    ver.mtime,
                    entry.created_at,
                    version_id,
                    bytes(ver.sha256),
                )
            version = entry.version_id
            blocks = (
                []
                if version is None
                else self._s.cache.blocks(version, lambda: _block_locations(conn, version))
            )
        return VersionReader(entry, blocks, self._s.blocks, self.account.keys, self._s.executor)


@dataclass
class _WriteOptions:
    if_match: str | None
    if_none_match: str | None
    mtime: float | None
    device: str | None
    #: Create the file's missing folders instead of refusing (an upload session's commit).
    make_folders: bool = False


class PendingWrite:
    """A write in progress: feed it the content once, then commit or abort it.

    Nothing is visible before :meth:`commit`; leaving the ``with`` block without
    committing aborts, and an abort leaves the previous version untouched.
    """

    def __init__(
        self, volume: Volume, path: str, writer: BlockWriter, room: int | None, options: _WriteOptions
    ) -> None:
        self.path = path
        self._volume = volume
        self._writer = writer
        self._room = room
        self._options = options
        self._state = "open"
        #: After the commit: whether it created the file (False: a new version of an existing one).
        self.created = False

    @property
    def size(self) -> int:
        """Bytes received so far (final once fed)."""
        return self._writer.size

    def feed(self, stream: Readable) -> None:
        if self._state != "open":
            raise RuntimeError(f"cannot feed a write that is {self._state}")
        self._state = "fed"
        try:
            self._writer.consume(LimitedReader(stream, self._volume._s.config.max_file_size, self._room))
        except BaseException:
            self.abort()
            raise

    def commit(self, *, mtime: float | None = None) -> Entry:
        if self._state != "fed":
            raise RuntimeError(f"cannot commit a write that is {self._state}")
        if mtime is not None:
            self._options.mtime = mtime
        try:
            self._writer.make_durable()
            entry, committed, self.created = self._volume._commit(self.path, self._writer, self._options)
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        self._volume._s.notify(committed)
        return entry

    def abort(self) -> None:
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborted"
        self._writer.abort()

    def __enter__(self) -> PendingWrite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


_GENERATION = Prepared(select(t.accounts.c.change_seq).where(t.accounts.c.id == bindparam("b_account")))
_BLOCK_LOCATIONS = Prepared(
    select(
        t.version_blocks.c.offset,
        t.blocks.c.size,
        t.blocks.c.name,
        t.blocks.c.sha256,
        t.blocks.c.inline_data,
    )
    .join(t.blocks, t.blocks.c.id == t.version_blocks.c.block_id)
    .where(t.version_blocks.c.version_id == bindparam("b_version"))
    .order_by(t.version_blocks.c.idx)
)
_INSERT_VERSION = Prepared(insert(t.versions).returning(t.versions.c.id), keys=tree.VERSION_KEYS)
_INSERT_VERSION_BLOCKS = Prepared(insert(t.version_blocks), keys=("version_id", "idx", "block_id", "offset"))
_SET_NODE_VERSION = Prepared(
    update(t.nodes)
    .where(t.nodes.c.id == bindparam("b_node"))
    .values(version_id=bindparam("b_version"), size=bindparam("b_size"), mtime=bindparam("b_mtime"))
)
# A rename or move runs on every save through a temporary file (office suites, editors).
_RENAME_NODE = Prepared(
    update(t.nodes)
    .where(t.nodes.c.id == bindparam("b_node"))
    .values(parent_id=bindparam("b_parent"), name=bindparam("b_name"), path=bindparam("b_path"))
)
#: A moved folder's live descendants, by the range ``tree.in_subtree`` names.
_REPATH_SUBTREE = Prepared(
    update(t.nodes)
    .where(
        t.nodes.c.account_id == bindparam("b_account"),
        t.nodes.c.deleted_at.is_(None),
        t.nodes.c.path > bindparam("b_above"),
        t.nodes.c.path < bindparam("b_below"),
    )
    .values(path=bindparam("b_dst", type_=t.PathText) + func.substr(t.nodes.c.path, bindparam("b_cut")))
)
_QUOTA = Prepared(
    select(t.accounts.c.used_bytes, t.accounts.c.quota_bytes).where(t.accounts.c.id == bindparam("b_account"))
)


def _block_locations(conn: Connection, version_id: int | None) -> list[BlockLocation]:
    if version_id is None:
        return []
    rows = _BLOCK_LOCATIONS.all(conn, {"b_version": version_id})
    return [
        BlockLocation(
            r.offset, r.size, r.name, bytes(r.sha256), None if r.inline_data is None else bytes(r.inline_data)
        )
        for r in rows
    ]


def _check_rev(node: Row[Any], if_rev: int | None) -> None:
    """A conditional delete or move of a file edited meanwhile fails (folders have no revision)."""
    if if_rev is not None and node.kind == t.KIND_FILE and node.version_id != if_rev:
        raise PreconditionFailed(f"{node.path!r} is at revision {node.version_id}, not {if_rev}")


def _check_target(node: Row[Any] | None, if_match: str | None, if_none_match: str | None) -> None:
    if node is not None and node.kind == t.KIND_DIR:
        raise Conflict(f"{node.path!r} is a folder")
    etag = tree.to_entry(node).etag if node is not None else None
    if if_match is not None and (etag is None or (if_match != "*" and if_match != etag)):
        raise PreconditionFailed("If-Match does not hold")
    if if_none_match is not None and etag is not None and if_none_match in ("*", etag):
        raise PreconditionFailed("If-None-Match does not hold")
