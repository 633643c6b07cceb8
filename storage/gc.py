"""Garbage collection, consistency checks and statistics.

Collection protocol (safe with any number of concurrent writers, no global lock):

1. Upload rows whose lease expired are deleted; their pins go with them.
2. Block rows that are older than the grace period, were not released (their last
   version removed for good, see ``tree.mark_released``) within it either, and are
   referenced by no version and no upload are deleted in small transactions. So a
   download that opened a version before retention or a trash purge removed it can
   still read it for the grace period. The foreign keys from
   ``version_blocks`` and ``upload_blocks`` make the database refuse (or wait
   for) a delete that would orphan a concurrent writer's reference; such a
   batch is skipped and tried again next time.
3. Only after a row's deletion commits is its object deleted. Object names are
   unique per stored copy (see :mod:`storage.blockstore`), so a writer that
   stores the same content again meanwhile writes a different object.
4. Objects with no row (a crash between store and commit) are deleted once
   older than the grace period.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from storage.accounts import Accounts
from storage.backends.base import Backend
from storage.blockstore import BlockStore
from storage.errors import IntegrityError, NotFound
from storage.metadata import schema as t
from storage.metadata.db import Database
from storage.model import FsckReport, GcReport, Stats

_BATCH = 200
b = t.blocks.c
_IS_INLINE = b.inline_data.is_not(None).label("is_inline")


def _unreferenced() -> Any:
    vb, ub = t.version_blocks.c, t.upload_blocks.c
    return and_(
        ~exists().where(vb.block_id == b.id),
        ~exists().where(ub.block_id == b.id),
    )


def _settled(cutoff: float) -> Any:
    """Created, and released if ever, no later than ``cutoff``."""
    return and_(b.created_at < cutoff, or_(b.released_at.is_(None), b.released_at <= cutoff))


def collect(db: Database, backend: Backend, *, now: float, grace: float) -> GcReport:
    report = GcReport()
    cutoff = now - grace
    us = t.upload_sessions.c
    with db.write() as conn:
        # Expired upload sessions go with their pin rows; their tails are objects of their own.
        tails = (
            conn.execute(
                select(us.tail_name)
                .join(t.uploads, t.uploads.c.id == us.upload_id)
                .where(t.uploads.c.expires_at < now, us.tail_name.is_not(None))
            )
            .scalars()
            .all()
        )
        report.expired_uploads = conn.execute(delete(t.uploads).where(t.uploads.c.expires_at < now)).rowcount
    for name in tails:
        backend.delete(name)
    with db.read() as conn:
        candidates = conn.execute(
            select(b.id, _IS_INLINE).where(_settled(cutoff), _unreferenced()).order_by(b.id)
        ).all()
    inline = {row.id for row in candidates if row.is_inline}
    for i in range(0, len(candidates), _BATCH):
        batch = [row.id for row in candidates[i : i + _BATCH]]
        try:
            with db.write() as conn:
                gone = conn.execute(
                    delete(t.blocks)
                    .where(b.id.in_(batch), _settled(cutoff), _unreferenced())
                    .returning(b.id, b.name, b.size)
                ).all()
        except DBIntegrityError:
            report.blocks_skipped_in_use += len(batch)
            continue
        report.blocks_skipped_in_use += len(batch) - len(gone)
        for row in gone:
            # (Whether it is inline comes from the look-up: SQLite 3.40 answered
            # ``inline_data IS NOT NULL`` wrongly in this DELETE's RETURNING.)
            if row.id not in inline:  # an inline block's object went with its row
                backend.delete(row.name)
            report.blocks_deleted += 1
            report.bytes_freed += row.size
    report.orphan_objects_deleted = _sweep_orphans(db, backend, cutoff)
    return report


def _known_names(db: Database) -> set[str]:
    """Objects something refers to: blocks, and upload sessions' tails."""
    with db.read() as conn:
        names = set(conn.execute(select(b.name)).scalars())
        names.update(_tail_names(conn))
        return names


def _tail_names(conn: Any) -> set[str]:
    s = t.upload_sessions.c
    return set(conn.execute(select(s.tail_name).where(s.tail_name.is_not(None))).scalars())


def _sweep_orphans(db: Database, backend: Backend, cutoff: float) -> int:
    listed = [info for info in backend.list("") if info.mtime < cutoff]
    if not listed:
        return 0
    known = _known_names(db)
    deleted = 0
    for info in listed:
        if info.name not in known:
            backend.delete(info.name)
            deleted += 1
    return deleted


