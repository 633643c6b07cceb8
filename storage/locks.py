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
#: One record by token, and the writes of one record. Prepared: a mounted drive's client
#: (davfs2, Finder, Windows) locks and unlocks every file it writes, and these built through
#: SQLAlchemy cost ~1 ms of Python each (a LOCK + UNLOCK pair ran four).
_LIVE = or_(c.expire < 0, c.expire >= bindparam("b_now"))
_GET = Prepared(select(c.data).where(c.token == bindparam("b_token"), _LIVE))
_DELETE = Prepared(delete(t.lock_records).where(c.token == bindparam("b_token")))
_INSERT = Prepared(insert(t.lock_records), keys=("token", "root", "data", "expire"))
_UPDATE = Prepared(
    update(t.lock_records)
    .where(c.token == bindparam("b_token"), _LIVE)
    .values(data=bindparam("b_data"), expire=bindparam("b_expire"))
)


class LockRecords:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    def get(self, token: str) -> dict[str, Any] | None:
        with self._db.read(snapshot=False) as conn:
            row = _GET.first(conn, {"b_token": token, "b_now": self._clock()})
        return None if row is None else dict(json.loads(row.data))

    def put(self, token: str, root: str, data: dict[str, Any], expire: float) -> None:
        with self._db.write() as conn:
            _DELETE.execute(conn, {"b_token": token})
            _INSERT.execute(conn, {"token": token, "root": root, "data": json.dumps(data), "expire": expire})

    def update(self, token: str, data: dict[str, Any], expire: float) -> bool:
        params = {"b_token": token, "b_now": self._clock(), "b_data": json.dumps(data), "b_expire": expire}
        with self._db.write() as conn:
            return bool(_UPDATE.execute(conn, params).rowcount)

    def delete(self, token: str) -> bool:
        with self._db.write() as conn:
            return bool(_DELETE.execute(conn, {"b_token": token}).rowcount)

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
