"""The metadata cache: folder listings, their dead properties and block lists.

Strong consistency comes from the keys, not from invalidation. A listing is
cached under the account's change sequence (``accounts.change_seq``, the
generation every committing transaction raises *inside* its own transaction),
read from the database just before the listing itself; so an entry holds the
state at that generation or a newer one, and once a commit is visible the next
reader asks for a key that no earlier state was stored under. A block list
belongs to a version, and versions never change, so it is keyed by version id
alone.

Why the generation is read from the database rather than kept in Redis: a
generation kept in Redis has to be bumped after the commit, and a node that
cannot reach Redis at that moment (a partition of that node only) would leave
every other node serving the old listing from the old generation. Reading it
from the database costs one primary-key look-up per request and cannot be
missed; what the cache saves is the expensive part (listing thousands of rows,
a 10 GB file's block list).

Backends: :class:`LocalCache` (in-process LRU, the embedded default) and
:class:`RedisCache` (shared by all nodes). Redis errors never fail a request: the
cache is bypassed for a few seconds and then tried again. Values are JSON, so a
writable Redis cannot make a node execute anything.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from storage.model import Entry
from storage.reader import BlockLocation

log = logging.getLogger("davserver.cache")

#: Entries of old generations are left to expire; a live generation is read again and again.
TTL_SECONDS = 600


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    #: Look-ups that did not use the cache because its backend was failing.
    bypassed: int = 0
    errors: int = 0


class Cache:
    """The interface: bytes by key; a miss and a failing backend both answer None."""

    def __init__(self) -> None:
        self.stats = CacheStats()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def set(self, key: str, value: bytes) -> None:
        raise NotImplementedError

    def shared_stats(self) -> CacheStats | None:
        """Counters of every node (Redis), or None where they are this process's only."""
        return None

    def close(self) -> None:
        return None

    def _count(self, field: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.stats, field, getattr(self.stats, field) + n)

    # -- typed helpers -----------------------------------------------------------------

    def _decoded(self, key: str, decode: Callable[[Any], Any]) -> Any:
        """The cached value decoded, or None (a miss; also for a value this code cannot read)."""
        return self._parse(key, self.get(key), decode)

    @staticmethod
    def _parse(key: str, raw: bytes | None, decode: Callable[[Any], Any]) -> Any:
        if raw is None:
            return None
        try:
            return decode(json.loads(raw))
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("ignored an unreadable metadata cache entry %s", key)
            return None

    def _keep(self, key: str, value: Any, doc: Callable[[], Any], size: int) -> None:
        """Store ``value`` (``doc()`` is its JSON form; ``size`` an estimate of its bytes)."""
        self.set(key, json.dumps(doc(), separators=(",", ":")).encode())

    def listing(
        self, account_id: int, generation: int, path: str, load: Callable[[], list[Entry]]
    ) -> list[Entry]:
        key = f"ls:{account_id}:{generation}:{path}"
        cached = self._decoded(key, lambda docs: [_entry(doc) for doc in docs])
        if cached is not None:
            return list(cached)
        entries = load()
        self._keep(key, entries, lambda: [_entry_doc(e) for e in entries], 64 + 192 * len(entries))
        return list(entries)

    def properties(
        self, account_id: int, generation: int, path: str, load: Callable[[], dict[int, dict[str, str]]]
    ) -> dict[int, dict[str, str]]:
        key = f"pr:{account_id}:{generation}:{path}"
        cached = self._decoded(key, lambda doc: {int(k): dict(v) for k, v in doc.items()})
        if cached is None:
            cached = load()
            size = 64 + sum(32 + sum(len(k) + len(v) for k, v in p.items()) for p in cached.values())
            self._keep(key, cached, lambda: cached, size)
        return {node: dict(props) for node, props in cast(dict[int, dict[str, str]], cached).items()}

    def blocks(self, version_id: int, load: Callable[[], list[BlockLocation]]) -> list[BlockLocation]:
        key = f"bl:{version_id}"
        cached = self._decoded(key, lambda docs: [_block(doc) for doc in docs])
        if cached is not None:
            return list(cached)
        blocks = load()
        self._keep(
            key,
            blocks,
            lambda: [_block_doc(b) for b in blocks],
            64 + sum(160 + len(b.inline or b"") for b in blocks),
        )
        return list(blocks)


class NoCache(Cache):
    def get(self, key: str) -> bytes | None:
        return None

    def set(self, key: str, value: bytes) -> None:
        return None


