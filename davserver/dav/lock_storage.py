"""WsgiDAV lock storage on the metadata database (storage.locks.LockRecords), and
WsgiDAV's Redis lock storage made safe to run against a Redis that can go away.

Locks survive restarts and, on PostgreSQL, are seen by every node. The
semantics follow WsgiDAV's ``LockStorageDict`` (which the lock manager is
written against): normalised roots, capped timeouts, expired locks invisible.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from wsgidav.lock_man.lock_manager import generate_lock_token, normalize_lock_root, validate_lock
from wsgidav.lock_man.lock_storage import LockStorageDict
from wsgidav.lock_man.lock_storage_redis import LockStorageRedis

from storage.errors import BackendUnavailable
from storage.locks import LockRecords


class SqlLockStorage:
    LOCK_TIME_OUT_DEFAULT = LockStorageDict.LOCK_TIME_OUT_DEFAULT
    LOCK_TIME_OUT_MAX = LockStorageDict.LOCK_TIME_OUT_MAX

    def __init__(self, records: LockRecords) -> None:
        self._records = records
        self._local = threading.local()
        #: Bumped whenever this process writes a lock record: a snapshot loaded before
        #: then reloads on its next look-up.
        self.generation = 0
        self._generation_lock = threading.Lock()

    @contextmanager
    def snapshot(self, root: str) -> Iterator[None]:
        """Answer lock-list lookups at or around ``root`` from one query, for one request.

        WsgiDAV asks for the locks of a resource and of each parent, one query
        each; a PROPFIND asks for every member. The query runs on the first
        look-up, so requests that check no locks pay nothing. A lock created,
        refreshed or deleted in this process after the query (by this request,
        or by another: a LOCK granted while a PUT was checking) makes the next
        look-up query again. The checks that decide a write or a lock run
        under WsgiDAV's lock-manager lock, so they see every lock this process
        granted before them; across nodes, locks are as safe as WsgiDAV makes
        them (its write-in-progress guard is per process).
        """
        self._local.snapshot = _Snapshot(normalize_lock_root(root), self)
        try:
            yield
        finally:
            self._local.snapshot = None

    def __repr__(self) -> str:
        return "SqlLockStorage()"

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def cleanup(self) -> None:
        self._records.purge_expired()

    def clear(self) -> None:
        self._records.clear()

    def get(self, token: str) -> dict[str, Any] | None:
        return _decode(self._records.get(token))

    def create(self, path: str, lock: dict[str, Any]) -> dict[str, Any]:
        assert lock.get("token") is None and lock.get("expire") is None
        lock["root"] = normalize_lock_root(path)
        timeout = lock.get("timeout")
        timeout = self.LOCK_TIME_OUT_DEFAULT if timeout is None else float(timeout)
        if timeout < 0 or timeout > self.LOCK_TIME_OUT_MAX:
            timeout = self.LOCK_TIME_OUT_MAX
        lock["timeout"] = timeout
        lock["expire"] = time.time() + timeout
        validate_lock(lock)
        lock["token"] = generate_lock_token()
        self._records.put(lock["token"], lock["root"], _encode(lock), lock["expire"])
        self._changed()
        return lock

    def _changed(self) -> None:
        with self._generation_lock:
            self.generation += 1

    def find(self, root: str) -> list[dict[str, Any]]:
        """Live locks filed at ``root`` or below it (what a snapshot loads)."""
        return [_decode(lock) for lock in self._records.find(root, include_root=True, include_below=True)]

    def refresh(self, token: str, *, timeout: float) -> dict[str, Any]:
        lock = _decode(self._records.get(token))
        if lock is None:
            raise ValueError("lock does not exist")
        if timeout < 0 or timeout > self.LOCK_TIME_OUT_MAX:
            timeout = self.LOCK_TIME_OUT_MAX
        lock["timeout"] = timeout
        lock["expire"] = time.time() + timeout
        self._records.update(token, _encode(lock), lock["expire"])
        self._changed()
        return lock

    def delete(self, token: str) -> bool:
        deleted = self._records.delete(token)
        self._changed()
        return deleted

    def get_lock_list(
        self, path: str, *, include_root: bool, include_children: bool, token_only: bool
    ) -> list[Any]:
        path = normalize_lock_root(path)
        snap: _Snapshot | None = getattr(self._local, "snapshot", None)
        locks = snap.lookup(path, include_root, include_children) if snap is not None else None
        if locks is None:
            found = self._records.find(path, include_root=include_root, include_below=include_children)
            locks = [_decode(lock) for lock in found]
        return [lock["token"] for lock in locks] if token_only else locks


class _Snapshot:
    """The live locks filed under one root (an account's URL space), loaded once, and
    again after this process has written a lock record since."""

    def __init__(self, root: str, storage: SqlLockStorage) -> None:
        self.root = root
        self._storage = storage
        self._locks: list[dict[str, Any]] | None = None
        self._generation = -1

    def lookup(self, path: str, include_root: bool, include_children: bool) -> list[dict[str, Any]] | None:
        """The locks for ``path``, or None when the snapshot cannot answer."""
        inside = path == self.root or path.startswith(self.root + "/")
        if not inside:
            # Above the root ("/"): no lock is ever filed there, but its subtree is not all here.
            if include_children or not self.root.startswith(path.rstrip("/") + "/"):
                return None
            return []
        generation = self._storage.generation
        if self._locks is None or generation != self._generation:
            self._locks = self._storage.find(self.root)
            self._generation = generation
        below = path.rstrip("/") + "/"
        now = time.time()
        return [
            lock
            for lock in self._locks
            if (lock["expire"] < 0 or lock["expire"] >= now)
            and (
                (include_root and lock["root"] == path)
                or (include_children and lock["root"].startswith(below))
            )
        ]


# The lock owner is an XML fragment WsgiDAV keeps as bytes; records are JSON.
_BYTES = "$bytes"


def _encode(lock: dict[str, Any]) -> dict[str, Any]:
    return {k: {_BYTES: base64.b64encode(v).decode()} if isinstance(v, bytes) else v for k, v in lock.items()}


def _decode(lock: dict[str, Any] | None) -> Any:
    if lock is None:
        return None
    return {
        k: base64.b64decode(v[_BYTES]) if isinstance(v, dict) and _BYTES in v else v for k, v in lock.items()
    }


class RedisLockStorage(LockStorageRedis):
    """WsgiDAV's Redis lock storage, with timeouts, a key namespace, and Redis failures
    raised as :class:`storage.errors.BackendUnavailable` (503 with Retry-After).

    As shipped it connects with redis-py's defaults (no timeout, retries with
    backoff: ~4 s per request while Redis is down) and its connection errors
    surface as 500s.
    """

    def __init__(self, url: str, *, namespace: str) -> None:
        super().__init__()
        self._url = url
        self._redis_prefix = f"{namespace}:wsgidav-{{}}"
        self._redis_lock_prefix = self._redis_prefix.format("lock:{}")
        self._redis_url2token_prefix = self._redis_prefix.format("URL2TOKEN:{}")

    def open(self) -> None:
        self._redis = redis.Redis.from_url(
            self._url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        )

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        try:
            yield
        except (redis.RedisError, OSError) as exc:
            raise BackendUnavailable(f"the lock store (Redis) is unreachable: {exc}") from exc

    def get(self, token: str) -> Any:
        with self._guarded():
            return super().get(token)

    def create(self, path: str, lock: dict[str, Any]) -> Any:
        with self._guarded():
            return super().create(path, lock)

    def refresh(self, token: str, *, timeout: float) -> Any:
        with self._guarded():
            return super().refresh(token, timeout=timeout)

    def delete(self, token: str) -> Any:
        with self._guarded():
            return super().delete(token)

    def get_lock_list(
        self, path: str, *, include_root: bool, include_children: bool, token_only: bool
    ) -> Any:
        with self._guarded():
            return super().get_lock_list(
                path, include_root=include_root, include_children=include_children, token_only=token_only
            )

    def cleanup(self) -> None:
        with self._guarded():
            super().cleanup()

    def clear(self) -> None:
        with self._guarded():
            super().clear()
