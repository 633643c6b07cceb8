"""The archive tier: blocks nobody read for a while move to a second, cheaper store.

Reads are tracked cheaply: the block store notes the names it fetched in memory
(:class:`ReadTracker`) and the server writes them out as one UPDATE every few
minutes, not a database write per read. ``blocks.last_read_at`` is therefore a
lower bound (a read in the last minutes before a crash is forgotten, which can
only make a block look colder by that much).

Moving a block: copy the object to the archive, mark the row ``MOVING``, delete
it from the hot store, mark it ``ARCHIVE``. Reads go through
:class:`~storage.backends.tiered.TieredBackend`, which falls through to the
archive, so the block stays readable through every step; a crash after the first
mark leaves a row ``MOVING`` (and perhaps a hot copy), which the next pass finishes
-- only those rows are looked at again, not the whole archive.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import and_, func, select, update

from storage.backends.base import Backend
from storage.errors import NotFound
from storage.metadata import schema as t
from storage.metadata.db import Database

HOT, ARCHIVE, MOVING = 0, 1, 2
#: Not a tier of the ``tier`` column: bytes_per_tier's key for blocks kept in their rows.
INLINE = -1
b = t.blocks.c


class ReadTracker:
    """Names of blocks read since the last flush (bounded: past the cap, reads go unrecorded)."""

    def __init__(self, cap: int = 200_000) -> None:
        self._names: set[str] = set()
        self._lock = threading.Lock()
        self._cap = cap

    def read(self, name: str) -> None:
        if len(self._names) < self._cap:
            with self._lock:
                self._names.add(name)

    def flush(self, db: Database, now: float) -> int:
        """Record the reads in the database; returns how many blocks were touched."""
        with self._lock:
            names, self._names = self._names, set()
        done = 0
        names_list = sorted(names)
        for i in range(0, len(names_list), 500):
            with db.write() as conn:
                done += conn.execute(
                    update(t.blocks).where(b.name.in_(names_list[i : i + 500])).values(last_read_at=now)
                ).rowcount
        return done


@dataclass
class TierReport:
    blocks_moved: int = 0
    bytes_moved: int = 0
    #: Blocks of an earlier, interrupted pass whose hot copy was still there.
    finished: int = 0


def move_cold_blocks(
    db: Database, hot: Backend, archive: Backend, *, cold_before: float, limit: int | None = None
) -> TierReport:
    report = TierReport()
    with db.read() as conn:
        # Moves a crash interrupted: the archive copy exists, a hot copy may still too.
        leftovers = conn.execute(select(b.id, b.name).where(b.tier == MOVING)).all()
        last_read = func.coalesce(b.last_read_at, b.created_at)
        # Inline blocks live in their rows: there is no object to move.
        query = select(b.id, b.name, b.stored_size).where(
            and_(b.tier == HOT, last_read < cold_before, b.inline_data.is_(None))
        )
        cold = conn.execute(query.order_by(b.id).limit(limit)).all()
    for block_id, name in leftovers:
        hot.delete(name)
        _mark(db, block_id, MOVING, ARCHIVE)
        report.finished += 1
    for row in cold:
        try:
            data = hot.get(row.name)
        except NotFound:
            continue  # deleted by gc meanwhile, or moved by another pass
        archive.put(row.name, data)
        with db.write() as conn:
            moved = conn.execute(
                update(t.blocks)
                .where(b.id == row.id, b.tier == HOT, func.coalesce(b.last_read_at, 0) < cold_before)
                .values(tier=MOVING)
            ).rowcount
        if moved:
            hot.delete(row.name)
            _mark(db, row.id, MOVING, ARCHIVE)
            report.blocks_moved += 1
            report.bytes_moved += row.stored_size
        elif _tier(db, row.id) not in (ARCHIVE, MOVING):
            # Read meanwhile (it stays hot) or collected: the copy is not needed. When
            # another pass archived it first, that copy is the block's only one: kept.
            archive.delete(row.name)
    return report


def _mark(db: Database, block_id: int, old: int, new: int) -> None:
    with db.write() as conn:
        conn.execute(update(t.blocks).where(b.id == block_id, b.tier == old).values(tier=new))


def _tier(db: Database, block_id: int) -> int | None:
    with db.read() as conn:
        tier = conn.execute(select(b.tier).where(b.id == block_id)).scalar()
    return None if tier is None else int(tier)


def bytes_per_tier(db: Database) -> dict[int, tuple[int, int]]:
    """{tier: (blocks, stored bytes)}; blocks being moved count as archived, and blocks kept
    in their metadata rows as :data:`INLINE`."""
    inline = b.inline_data.is_not(None).label("inline")
    with db.read() as conn:
        rows = conn.execute(
            select(b.tier, inline, func.count(), func.coalesce(func.sum(b.stored_size), 0)).group_by(
                b.tier, inline
            )
        ).all()
    tiers: dict[int, tuple[int, int]] = {}
    for tier, is_inline, count, size in rows:
        key = INLINE if is_inline else ARCHIVE if tier == MOVING else int(tier)
        before = tiers.get(key, (0, 0))
        tiers[key] = (before[0] + int(count), before[1] + int(size))
    return tiers
