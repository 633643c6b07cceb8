"""Stream -> blocks: the write pipeline.

The caller's thread reads the stream and cuts it into content-defined blocks;
a small shared thread pool hashes, looks up, compresses, seals and stores each
block (hashlib, zstd and AES-GCM release the GIL, so network reads, CPU work and
disk writes overlap on two cores). At most ``pipeline_depth`` blocks are in
flight per write, so memory stays flat whatever the file size.

Blocks are stored without waiting for the disk (``sync=False``); the writer syncs
them in one batch (:meth:`BlockWriter.make_durable`) before any row names them:
before each pin and before the commit. A crash before that loses only objects no
row refers to, which garbage collection sweeps as orphans.

Nothing here makes a block visible. Blocks become part of a file only when
:meth:`storage.volume.Volume.write` commits one transaction; until then they are
*pinned* to an upload row (``uploads`` / ``upload_blocks``) every
``pin_every_bytes``, so garbage collection leaves them alone however long the
upload takes, and a crash leaves only pins that expire with their lease.

A dedup hit keeps its data in memory until the block is pinned: if garbage
collection deleted the block between the lookup and the pin (the database's
foreign key tells us), the data is stored again instead of being lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import secrets
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from storage.accounts import AccountContext
from storage.blockstore import BlockStore, StoredBlock
from storage.chunker import BufferPool, Chunker, Readable, ReadableInto
from storage.errors import BackendUnavailable, QuotaExceeded, TooLarge
from storage.metadata import schema as t
from storage.metadata.db import Database
from storage.metadata.prepared import Prepared

_LOOKUP_BLOCK = Prepared(
    select(t.blocks.c.id).where(
        t.blocks.c.account_id == bindparam("b_account"), t.blocks.c.sha256 == bindparam("b_sha")
    )
)
_BLOCK_KEYS = (
    "account_id",
    "sha256",
    "name",
    "size",
    "stored_size",
    "codec",
    "key_epoch",
    "created_at",
    "inline_data",
)
#: Inserts of block rows that leave a row the account has already alone (per dialect: the
#: conflict clause is each database's own).
_INSERT_NEW_BLOCK = {
    "sqlite": sqlite_insert(t.blocks).on_conflict_do_nothing(),
    "postgresql": postgresql_insert(t.blocks).on_conflict_do_nothing(),
}
#: One new block (a small file's): inserted unless a concurrent write just did, and its id
#: returned, in one statement instead of look-up, insert, look-up.
_INSERT_ONE_BLOCK = {
    name: Prepared(stmt.returning(t.blocks.c.id), keys=_BLOCK_KEYS)
    for name, stmt in _INSERT_NEW_BLOCK.items()
}
#: New blocks (a pin's or a commit's batch): inserted and their ids returned in one
#: multi-row statement (SQLAlchemy's "insertmanyvalues"), where a look-up before and
#: after the insert cost two more.
_INSERT_BLOCKS_RETURNING = {
    name: stmt.returning(t.blocks.c.id, t.blocks.c.sha256) for name, stmt in _INSERT_NEW_BLOCK.items()
}
#: Extends the lease of a write's pin row (``uploads``); an upload session's commit extends
#: its own with it too.
EXTEND_LEASE = Prepared(
    update(t.uploads).where(t.uploads.c.id == bindparam("b_upload")).values(expires_at=bindparam("b_expires"))
)
#: Up to this many hashes are looked up one by one (prepared); more go in one IN query.
_FEW_HASHES = 4
_BLOCK_IDS = select(t.blocks.c.id, t.blocks.c.sha256).where(
    t.blocks.c.account_id == bindparam("b_account"),
    t.blocks.c.sha256.in_(bindparam("b_shas", expanding=True)),
)

#: Dedup hits keep their data until pinned (to re-store it should gc take the
#: block meanwhile); past this many held bytes the write pins early.
HELD_BYTES_MAX = 8 << 20


@dataclass(slots=True)
class BlockRef:
    """One block of the file being written, in order."""

    sha256: bytes
    size: int
    offset: int
    stored: StoredBlock | None  # set when this write stored the block itself
    data: bytes | None  # kept for dedup hits until pinned
    block_id: int | None = None


class VanishedBlocks(Exception):
    """Blocks found by dedup were collected before they could be pinned."""


class LimitedReader:
    """Counts bytes, enforces the size limit and the account's remaining room.

    Offers ``readinto`` (what the chunker prefers), passing it through to the
    source when the source has one, and tolerates sources whose ``read(n)``
    returns more than ``n`` bytes by keeping the excess for later.
    """

    def __init__(self, stream: Readable, max_size: int, room: int | None) -> None:
        self._stream = stream
        self._max_size = max_size
        self._room = room
        self._leftover = b""
        self.count = 0

    def readinto(self, buffer: memoryview) -> int:
        want = len(buffer)
        if not self._leftover and hasattr(self._stream, "readinto"):
            n = int(self._stream.readinto(buffer))
        else:
            data = self._leftover or self._stream.read(want)
            self._leftover = data[want:]
            n = min(len(data), want)
            buffer[:n] = data[:n]
        self.count += n
        if self.count > self._max_size:
            raise TooLarge(f"files are limited to {self._max_size} bytes")
        if self._room is not None and self.count > self._room:
            raise QuotaExceeded("the account's quota has no room for this file")
        return n


class HashThreads:
    """Threads for whole-file hashes (:class:`WholeHash`), kept between writes.

    Starting a thread makes the starter wait until the new thread runs: under load on a
    small machine about a millisecond, which every append of a resumable upload would
    pay on its request's path. A task never waits for a free thread (one more starts,
    as a write's own thread did); at most ``keep`` idle ones are kept.
    """

    def __init__(self, keep: int = 4) -> None:
        self._keep = keep
        self._idle: list[queue.SimpleQueue[Callable[[], None] | None]] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, task: Callable[[], None]) -> None:
        """Run ``task`` on an idle thread or a new one; it must catch its own errors."""
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name="davserver-hash", daemon=True).start()
        inbox.put(task)

    def _serve(self, inbox: queue.SimpleQueue[Callable[[], None] | None]) -> None:
        while (task := inbox.get()) is not None:
            task()
            with self._lock:
                if self._closed or len(self._idle) >= self._keep:
                    return
                self._idle.append(inbox)

    def close(self) -> None:
        """Let the idle threads go (tasks under way finish; later ones get a thread each)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)