def check(db: Database, store: BlockStore, accounts: Accounts, *, deep: bool) -> FsckReport:
    report = FsckReport()
    problems = report.problems
    n, v, vb = t.nodes.c, t.versions.c, t.version_blocks.c
    with db.read() as conn:
        for account_id in conn.execute(select(t.accounts.c.id)).scalars():
            try:
                accounts.context(account_id)
            except IntegrityError as exc:
                problems.append(f"account {account_id}: key does not unwrap: {exc}")
        rows = conn.execute(select(b.id, b.account_id, b.name, b.sha256, b.size, _IS_INLINE)).all()
        stored = {info.name: info.size for info in store.backend.list("")}
        for row in rows:
            if not row.is_inline and row.name not in stored:
                problems.append(f"block {row.id}: object {row.name} is missing")
        known = {row.name for row in rows} | _tail_names(conn)
        report.orphan_objects = sum(1 for name in stored if name not in known)
        report.unreferenced_blocks = conn.execute(
            select(func.count()).select_from(t.blocks).where(_unreferenced())
        ).scalar_one()
        # Every version's block list is contiguous and adds up to its size.
        totals = conn.execute(
            select(
                v.id,
                v.size,
                v.block_count,
                func.count(vb.idx),
                func.coalesce(func.sum(b.size), 0),
                func.min(vb.offset),
            )
            .select_from(
                t.versions.outerjoin(t.version_blocks, vb.version_id == v.id).outerjoin(
                    t.blocks, b.id == vb.block_id
                )
            )
            .group_by(v.id, v.size, v.block_count)
        ).all()
        for vid, size, count, n_blocks, total, first in totals:
            report.versions_checked += 1
            if n_blocks != count or total != size or (n_blocks and first != 0):
                problems.append(
                    f"version {vid}: block list does not add up ({n_blocks} blocks, {total} of {size} bytes)"
                )
        nxt = t.version_blocks.alias("nxt")
        gaps = conn.execute(
            select(vb.version_id, vb.idx)
            .select_from(t.version_blocks.join(t.blocks, b.id == vb.block_id))
            .where(
                exists().where(
                    and_(
                        nxt.c.version_id == vb.version_id,
                        nxt.c.idx == vb.idx + 1,
                        nxt.c.offset != vb.offset + b.size,
                    )
                )
            )
        ).all()
        problems.extend(f"version {r.version_id}: gap after block {r.idx}" for r in gaps)
        bad_nodes = conn.execute(
            select(n.id, n.path)
            .select_from(t.nodes.outerjoin(t.versions, v.id == n.version_id))
            .where(
                n.kind == t.KIND_FILE,
                n.version_id.is_not(None),
                (v.id.is_(None)) | (v.node_id != n.id) | (v.size != n.size),
            )
        ).all()
        problems.extend(
            f"node {r.id} ({r.path!r}): current version is missing or disagrees" for r in bad_nodes
        )
        ver = t.versions.c
        usage = conn.execute(
            select(t.accounts.c.id, t.accounts.c.used_bytes, func.coalesce(func.sum(ver.size), 0))
            .select_from(t.accounts.outerjoin(t.versions, ver.account_id == t.accounts.c.id))
            .group_by(t.accounts.c.id, t.accounts.c.used_bytes)
        ).all()
        problems.extend(
            f"account {aid}: recorded usage {used} != {actual} bytes of retained versions"
            for aid, used, actual in usage
            if used != actual
        )
    if deep:
        for i in range(0, len(rows), _BATCH):
            batch = rows[i : i + _BATCH]
            # Inline objects are read a batch at a time, not all at once nor one query each.
            inline_ids = [row.id for row in batch if row.is_inline]
            inline: dict[int, bytes] = {}
            if inline_ids:
                with db.read() as conn:
                    query = select(b.id, b.inline_data).where(b.id.in_(inline_ids))
                    inline = {r.id: r.inline_data for r in conn.execute(query)}
            for row in batch:
                if row.is_inline and row.id not in inline:
                    continue  # collected meanwhile
                if not row.is_inline and row.name not in stored:
                    continue
                report.blocks_checked += 1
                try:
                    keys = accounts.context(row.account_id).keys
                    store.fetch(
                        keys, row.name, bytes(row.sha256), row.size, rehash=True, inline=inline.get(row.id)
                    )
                except (IntegrityError, NotFound) as exc:
                    problems.append(f"block {row.id} ({row.name}): {exc}")
    return report


def stats(db: Database) -> Stats:
    n, v = t.nodes.c, t.versions.c
    with db.read() as conn:
        accounts = conn.execute(select(func.count()).select_from(t.accounts)).scalar_one()
        files, folders, current = conn.execute(
            select(
                func.count().filter(n.kind == t.KIND_FILE),
                func.count().filter(n.kind == t.KIND_DIR, n.path != ""),
                func.coalesce(func.sum(n.size), 0),
            ).where(n.deleted_at.is_(None))
        ).one()
        versions, logical = conn.execute(select(func.count(), func.coalesce(func.sum(v.size), 0))).one()
        blocks, unique, stored = conn.execute(
            select(
                func.count(), func.coalesce(func.sum(b.size), 0), func.coalesce(func.sum(b.stored_size), 0)
            )
        ).one()
    return Stats(
        accounts, files, folders, versions, int(logical), int(current), int(unique), int(stored), blocks
    )
