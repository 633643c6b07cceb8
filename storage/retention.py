"""Retention: keep the versions that matter, let the rest go.

Every version is kept for a first window (``keep_all_seconds``). Older ones are
thinned by age: within each tier, one version per bucket survives (the newest of
its bucket), e.g. one per minute for the first hour, one per hour for the first
day, one per day for 30 days, one per week after that. ``max_versions`` and
``max_age_seconds`` bound what remains. A file's current version and the versions
a user pinned are never removed. Trash items older than ``trash_seconds`` are
purged.

The decision (:func:`versions_to_drop`) is a pure function of the versions and
the clock, so it is tested with an injected time; :func:`apply` runs it over an
account's files in short transactions. Removing a version removes its block
list and gives its size back to the account's quota; blocks no version
references any more are reclaimed by garbage collection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sqlalchemy import delete, select

from storage import tree
from storage.metadata import schema as t
from storage.metadata.db import Database

MINUTE, HOUR, DAY, WEEK = 60.0, 3600.0, 86400.0, 7 * 86400.0


@dataclass(frozen=True)
class RetentionPolicy:
    keep_all_seconds: float = 10 * MINUTE
    #: (tier ends at this age, one version per this many seconds), by increasing age.
    tiers: tuple[tuple[float, float], ...] = ((HOUR, MINUTE), (DAY, HOUR), (30 * DAY, DAY))
    #: Past the last tier: one version per this many seconds.
    beyond: float = WEEK
    max_versions: int | None = None
    max_age_seconds: float | None = None
    trash_seconds: float | None = 30 * DAY

    def with_overrides(self, overrides: Mapping[str, Any]) -> RetentionPolicy:
        """This policy with an account's own settings (unknown keys are refused)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown retention settings: {', '.join(unknown)}")
        values = dict(overrides)
        if "tiers" in values:
            values["tiers"] = tuple((float(a), float(b)) for a, b in values["tiers"])
        return replace(self, **values)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class VersionInfo:
    id: int
    created_at: float
    pinned: bool = False


def versions_to_drop(
    versions: Iterable[VersionInfo], current: int | None, policy: RetentionPolicy, now: float
) -> set[int]:
    """The ids of ``versions`` (one file's) that the policy does not keep."""
    ordered = sorted(versions, key=lambda v: (v.created_at, v.id), reverse=True)
    protected = {v.id for v in ordered if v.pinned or v.id == current}
    kept: list[VersionInfo] = []
    seen_buckets: set[tuple[int, int]] = set()
    for v in ordered:
        age = now - v.created_at
        if v.id in protected:
            kept.append(v)
            continue
        if policy.max_age_seconds is not None and age > policy.max_age_seconds:
            continue
        if age < policy.keep_all_seconds:
            kept.append(v)
            continue
        bucket = _bucket(policy, age, v.created_at)
        if bucket not in seen_buckets:
            seen_buckets.add(bucket)
            kept.append(v)
    if policy.max_versions is not None and len(kept) > policy.max_versions:
        removable = [v for v in kept if v.id not in protected]
        excess = len(kept) - max(policy.max_versions, len(protected))
        for v in removable[::-1][: max(excess, 0)]:  # the oldest first
            kept.remove(v)
    kept_ids = {v.id for v in kept}
    return {v.id for v in ordered if v.id not in kept_ids}


def _bucket(policy: RetentionPolicy, age: float, created_at: float) -> tuple[int, int]:
    for index, (until, size) in enumerate(policy.tiers):
        if age < until:
            return index, int(created_at // size)
    return len(policy.tiers), int(created_at // policy.beyond)


@dataclass
class RetentionReport:
    versions_removed: int = 0
    trash_nodes_purged: int = 0
    files_examined: int = 0
    accounts: list[str] = field(default_factory=list)


def apply(
    db: Database, account_id: int, policy: RetentionPolicy, now: float, report: RetentionReport
) -> None:
    """One pass over an account: thin every file's versions, purge old trash."""
    n, v = t.nodes.c, t.versions.c
    with db.read() as conn:
        rows = conn.execute(
            select(v.id, v.node_id, v.created_at, v.pinned, n.version_id)
            .join(t.nodes, n.id == v.node_id)
            .where(v.account_id == account_id)
            .order_by(v.node_id)
        ).all()
    by_node: dict[int, tuple[int | None, list[VersionInfo]]] = {}
    for r in rows:
        by_node.setdefault(r.node_id, (r.version_id, []))[1].append(
            VersionInfo(r.id, r.created_at, bool(r.pinned))
        )
    drop: list[int] = []
    for current, versions in by_node.values():
        report.files_examined += 1
        if len(versions) > 1:
            drop.extend(versions_to_drop(versions, current, policy, now))
    for i in range(0, len(drop), 500):
        batch = drop[i : i + 500]
        with db.write() as conn:
            # The current version is re-checked in the delete: a write may have moved it meanwhile.
            current_ids = select(n.version_id).where(n.account_id == account_id, n.version_id.is_not(None))
            tree.mark_released(conn, batch, now)  # a few kept after all are merely stamped
            gone = conn.execute(
                delete(t.versions)
                .where(
                    v.id.in_(batch), v.account_id == account_id, v.pinned.is_(False), v.id.not_in(current_ids)
                )
                .returning(v.size)
            ).all()
            tree.release(conn, account_id, sum(int(r.size) for r in gone))
        report.versions_removed += len(gone)