class WholeHash:
    """SHA-256 of the whole stream, from the second piece on computed on its own thread.

    hashlib releases the GIL on large buffers, so hashing overlaps the chunker
    on the writing thread; the queue is bounded, so memory stays bounded too.
    Single-block (small) files are hashed inline, without a thread. ``hasher``
    continues an existing hashlib object (an upload session's); pieces must not
    change after :meth:`update` (pass copies of reused buffers).

    ``after``: a wait for an earlier WholeHash still feeding ``hasher`` (the previous
    append of an upload session). This one's thread waits for it, not the caller, so
    an append starts reading while the previous one's last pieces are still hashed;
    :meth:`state_before` is the hasher as it was between the two.
    """

    def __init__(
        self,
        depth: int,
        hasher: Any = None,
        after: Callable[[], None] | None = None,
        threads: HashThreads | None = None,
    ) -> None:
        """``threads``: where the thread comes from (default: one started for this hash)."""
        self._h = hasher if hasher is not None else hashlib.sha256()
        self._depth = depth
        self._threads = threads if threads is not None else HashThreads(keep=0)
        self._queue: queue.Queue[bytes | memoryview | None] | None = None
        #: Set once the thread has hashed everything (None: no thread started).
        self._done: threading.Event | None = None
        self._first = after is None  # inline only when nothing is still hashing before us
        self._finished = False
        self._after = after
        self._continues = after is not None
        self._before: Any = None
        self._before_taken = threading.Event()
        self._failed: BaseException | None = None
        if after is not None:
            self._start()

    def update(self, data: bytes | memoryview) -> None:
        if self._finished:
            # A second thread would hash beside the first, and the pieces could land out of order.
            raise RuntimeError("WholeHash.update() after finish()")
        if self._first:
            self._first = False
            self._h.update(data)
            return
        if self._queue is None:
            self._start()
        assert self._queue is not None
        self._queue.put(data)

    def _start(self) -> None:
        q: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=self._depth)
        done = threading.Event()
        self._queue, self._done = q, done
        self._threads.run(partial(self._run, q, done))

    def _run(self, q: queue.Queue[bytes | memoryview | None], done: threading.Event) -> None:
        try:
            self._hash_all(q)
        finally:
            done.set()

    def _hash_all(self, q: queue.Queue[bytes | memoryview | None]) -> None:
        # Dropped once waited for: it holds the previous append's writer, and through that
        # every earlier one's (a chain as long as the upload).
        after, self._after = self._after, None
        try:
            if after is not None:
                try:
                    after()
                finally:
                    # Taken whatever happened: a waiter in state_before() must not hang.
                    self._before = self._h.copy()
                    self._before_taken.set()
            while (data := q.get()) is not None:
                self._h.update(data)
        except BaseException as exc:
            # Keep taking pieces, or the writer blocks on a full queue for ever; digest() raises.
            self._failed = exc
            while q.get() is not None:
                pass

    def state_before(self) -> Any:
        """A copy of the hasher as it was before this stream's first piece."""
        if not self._continues:
            raise RuntimeError("state_before() is kept only for a hash that continues another")
        self._before_taken.wait()
        return self._before

    def close(self) -> None:
        self.finish()
        if self._done is not None:
            self._done.wait()
            self._done = None

    def finish(self) -> None:
        """No more pieces: the thread ends once it has hashed those queued (see :meth:`close`)."""
        self._finished = True
        if self._queue is not None:
            self._queue.put(None)
            self._queue = None

    def digest(self) -> bytes:
        self.close()
        if self._failed is not None:
            raise RuntimeError("the whole-file hash failed") from self._failed
        return self._h.digest()


