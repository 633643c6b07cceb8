"""Lock records: opaque, expiring records keyed by token and filed under a root key.

The WebDAV face keeps its locks here (``davserver.dav.lock_storage``), so they
survive restarts and, on PostgreSQL, are shared by every node. Storage knows
nothing of lock semantics: a record is a JSON object with a root (a
``/``-separated key, compared in byte order so a subtree is a range) and an
expiry time (``-1``: never).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, or_, select, update

from storage.metadata import schema as t
from storage.metadata.db import Database
from storage.metadata.prepared import Prepared

c = t.lock_records.c


def _find_query(include_root: bool, include_below: bool) -> Any:
    conds = []
    if include_root:
        conds.append(c.root == bindparam("b_root"))
    if include_below:
        conds.append(and_(c.root > bindparam("b_low"), c.root < bindparam("b_high")))
    live = or_(c.expire < 0, c.expire >= bindparam("b_now"))
    return select(c.data).where(or_(*conds), live).order_by(c.root, c.token)


# Built once: every WebDAV write request runs one of these.
_FIND = {(r, b): Prepared(_find_query(r, b)) for r in (True, False) for b in (True, False) if r or b}


class LockRecords:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    def _live(self) -> Any:
        return or_(c.expire < 0, c.expire >= self._clock())

    def get(self, token: str) -> dict[str, Any] | None:
        with self._db.read() as conn:
            row = conn.execute(select(c.data).where(c.token == token, self._live())).first()
        return None if row is None else dict(json.loads(row.data))

    def put(self, token: str, root: str, data: dict[str, Any], expire: float) -> None:
        with self._db.write() as conn:
            conn.execute(delete(t.lock_records).where(c.token == token))
            conn.execute(
                insert(t.lock_records).values(token=token, root=root, data=json.dumps(data), expire=expire)
            )

    def update(self, token: str, data: dict[str, Any], expire: float) -> bool:
        with self._db.write() as conn:
            done = conn.execute(
                update(t.lock_records)
                .where(c.token == token, self._live())
                .values(data=json.dumps(data), expire=expire)
            ).rowcount
        return bool(done)

    def delete(self, token: str) -> bool:
        with self._db.write() as conn:
            return bool(conn.execute(delete(t.lock_records).where(c.token == token)).rowcount)

    def find(self, root: str, *, include_root: bool, include_below: bool) -> list[dict[str, Any]]:
        """Live records filed exactly at ``root`` and/or strictly below it."""
        query = _FIND.get((include_root, include_below))
        if query is None:
            return []
        below = root.rstrip("/")
        params = {"b_root": root, "b_low": below + "/", "b_high": below + "0", "b_now": self._clock()}
        with self._db.read(snapshot=False) as conn:
            rows = query.all(conn, params)
        return [dict(json.loads(r.data)) for r in rows]

    def purge_expired(self) -> int:
        now = self._clock()
        with self._db.write() as conn:
            return int(conn.execute(delete(t.lock_records).where(c.expire >= 0, c.expire < now)).rowcount)

    def clear(self) -> None:
        with self._db.write() as conn:
            conn.execute(delete(t.lock_records))
