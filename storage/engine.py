"""The storage engine: built once from a :class:`StorageConfig`, shared by every face.

It owns the database, the block backend, the worker pool and the account
service, hands out :class:`Volume` objects (one account's tree), runs
maintenance (gc, fsck, stats, key rotation) and tells subscribers about each
commit *after* it is durable, so notifications never announce uncommitted state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select

from storage import changes, retention, tiering
from storage import gc as gc_mod
from storage.accounts import Accounts
from storage.backends.base import Backend
from storage.backends.tiered import TieredBackend
from storage.backends.url import open_backend
from storage.blockstore import BlockStore
from storage.cache import open_cache
from storage.codec import Codec
from storage.config import StorageConfig
from storage.errors import IntegrityError, NotFound
from storage.keys import MasterKey
from storage.locks import LockRecords
from storage.metadata import schema as t
from storage.metadata.db import Database
from storage.metadata.migrate import ensure_schema, upgrade
from storage.model import Committed, FsckReport, GcReport, Stats
from storage.notify import Notifications
from storage.retention import RetentionReport
from storage.tiering import ReadTracker, TierReport
from storage.volume import Services, Volume

Listener = Callable[[Committed], None]
log = logging.getLogger("davserver.storage")
#: An object name no block has: a store that answers "not found" for it is up.
READINESS_PROBE = "readiness-probe"


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Engine:
    def __init__(self, config: StorageConfig, db: Database, backend: Backend) -> None:
        self.config = config
        self.db = db
        self.backend = backend
        self.codec = Codec(level=config.zstd_level)
        self.reads = ReadTracker() if isinstance(backend, TieredBackend) else None
        self.blocks = BlockStore(
            backend,
            self.codec,
            rehash_reads=config.rehash_reads,
            reads=self.reads,
            inline_bytes=config.inline_block_bytes,
        )
        self.executor = ThreadPoolExecutor(config.workers, thread_name_prefix="davserver-blocks")
        self.accounts = Accounts(db, config.master_key, config.password_hashing, config.chunker, config.clock)
        self.locks = LockRecords(db, config.clock)
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()
        #: Prefix of this deployment's Redis keys and channels: the configured one, else
        #: one from the database's deployment key, so two deployments sharing a Redis never
        #: read each other's cache entries (account, version and change numbers repeat).
        self.redis_namespace = config.redis_namespace or f"davserver:{_deployment_key(db)}"
        self.cache = open_cache(
            config.redis_url if config.metadata_cache else None,
            config.local_cache_bytes if config.metadata_cache else 0,
            namespace=self.redis_namespace,
        )
        self._services = Services(config, db, self.blocks, self.executor, self._notify, self.cache)
        #: Long-poll wake-ups (storage.notify); threads start with notifications.start().
        self.notifications = Notifications(
            db,
            redis_url=config.redis_url,
            namespace=self.redis_namespace,
            fallback_seconds=config.notify_fallback_seconds,
            safety_seconds=config.notify_safety_seconds,
        )
        self._listeners.append(self.notifications.committed)
        self._redis_probe: Any = None

    @classmethod
    def open(cls, config: StorageConfig) -> Engine:
        db = Database(config.database_url, durable=config.durable, pool_size=config.db_pool_size)
        try:
            ensure_schema(db, auto_migrate=config.auto_migrate)
            backend = open_backend(config.blocks_url, durable=config.durable)
            if config.archive_url:
                backend = TieredBackend(backend, open_backend(config.archive_url, durable=config.durable))
        except BaseException:
            db.dispose()
            raise
        return cls(config, db, backend)

    @staticmethod
    def migrate(config: StorageConfig) -> None:
        db = Database(config.database_url, durable=config.durable, pool_size=1)
        try:
            upgrade(db)
        finally:
            db.dispose()

    def close(self) -> None:
        self.notifications.close()
        # Appends already answered commit before the pool goes (a queued one would be cancelled).
        self._services.pending.close()
        self.flush_reads()
        self.cache.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._services.hash_threads.close()
        self.backend.close()
        self.db.dispose()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- volumes and notifications ---------------------------------------------------

    def volume(self, account: str | int) -> Volume:
        ctx = (
            self.accounts.context(account)
            if isinstance(account, int)
            else self.accounts.context_by_name(account)
        )
        return Volume(ctx, self._services)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(committed)`` after every commit; returns an unsubscribe.

        Listeners run on the committing thread before the write returns: they must
        be quick and must not raise (an error is logged; the commit stands).
        """
        with self._listeners_lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._listeners_lock:
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, committed: Committed) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(committed)
            except Exception:
                log.exception("a commit listener failed")

    # -- readiness -------------------------------------------------------------------

    def readiness(self) -> dict[str, str]:
        """What this node needs, checked now: ``ok``, ``down: <why>`` or ``off`` (not configured).

        The node can serve when the database and the block store answer; Redis only makes
        it faster and shares state between nodes (without it the node stays correct).
        """
        out = {"database": "ok", "blocks": "ok", "redis": "off"}
        try:
            with self.db.read() as conn:
                conn.execute(select(1))
        except Exception as exc:  # any failure is an answer here, not an error
            out["database"] = f"down: {_reason(exc)}"
        try:
            self.backend.stat(READINESS_PROBE)
        except NotFound:
            pass  # the store answered
        except Exception as exc:
            out["blocks"] = f"down: {_reason(exc)}"
        if self.config.redis_url:
            out["redis"] = self._ping_redis()
        return out

    def _ping_redis(self) -> str:
        import redis

        if self._redis_probe is None:
            self._redis_probe = redis.Redis.from_url(
                self.config.redis_url or "", socket_timeout=1, socket_connect_timeout=1
            )
        try:
            self._redis_probe.ping()
        except (redis.RedisError, OSError) as exc:
            return f"down: {_reason(exc)}"
        return "ok"

    # -- maintenance -----------------------------------------------------------------

    def delete_account(self, name: str) -> None:
        """Delete an account, its metadata and every stored object of it."""
        account_id = self.accounts.delete(name)
        for info in self.backend.list(f"{account_id}/"):
            self.backend.delete(info.name)

    def gc(self, *, now: float | None = None, grace_seconds: float | None = None) -> GcReport:
        self.locks.purge_expired()
        return gc_mod.collect(
            self.db,
            self.backend,
            now=self.config.clock() if now is None else now,
            grace=self.config.gc_grace_seconds if grace_seconds is None else grace_seconds,
        )

    def apply_retention(self, *, now: float | None = None) -> RetentionReport:
        """Thin every account's old versions and purge its old trash, by policy."""
        now = self.config.clock() if now is None else now
        report = RetentionReport()
        for account_id, overrides in self.accounts.retention_overrides().items():
            policy = self.config.retention.with_overrides(overrides)
            retention.apply(self.db, account_id, policy, now, report)
            if policy.trash_seconds is not None:
                purged = self.volume(account_id).purge_trash(deleted_before=now - policy.trash_seconds)
                report.trash_nodes_purged += purged
        return report

    def compact_journal(self, *, now: float | None = None) -> int:
        """Drop change-journal entries past their retention; cursors older than that reset."""
        if self.config.journal_seconds is None:
            return 0
        now = self.config.clock() if now is None else now
        with self.db.write() as conn:
            return changes.compact(conn, now - self.config.journal_seconds)

    # -- the archive tier (storage.tiering) -------------------------------------------

    def flush_reads(self) -> int:
        """Record the blocks read since the last flush (the server calls this every few minutes)."""
        if self.reads is None:
            return 0
        return self.reads.flush(self.db, self.config.clock())

    def tier(self, *, days: float | None = None, limit: int | None = None) -> TierReport:
        """Move blocks not read for ``days`` (default: the config's) to the archive store."""
        if not isinstance(self.backend, TieredBackend):
            raise ValueError("no archive store is configured (archive_url, DAVSERVER_ARCHIVE_URL)")
        self.flush_reads()
        days = self.config.archive_after_days if days is None else days
        cold_before = self.config.clock() - days * 86400
        return tiering.move_cold_blocks(
            self.db, self.backend.hot, self.backend.archive, cold_before=cold_before, limit=limit
        )

    def bytes_per_tier(self) -> dict[int, tuple[int, int]]:
        return tiering.bytes_per_tier(self.db)

    def fsck(self, *, deep: bool = False) -> FsckReport:
        return gc_mod.check(self.db, self.blocks, self.accounts, deep=deep)

    def stats(self) -> Stats:
        return gc_mod.stats(self.db)

    def rotate_master_key(self, new_key: MasterKey) -> int:
        return self.accounts.rotate_master_key(new_key)


def _deployment_key(db: Database) -> str:
    with db.read() as conn:
        key = conn.execute(select(t.deployment.c.key).where(t.deployment.c.id == 1)).scalar()
    if key is None:
        raise IntegrityError("the metadata database has no deployment key (table 'deployment', row 1)")
    return str(key)