class _NoHash:
    def update(self, data: bytes | memoryview) -> None:
        pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass

    def digest(self) -> bytes:
        return b""


class BlockWriter:
    """Collects the blocks of one write; :meth:`commit_blocks` records them in a transaction."""

    def __init__(
        self,
        ctx: AccountContext,
        db: Database,
        store: BlockStore,
        executor: ThreadPoolExecutor,
        *,
        compress: bool,
        depth: int,
        pin_every_bytes: int,
        lease_seconds: float,
        clock: Callable[[], float],
        buffers: BufferPool | None = None,
        hash_threads: HashThreads | None = None,
        whole_hash: bool = True,
        hasher: Any = None,
        hash_after: Callable[[], None] | None = None,
        unhashed: int = 0,
        keep_tail: bool = False,
    ) -> None:
        """``whole_hash=False``: the content is not hashed (``sha256`` stays empty).
        ``hasher``: a hashlib object the content continues (an upload session's), after
        the first ``unhashed`` bytes of the stream (its held-back tail, hashed before).
        ``hash_after``: waits until ``hasher`` has seen everything before this write (see
        :class:`WholeHash`; :meth:`hash_state_before` is then the hasher as of then).

        ``keep_tail=True``: the stream's last piece (after the last real cut point) is
        not stored but left in :attr:`tail`, for an upload that continues later.
        ``buffers`` and ``hash_threads`` lend the chunker's buffer and the whole-file
        hash's thread, kept between writes.
        """
        self._ctx = ctx
        self._whole_hash = whole_hash
        self._hasher = hasher
        self._hash_after = hash_after  # handed to the WholeHash by consume(), which drops it
        #: The whole-file hash of :meth:`consume`, once it has started.
        self._whole: WholeHash | None = None
        self._unhashed = unhashed
        self._keep_tail = keep_tail
        #: The held-back last piece (``keep_tail``), not part of ``refs`` or ``size``.
        self.tail = b""
        self._db = db
        self._store = store
        self._executor = executor
        self._compress = compress
        self._depth = depth
        self._pin_every = pin_every_bytes
        self._lease = lease_seconds
        self._clock = clock
        self._buffers = buffers
        self._hash_threads = hash_threads
        self.refs: list[BlockRef] = []
        self._unpinned: list[BlockRef] = []
        self._unpinned_bytes = 0
        self._held_bytes = 0
        self._upload_id: str | None = None
        #: Names of objects this write stored that are not yet known to be durable.
        self._volatile: list[str] = []
        #: The pin under way in the background (:meth:`_pin`), if any.
        self._pinning: Future[None] | None = None
        #: Blocks still on the pool after ``consume(drain=False)``, in order.
        self._inflight: deque[Future[BlockRef]] = deque()
        self._draining = False
        #: The whole-file hash still running after ``consume(drain=False)`` (:meth:`hashed`).
        self._hashing: WholeHash | _NoHash | None = None
        self.size = 0
        self.sha256 = b""

    # -- streaming -----------------------------------------------------------------

    def consume(self, stream: Readable | ReadableInto, *, drain: bool = True) -> None:
        """Read the stream to its end, cutting it into blocks stored on the pool.

        ``drain=False`` returns once the stream is read, while the last blocks may
        still be on the pool and the whole-file hash on its thread; :meth:`drain` (which
        :meth:`make_durable` calls) waits for the blocks, and ``refs`` is complete only
        then; :meth:`hashed` waits for the hash (``sha256`` and the ``hasher`` passed in
        are complete only then).
        """
        whole: WholeHash | _NoHash = _NoHash()
        if self._whole_hash:
            whole = self._whole = WholeHash(self._depth, self._hasher, self._hash_after, self._hash_threads)
            self._hash_after = None
        pending: deque[Future[BlockRef]] = deque()
        chunker = Chunker(self._ctx.chunker, self._ctx.keys.chunker_seed)
        offset = 0
        chunks = chunker.split_marked(stream, self._buffers)
        try:
            for data, last in chunks:
                if last and self._keep_tail:
                    self.tail = data
                    continue
                self._hash(whole, data)
                if last and offset == 0 and drain:
                    # The only block: stored on this thread, sparing small files the hand-off.
                    self._accept(self._prepare(data, offset))
                else:
                    pending.append(self._executor.submit(self._prepare, data, offset))
                offset += len(data)
                while len(pending) >= self._depth:
                    self._accept(pending.popleft().result())
            if self.tail:
                self._hash(whole, self.tail)
            if drain:
                while pending:
                    self._accept(pending.popleft().result())
            else:
                self._inflight, pending = pending, deque()
                whole.finish()
                self._hashing = whole  # still hashing its last pieces: see hashed()
        finally:
            if self._hashing is not whole:
                whole.close()
            for fut in pending:
                fut.cancel()
            for fut in pending:
                if not fut.cancelled():
                    fut.exception()
        self.size = offset
        if drain:
            self.sha256 = whole.digest()

    def hashed(self) -> None:
        """Wait for the whole-file hash that ``consume(drain=False)`` left running."""
        whole, self._hashing = self._hashing, None
        if whole is not None:
            self.sha256 = whole.digest()

    def hash_state_before(self) -> Any:
        """A copy of the ``hasher`` passed in with ``hash_after``, as it was before this
        write's content (for an append that failed: the session's hash stays where it was)."""
        if self._whole is not None:
            return self._whole.state_before()  # raises without hash_after
        if self._hash_after is None:
            raise RuntimeError("without hash_after, copy the hasher before consume()")
        self._hash_after()  # consume() never started
        return self._hasher.copy()

    def _hash(self, whole: WholeHash | _NoHash, data: bytes) -> None:
        if self._unhashed >= len(data):
            self._unhashed -= len(data)
        elif self._unhashed:
            whole.update(memoryview(data)[self._unhashed :])
            self._unhashed = 0
        else:
            whole.update(data)

    def store_tail(self) -> None:
        """The held-back tail turns out to be the end of the file: store it as the last block."""
        if self.tail:
            self._accept(self._prepare(self.tail, self.size))
            self.size += len(self.tail)
            self.tail = b""

    def _prepare(self, data: bytes, offset: int) -> BlockRef:
        sha = hashlib.sha256(data).digest()
        # A block that will be stored inline is sealed without asking first: if the
        # account has it already, the commit's insert finds the row and this copy is
        # dropped (a look-up would cost a statement to save some microseconds of sealing).
        if not self._store.always_inline(len(data)) and self._lookup(sha) is not None:
            return BlockRef(sha, len(data), offset, None, data)
        stored = self._store.store(
            self._ctx.id, self._ctx.keys, data, sha, compress=self._compress, sync=False
        )
        return BlockRef(sha, len(data), offset, stored, None)

    def _lookup(self, sha: bytes) -> int | None:
        with self._db.read(snapshot=False) as conn:
            found = _LOOKUP_BLOCK.first(conn, {"b_account": self._ctx.id, "b_sha": sha})
        return None if found is None else int(found.id)

    def _accept(self, ref: BlockRef) -> None:
        if ref.stored is not None and ref.stored.inline is None:
            self._volatile.append(ref.stored.name)
        self.refs.append(ref)
        self._unpinned.append(ref)
        self._unpinned_bytes += ref.size
        if ref.data is not None:
            self._held_bytes += ref.size
        # Pin every pin_every bytes, and sooner when dedup hits hold their data:
        # a re-upload of known content must not keep 64 MiB per write in memory.
        if self._unpinned_bytes >= self._pin_every or self._held_bytes >= HELD_BYTES_MAX:
            self._pin()

    def make_durable(self, *, also: Sequence[str] = ()) -> None:
        """Wait until every block this write stored so far is durable, and pinned where a
        pin is under way; ``also``: other objects the caller put with ``sync=False`` (an
        upload's tail), synced in the same batch.

        Call it before opening the transaction that records the rest (the commit).
        """
        self._volatile = [*self.unsynced(), *also]
        self._sync_volatile()

    def unsynced(self) -> list[str]:
        """As :meth:`make_durable`, but hand over the objects still to sync instead of
        syncing them: a caller committing several writes together syncs them in one batch
        (passed to the last one's ``make_durable(also=...)``)."""
        self.drain()
        self._await_pin()
        names, self._volatile = self._volatile, []
        return names

    def drain(self) -> None:
        """Wait for the blocks ``consume(drain=False)`` left on the pool (any thread, the
        pool's included: nothing it waits for is queued after it)."""
        self._draining = True
        try:
            while self._inflight:
                self._accept(self._inflight.popleft().result())
        finally:
            self._draining = False

    def _sync_volatile(self) -> None:
        if self._volatile:
            self._store.sync(self._volatile)
            self._volatile = []

    # -- pinning -------------------------------------------------------------------

    def _pin(self) -> None:
        """Pin the unpinned blocks in the background; the previous pin must be done first.

        The batch's objects are synced, then recorded against this write's upload row
        (created on first use), on a pool thread while this thread goes on reading and
        cutting: a large durable write then waits for the disk only at its end.
        """
        batch, self._unpinned = self._unpinned, []
        names, self._volatile = self._volatile, []
        base = len(self.refs) - len(batch)
        self._unpinned_bytes = 0
        self._held_bytes = 0
        self._await_pin()
        if self._draining:
            # drain() may run on a pool thread (a pipelined append's commit): a job it
            # queued and then waited for could sit behind jobs that wait for this one.
            self._pin_batch(batch, names, base)
            return
        self._pinning = self._executor.submit(self._pin_batch, batch, names, base)

    def _await_pin(self) -> None:
        job, self._pinning = self._pinning, None
        if job is not None:
            job.result()

    def _pin_batch(self, batch: list[BlockRef], names: list[str], base: int) -> None:
        self._store.sync(names)
        for _ in range(3):
            creating = self._upload_id is None
            upload_id = self._upload_id or secrets.token_hex(16)
            try:
                with self._db.write() as conn:
                    self._renew_lease(conn, upload_id, create=creating)
                    self.record_blocks(conn, batch)
                    conn.execute(
                        insert(t.upload_blocks),
                        [
                            {
                                "upload_id": upload_id,
                                "idx": base + i,
                                "block_id": r.block_id,
                                "offset": r.offset,
                            }
                            for i, r in enumerate(batch)
                        ],
                    )
            except (VanishedBlocks, DBIntegrityError) as exc:
                self._retry(batch, exc)
                continue
            self._upload_id = upload_id
            for ref in batch:
                ref.data = None
            return
        raise BackendUnavailable("blocks kept being collected while this upload pinned them")

    def _renew_lease(self, conn: Connection, upload_id: str, *, create: bool) -> None:
        now = self._clock()
        if create:
            conn.execute(
                insert(t.uploads).values(
                    id=upload_id,
                    account_id=self._ctx.id,
                    kind="stream",
                    created_at=now,
                    expires_at=now + self._lease,
                )
            )
        else:
            EXTEND_LEASE.execute(conn, {"b_upload": upload_id, "b_expires": now + self._lease})

    def record_blocks(self, conn: Connection, refs: Sequence[BlockRef], *, at: float | None = None) -> None:
        """Insert rows for newly stored blocks and resolve every ref's block id.

        Raises :class:`VanishedBlocks` when a dedup hit's row no longer exists. The
        stored objects must be durable already (:meth:`make_durable`). ``at``: the rows'
        creation time (default: now).
        """
        now = self._clock() if at is None else at
        new_rows = {
            r.sha256: {
                "account_id": self._ctx.id,
                "sha256": r.sha256,
                "name": r.stored.name,
                "size": r.stored.size,
                "stored_size": r.stored.stored_size,
                "codec": r.stored.codec,
                "key_epoch": r.stored.key_epoch,
                "created_at": now,
                "inline_data": r.stored.inline,
            }
            for r in refs
            if r.stored is not None and r.block_id is None
        }
        wanted = {r.sha256 for r in refs if r.block_id is None}
        if not wanted:
            return
        if len(new_rows) == 1 and wanted == set(new_rows):
            ids = self._insert_one(conn, next(iter(new_rows.values())))
        else:
            ids = self._insert_many(conn, list(new_rows.values()))
            if rest := wanted - ids.keys():  # dedup hits, and blocks a concurrent write recorded
                ids.update(self._block_ids(conn, rest))
        if any(sha not in ids for sha in wanted):
            raise VanishedBlocks()
        for r in refs:
            if r.block_id is None:
                r.block_id = ids[r.sha256]

    def _insert_one(self, conn: Connection, row: dict[str, Any]) -> dict[bytes, int]:
        got = _INSERT_ONE_BLOCK[conn.dialect.name].first(conn, row)
        if got is not None:
            return {row["sha256"]: int(got.id)}
        return self._block_ids(conn, {row["sha256"]})  # a concurrent write recorded it first

    def _insert_many(self, conn: Connection, rows: list[dict[str, Any]]) -> dict[bytes, int]:
        """Insert the rows of blocks this write stored, in one statement; the ids of those
        inserted (a row the account has already is left as it is, and not returned)."""
        if not rows:
            return {}
        stmt = _INSERT_BLOCKS_RETURNING[conn.dialect.name]
        return {bytes(row.sha256): int(row.id) for row in conn.execute(stmt, rows)}

    def _block_ids(self, conn: Connection, shas: set[bytes]) -> dict[bytes, int]:
        ordered = sorted(shas)
        ids: dict[bytes, int] = {}
        if len(ordered) <= _FEW_HASHES:
            for sha in ordered:
                row = _LOOKUP_BLOCK.first(conn, {"b_account": self._ctx.id, "b_sha": sha})
                if row is not None:
                    ids[sha] = int(row.id)
            return ids
        for i in range(0, len(ordered), 500):
            params = {"b_account": self._ctx.id, "b_shas": ordered[i : i + 500]}
            ids.update((bytes(row.sha256), int(row.id)) for row in conn.execute(_BLOCK_IDS, params))
        return ids

    def _restore_vanished(self, refs: Sequence[BlockRef]) -> None:
        self._forget_ids(refs)
        with self._db.read() as conn:
            present = {
                bytes(s)
                for s in conn.execute(
                    select(t.blocks.c.sha256).where(
                        t.blocks.c.account_id == self._ctx.id,
                        t.blocks.c.sha256.in_([r.sha256 for r in refs if r.stored is None]),
                    )
                ).scalars()
            }
        for r in refs:
            if r.stored is None and r.sha256 not in present:
                assert r.data is not None, "a dedup hit keeps its data until pinned"
                r.stored = self._store.store(
                    self._ctx.id, self._ctx.keys, r.data, r.sha256, compress=self._compress
                )

    @staticmethod
    def _forget_ids(refs: Sequence[BlockRef]) -> None:
        for r in refs:
            r.block_id = None

    # -- commit support ------------------------------------------------------------

    def finish_in(self, conn: Connection, *, at: float | None = None) -> None:
        """Inside the commit transaction: record the remaining blocks (created ``at``, default
        now), drop the upload row."""
        if self._pinning is not None or self._inflight:
            # The pin needs the write transaction this caller holds.
            raise RuntimeError("make_durable() must come before the commit transaction")
        self._sync_volatile()  # a row must never name an object a crash could still lose
        self.record_blocks(conn, self._unpinned, at=at)
        if self._upload_id is not None:
            conn.execute(delete(t.uploads).where(t.uploads.c.id == self._upload_id))

    def retry_after(self, exc: Exception) -> None:
        """Prepare a new commit attempt after the transaction failed with ``exc``."""
        self._retry(self._unpinned, exc)

    def _retry(self, refs: Sequence[BlockRef], exc: Exception) -> None:
        if isinstance(exc, VanishedBlocks):
            self._restore_vanished(refs)
        else:
            self._forget_ids(refs)

    def committed(self) -> None:
        self._unpinned = []
        self._upload_id = None

    def abort(self) -> None:
        """Drop this write's pins; its blocks become garbage after the grace period."""
        inflight, self._inflight = self._inflight, deque()
        for fut in inflight:
            fut.cancel()
        for fut in inflight:
            with contextlib.suppress(BaseException):
                fut.result()  # stored or not, nothing will name it
        with contextlib.suppress(Exception):
            self._await_pin()  # the write failed already; a pin that failed too expires
        if self._upload_id is None:
            return
        try:
            with self._db.write() as conn:
                conn.execute(delete(t.uploads).where(t.uploads.c.id == self._upload_id))
        finally:
            self._upload_id = None