class LocalCache(Cache):
    """An LRU bounded by the bytes it holds (one process: the embedded default).

    Listings, properties and block lists are kept as the objects themselves (their
    elements are immutable; callers get a fresh outer list or dict), not as JSON:
    decoding a block list on every GET of a small file cost more than the look-up.
    Their size is an estimate of the objects' bytes.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self._max = max_bytes
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._size = 0

    def _lookup(self, key: str) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.stats.misses += 1
                return None
            self._items.move_to_end(key)
            self.stats.hits += 1
            return item[0]

    def _store(self, key: str, value: Any, size: int) -> None:
        if size > self._max // 8:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= old[1]
            self._items[key] = (value, size)
            self._size += size
            while self._size > self._max:
                _, (_, dropped) = self._items.popitem(last=False)
                self._size -= dropped

    def get(self, key: str) -> bytes | None:
        value = self._lookup(key)
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes) -> None:
        self._store(key, value, len(value))

    def _decoded(self, key: str, decode: Callable[[Any], Any]) -> Any:
        value = self._lookup(key)
        return self._parse(key, value, decode) if isinstance(value, bytes) else value

    def _keep(self, key: str, value: Any, doc: Callable[[], Any], size: int) -> None:
        self._store(key, value, size)


class RedisCache(Cache):
    """Shared by every node; on any Redis error the cache is bypassed for ``pause`` seconds."""

    def __init__(self, url: str, *, namespace: str, pause: float = 5.0, max_value: int = 8 << 20) -> None:
        super().__init__()
        self._ns = namespace
        self._counters = f"{namespace}:cache:stats"
        import redis

        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client: Any = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._pause = pause
        self._max_value = max_value
        self._down_until = 0.0

    def _usable(self) -> bool:
        if time.monotonic() < self._down_until:
            self._count("bypassed")
            return False
        return True

    def _failed(self, exc: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            log.warning("metadata cache bypassed for %.0f s: Redis failed (%s)", self._pause, exc)
        self._down_until = time.monotonic() + self._pause
        self._count("errors")

    def get(self, key: str) -> bytes | None:
        if not self._usable():
            return None
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.get(f"{self._ns}:{key}")
            pipe.hincrby(self._counters, "lookups", 1)
            value, _ = pipe.execute()
        except self._errors as exc:
            self._failed(exc)
            return None
        self._count("hits" if value is not None else "misses")
        return None if value is None else bytes(value)

    def set(self, key: str, value: bytes) -> None:
        if len(value) > self._max_value or not self._usable():
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(f"{self._ns}:{key}", value, ex=TTL_SECONDS)
            pipe.hincrby(self._counters, "misses", 1)
            pipe.execute()
        except self._errors as exc:
            self._failed(exc)

    def shared_stats(self) -> CacheStats | None:
        try:
            raw = self._client.hgetall(self._counters)
        except self._errors:
            return None
        counts = {k.decode(): int(v) for k, v in raw.items()}
        lookups, misses = counts.get("lookups", 0), counts.get("misses", 0)
        return CacheStats(hits=max(0, lookups - misses), misses=misses)

    def close(self) -> None:
        self._client.close()


def open_cache(redis_url: str | None, local_bytes: int, *, namespace: str = "davserver") -> Cache:
    """``namespace`` prefixes every key: deployments sharing one Redis need different ones."""
    if redis_url:
        return RedisCache(redis_url, namespace=namespace)
    if local_bytes > 0:
        return LocalCache(local_bytes)
    return NoCache()


def _entry_doc(e: Entry) -> list[Any]:
    return [
        e.node_id,
        e.path,
        e.name,
        e.is_dir,
        e.size,
        e.mtime,
        e.created_at,
        e.version_id,
        None if e.sha256 is None else e.sha256.hex(),
    ]


def _entry(doc: list[Any]) -> Entry:
    node_id, path, name, is_dir, size, mtime, created_at, version_id, sha = doc
    return Entry(
        node_id,
        path,
        name,
        is_dir,
        size,
        mtime,
        created_at,
        version_id,
        None if sha is None else bytes.fromhex(sha),
    )


def _block_doc(b: BlockLocation) -> list[Any]:
    doc: list[Any] = [b.offset, b.size, b.name, b.sha256.hex()]
    if b.inline is not None:
        doc.append(b.inline.hex())
    return doc


def _block(doc: list[Any]) -> BlockLocation:
    offset, size, name, sha = doc[:4]
    inline = bytes.fromhex(doc[4]) if len(doc) > 4 else None
    return BlockLocation(offset, size, name, bytes.fromhex(sha), inline)
