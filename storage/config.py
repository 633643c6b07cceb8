"""Settings of the storage engine: plain values, built by the caller.

Nothing here reads the environment or files; ``davserver.config`` (the one
config loader) does that and hands a :class:`StorageConfig` to
:meth:`storage.engine.Engine.open`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from storage.chunker import ChunkerParams
from storage.keys import MasterKey
from storage.retention import RetentionPolicy

GiB = 1 << 30


@dataclass(frozen=True)
class PasswordHashing:
    """argon2id cost; tests pass weak values instead of flipping a global switch."""

    time_cost: int = 3
    memory_cost_kib: int = 64 * 1024
    parallelism: int = 2


@dataclass(frozen=True)
class StorageConfig:
    database_url: str
    blocks_url: str
    master_key: MasterKey
    #: fsync blocks and commit with synchronous=FULL before a write returns.
    durable: bool = True
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    zstd_level: int = 1
    #: Blocks whose sealed object is at most this many bytes are kept in their metadata row,
    #: written in the commit's own transaction, instead of as an object in the block store
    #: (0: never). A small file then costs no file creation, no extra fsync, no S3 request.
    inline_block_bytes: int = 32 << 10
    #: Re-hash every block read with SHA-256 on top of the AES-GCM check (fsck --deep always does).
    rehash_reads: bool = False
    max_file_size: int = 10 * GiB
    #: threads hashing, compressing, encrypting and storing blocks (shared by all writes).
    workers: int = 3
    #: blocks in flight per write; bounds memory at depth * max block size.
    pipeline_depth: int = 6
    #: pin blocks of a long write in the database every this many bytes.
    pin_every_bytes: int = 64 << 20
    #: unreferenced blocks younger than this are never collected.
    gc_grace_seconds: float = 6 * 3600
    #: bytes of blocks an account may have uploaded through the block API and not yet
    #: committed (within the gc grace), on top of its quota's room: bounds what a client
    #: can park on the server without ever committing a file.
    max_pending_block_bytes: int = 20 * GiB
    #: a streaming write's lease; refreshed while data arrives.
    write_lease_seconds: float = 3600
    #: an upload session (tus, resumable) expires this long after its last data.
    upload_session_seconds: float = 7 * 86400
    #: Answer an append that does not end its upload once its data is stored, and make it
    #: durable and commit it while the client sends the next one (storage.uploads). Needs
    #: every request of a session to reach this process: None (the default) turns it on
    #: exactly when there is no Redis, i.e. no other node.
    pipelined_appends: bool | None = None
    #: Pipelined appends of one session are made durable and committed together, one sync
    #: and one transaction, once they hold this many bytes (or sooner: see the next field,
    #: a status request, the last append, closing the engine). What a crash can lose of
    #: the data answered: a client resends at most this much, from the offset it is told.
    append_commit_bytes: int = 64 << 20
    #: ... and at the latest this long after the first of them was answered.
    append_commit_seconds: float = 1.0
    #: change-journal entries older than this are compacted by gc (older cursors reset).
    journal_seconds: float | None = 90 * 86400
    #: A second block store cold blocks move to (``davserver tier``); reads fall through to it.
    archive_url: str | None = None
    #: Blocks not read for this long are cold.
    archive_after_days: float = 30
    #: Redis (metadata cache and notifications between nodes); None: this process only.
    redis_url: str | None = None
    #: Prefix of every Redis key and channel of this deployment (several may share a Redis);
    #: None: "davserver:" and the database's deployment key (Engine.redis_namespace).
    redis_namespace: str | None = None
    #: The metadata cache (storage.cache): in Redis when redis_url is set, else in-process.
    metadata_cache: bool = True
    #: The in-process metadata cache's size when there is no Redis (0: none).
    local_cache_bytes: int = 64 << 20
    #: how often long-poll waiters' accounts are checked in the journal while Redis
    #: pub/sub is not connected (absent or down), and while it is (lost messages).
    notify_fallback_seconds: float = 1.0
    notify_safety_seconds: float = 30.0
    #: which old versions and trash items the retention pass keeps (accounts may override).
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    #: pool size for the metadata database (follows the server's thread count).
    db_pool_size: int = 10
    #: migrate the schema on open (the embedded default) instead of refusing.
    auto_migrate: bool = True
    password_hashing: PasswordHashing = field(default_factory=PasswordHashing)
    clock: Callable[[], float] = time.time

    @property
    def appends_pipelined(self) -> bool:
        """:attr:`pipelined_appends`, with its default resolved."""
        return self.redis_url is None if self.pipelined_appends is None else self.pipelined_appends
