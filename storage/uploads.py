"""Upload sessions: resumable uploads that survive restarts and move between nodes.

One engine under both wire protocols of the extension API (tus 1.0 and the
resumable protocol). A session row records the target, the declared length and
the offset up to which data is durable; the data itself is already in blocks,
pinned to the session by ``upload_blocks`` rows (so garbage collection leaves
them alone until the session expires), in order.

Each append runs the content-defined chunker over *tail + new data*, where the
tail is the piece after the last real cut point, which is not a block
boundary until more data (or the end) arrives. FastCDC's cut points depend only
on the bytes since the previous cut, so the blocks come out exactly as if the
file had arrived in one request. The tail (at most one block) is sealed with
the account's key, bound to the session and offset, and stored as its own
object in the block store; the session row names it, committed with the
offset, so every node can continue and no node keeps it in memory or on local
disk. (Two earlier versions measured worse: the tail as a block cost a SHA-256,
compression and block bookkeeping at every append and again when re-chunked;
the tail in the session row wrote up to a block into the database log at every
append — 18% of an 8 MiB PATCH's time.)

An append commits in one transaction: new blocks, the new tail and the new
offset, or nothing changes (client gone, checksum mismatch, crash:
the blocks written meanwhile are pinned by their own expiring lease and
collected). The offset check inside that transaction makes concurrent appends
from one offset safe: the second one gets :class:`OffsetMismatch`.

With pipelined appends (the default on a single node) that transaction runs on the
pool after the append is answered, while the client sends on; the next append starts
from the tail still in memory. Answered appends gather in a batch (:class:`_Batch`)
that is synced and committed as one, with one tail object (the last one's), once it
holds ``append_commit_bytes`` or ``append_commit_seconds`` after it opened, or when a
status request, the last append or the engine's close needs it; a batch commits only
after the one before it (:class:`PendingAppends`). The commit order, the offset check
and the rule that a row names only durable objects are the same; what changes is that
an answered offset becomes durable a little later, and a status request waits for it.
(One transaction per 8 MiB PATCH, each with its tail object written, synced and
deleted, measured 0.75-0.96x of a PUT's throughput in six alternating runs; batches of
64 MiB 0.90-1.03x in the same runs; docs/performance.md.)

When the last byte is durable the session is *finalised*: one more transaction
commits the file's version exactly like any write (journal entry, ETag,
If-Match, quota) and marks the session complete (it stays answerable until it
expires). A crash between the two transactions is finished by the next status
request. A finalisation that cannot commit (If-Match no longer holds, the quota
is full, the folder is gone) leaves the session with all its data but no file;
every status request reports why, until the client terminates the session or it
expires. The whole-file SHA-256 is kept in memory per session while the
appends come to the same process; otherwise it is computed at the end by
reading the blocks back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from functools import partial
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update

from storage import paths
from storage.chunker import Prefixed, Readable
from storage.codec import is_precompressed
from storage.envelope import CODEC_RAW, OVERHEAD, open_sealed, seal
from storage.errors import (
    ChecksumMismatch,
    Conflict,
    IntegrityError,
    NotFound,
    OffsetMismatch,
    TooLarge,
)
from storage.metadata import schema as t
from storage.metadata.prepared import Prepared
from storage.model import BlockAt, Entry, UploadSession
from storage.reader import BlockLocation, VersionReader
from storage.writer import EXTEND_LEASE, BlockWriter, LimitedReader

if TYPE_CHECKING:
    from storage.volume import Volume

s_ = t.upload_sessions.c
ub = t.upload_blocks.c
b = t.blocks.c

log = logging.getLogger("davserver.uploads")

#: Whole-file hashers kept for sessions being appended to in this process.
HASHERS_KEPT = 1024


@dataclass
class Checksum:
    """A checksum the client sent with an append (tus ``Upload-Checksum``)."""

    algorithm: str  # a hashlib name: sha1, sha256, md5...
    digest: bytes


class HasherCache:
    """session id -> (offset, hashlib object) for the appends this process has seen.

    A pipelined append hands its hasher over while its thread may still be hashing the
    append's last pieces (``BlockWriter.hashed``). The next append takes it with that wait
    (:meth:`take_unsettled`) and passes both to its own hash thread, which waits before
    hashing on: neither request waits for the other's hash.
    """

    def __init__(self, size: int = HASHERS_KEPT) -> None:
        self._items: OrderedDict[str, tuple[int, Any, Callable[[], None] | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def take(self, session_id: str, offset: int) -> Any:
        """A hasher that has seen exactly ``offset`` bytes (a fresh one at 0), or None."""
        hasher, hashed = self.take_unsettled(session_id, offset)
        if hashed is not None:
            hashed()
        return hasher

    def take_unsettled(self, session_id: str, offset: int) -> tuple[Any, Callable[[], None] | None]:
        """As :meth:`take`, without waiting: the hasher, and None or a wait until it has seen
        ``offset`` bytes (until then, another thread is still updating it)."""
        with self._lock:
            item = self._items.pop(session_id, None)
        if item is not None and item[0] == offset:
            return item[1], item[2]
        return (hashlib.sha256() if offset == 0 else None), None

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._items.pop(session_id, None)

    def keep(
        self, session_id: str, offset: int, hasher: Any, hashed: Callable[[], None] | None = None
    ) -> None:
        """``hashed``: waits until ``hasher`` has seen all ``offset`` bytes, if it has not yet."""
        with self._lock:
            self._items[session_id] = (offset, hasher, hashed)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


@dataclass(eq=False)
class _Step:
    """One answered append, to be committed: the session row it continued, its writer, the
    file range its blocks cover (from ``start``, the tail it began with included) and when it
    was answered."""

    row: Any
    writer: BlockWriter
    start: int
    end: int
    accepted: float


class _Batch:
    """Answered appends of one session, committed together: one sync, one transaction.

    Open while appends join it; :meth:`submit` closes it and hands ``commit`` to the pool,
    which gets the steps, in order, and ``before`` (the batch before's ``landed``: it must
    wait for it). ``landed`` is done once committed, failed if not.
    """

    def __init__(
        self,
        commit: Callable[[list[_Step], Future[None] | None], None],
        executor: Executor,
        before: Future[None] | None,
        deadline: float,
    ) -> None:
        self._commit = commit
        self._executor = executor
        self._before = before
        #: When the flusher submits it at the latest (``time.monotonic``).
        self.deadline = deadline
        self.steps: list[_Step] = []
        self.bytes = 0
        self.landed: Future[None] = Future()
        self._open = True
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self._open

    def join(self, step: _Step) -> bool:
        """Add an answered append; False once the batch is closed, or if the append does not
        continue the batch's last one (two raced from one offset: the one left out commits in
        a batch of its own, whose offset check refuses it)."""
        with self._lock:
            if not self._open or (self.steps and step.row.offset != self.steps[-1].end):
                return False
            if self.steps:
                # Only the last append's tail is stored; the next append starts from this one's.
                self.steps[-1].writer.tail = b""
            self.steps.append(step)
            self.bytes += step.end - step.row.offset
            return True

    def submit(self) -> None:
        """Close the batch and commit it on the pool (here, if the pool is shut down)."""
        with self._lock:
            # Under the lock: a join that finds the batch closed finds it queued, so the batch
            # after it (which waits for this one on the pool) cannot run first.
            if not self._open:
                return
            self._open = False
            try:
                self._executor.submit(self._land)
                return
            except RuntimeError:
                pass  # the engine is closing
        self._land()

    def _land(self) -> None:
        self.landed.set_running_or_notify_cancel()
        try:
            self._commit(self.steps, self._before)
        except BaseException as exc:
            self.landed.set_exception(exc)
        else:
            self.landed.set_result(None)
        finally:
            # Nothing keeps the writers (or the chain of batches before) alive after this.
            self.steps, self._before = [], None


@dataclass(eq=False)
class _Pending:
    """An append answered before its commit: the session as it will be once that lands."""

    row: Any  # the session row with the append's offset, tail and expiry
    tail: bytes  # the piece held back after it, where the next append's chunker starts
    batch: _Batch  # the commit it is part of

    @property
    def landed(self) -> Future[None]:
        return self.batch.landed


class PendingAppends:
    """session id -> its append answered but not committed yet, in this process; and the
    thread that submits each batch by its deadline (running only while one is open)."""

    def __init__(self) -> None:
        self._items: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._watched: list[_Batch] = []
        self._due = threading.Condition(threading.Lock())
        self._flusher: threading.Thread | None = None

    def get(self, session_id: str) -> _Pending | None:
        with self._lock:
            return self._items.get(session_id)

    def put(self, session_id: str, pending: _Pending) -> None:
        with self._lock:
            self._items[session_id] = pending

    def drop(self, session_id: str, batch: _Batch) -> None:
        """Forget the session's answered append if it is part of ``batch`` (which has landed)."""
        with self._lock:
            pending = self._items.get(session_id)
            if pending is not None and pending.batch is batch:
                del self._items[session_id]

    def answered(self, session_id: str) -> _Pending | None:
        """The session's answered append, unless its commit failed (then, once it has
        ended, None: the database has the truth)."""
        pending = self.get(session_id)
        if pending is None:
            return None
        landed = pending.landed
        if landed.done() and landed.exception() is not None:
            return None
        return pending

    def settle(self, session_id: str) -> None:
        """Commit the session's answered appends now and wait until that has landed or failed."""
        pending = self.get(session_id)
        if pending is not None:
            pending.batch.submit()
            _wait_quietly(pending.landed)

    def settle_all(self) -> None:
        with self._lock:
            waiting = list(self._items.values())
        for pending in waiting:
            pending.batch.submit()
        for pending in waiting:
            _wait_quietly(pending.landed)

    def close(self) -> None:
        """Commit what was answered and stop the deadline thread (the engine is closing)."""
        self.settle_all()
        with self._due:
            self._watched.clear()
            self._due.notify()

    def watch(self, batch: _Batch) -> None:
        """Submit ``batch`` by its deadline if nothing else has by then."""
        with self._due:
            self._watched.append(batch)
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._submit_when_due, name="davserver-append-commits", daemon=True
                )
                self._flusher.start()
            self._due.notify()

    def _submit_when_due(self) -> None:
        while True:
            with self._due:
                self._watched = [batch for batch in self._watched if batch.open]
                if not self._watched:
                    self._flusher = None
                    return
                now = time.monotonic()
                due = [batch for batch in self._watched if batch.deadline <= now]
                if not due:
                    self._due.wait(min(batch.deadline for batch in self._watched) - now)
                    continue
            for batch in due:
                batch.submit()


def _wait_quietly(landed: Future[None]) -> None:
    with contextlib.suppress(Exception):
        landed.result()


def _row_after(row: Any, **changes: Any) -> SimpleNamespace:
    """A session row (a database row or an earlier ``_row_after``) with fields changed."""
    fields = row._asdict() if hasattr(row, "_asdict") else vars(row)
    return SimpleNamespace(**{**fields, **changes})


class _Check:
    """Reads the body, feeding the append's checksum (tus ``Upload-Checksum``)."""

    def __init__(self, stream: LimitedReader, check: Any) -> None:
        self._stream = stream
        self._check = check

    def readinto(self, buffer: memoryview) -> int:
        n = self._stream.readinto(buffer)
        if n:
            self._check.update(buffer[:n])
        return n


class Uploads:
    """The upload sessions of one account (reached through :class:`storage.volume.Volume`)."""

    def __init__(self, volume: Volume, hashers: HasherCache, clock: Callable[[], float]) -> None:
        self._vol = volume
        self._account_id = volume.account.id
        self._s = volume._s
        self._db = volume._s.db
        self._hashers = hashers
        self._clock = clock

    # -- create, look up, delete -----------------------------------------------------

    def create(
        self,
        *,
        kind: str,
        path: str | None,
        length: int | None,
        mtime: float | None = None,
        if_match: str | None = None,
        device: str | None = None,
        meta: str | None = None,
    ) -> UploadSession:
        cfg = self._s.config
        if length is not None and length > cfg.max_file_size:
            raise TooLarge(f"files are limited to {cfg.max_file_size} bytes")
        if path is not None:
            path = paths.normalize_path(path)
            if path == "":
                raise Conflict("cannot write to the root folder")
            self._vol._precheck(path, if_match, None, length)
        fields = {"path": path, "length": length, "mtime": mtime, "if_match": if_match, "device": device}
        with self._db.write() as conn:
            session_id, _ = self._insert_session(
                conn, kind=kind, offset=0, block_count=0, meta=meta, **fields
            )
        session = self.get(session_id)
        if length == 0 and path is not None:
            return self._finalize(session_id)
        return session

    def _insert_session(self, conn: Connection, **values: Any) -> tuple[str, str]:
        """A new session row and the pin row its blocks hang on; returns both ids."""
        now = self._clock()
        session_id, pin_id = secrets.token_urlsafe(24), secrets.token_hex(16)
        expires = now + self._s.config.upload_session_seconds
        conn.execute(
            insert(t.uploads).values(
                id=pin_id, account_id=self._account_id, kind="session", created_at=now, expires_at=expires
            )
        )
        conn.execute(
            insert(t.upload_sessions).values(
                id=session_id,
                account_id=self._account_id,
                upload_id=pin_id,
                created_at=now,
                expires_at=expires,
                **values,
            )
        )
        return session_id, pin_id

    def get(self, session_id: str, *, settle: bool = True) -> UploadSession:
        """The session's state; finishes a session whose last byte is durable but not yet committed.

        An append answered but still committing (see :meth:`append`) is waited for first,
        so the offset reported is durable. ``settle=False`` answers at once, with the
        offset as answered so far (what the client's next append starts from).
        """
        if not settle and (pending := self._s.pending.answered(session_id)) is not None:
            return self._to_session(pending.row)
        self._s.pending.settle(session_id)
        with self._db.read() as conn:
            row = self._row(conn, session_id)
        if _needs_finalizing(row):
            return self._finalize(session_id)
        return self._to_session(row)

    def delete(self, session_id: str) -> None:
        """Terminate: the session and its pins go; its blocks become garbage."""
        self._s.pending.settle(session_id)
        with self._db.write() as conn:
            row = self._row(conn, session_id)
            conn.execute(delete(t.uploads).where(t.uploads.c.id == row.upload_id))
        if row.tail_name is not None:
            self._s.blocks.backend.delete(row.tail_name)
        self._hashers.forget(session_id)

    def declare_length(self, session_id: str, length: int) -> UploadSession:
        """tus ``Upload-Defer-Length``: the length, once known."""
        if length > self._s.config.max_file_size:
            raise TooLarge(f"files are limited to {self._s.config.max_file_size} bytes")
        self._s.pending.settle(session_id)
        with self._db.write() as conn:
            row = self._row(conn, session_id, lock=True)
            if row.length is not None and row.length != length:
                raise Conflict("the upload's length is already declared")
            if length < row.offset:
                raise Conflict(f"{row.offset} bytes were already received")
            conn.execute(update(t.upload_sessions).where(s_.id == session_id).values(length=length))
        if length == row.offset and row.tail_name is not None:
            self._store_tail(session_id)  # the data received is the whole file
        return self.get(session_id)

    def concat(
        self,
        path: str,
        partial_ids: list[str],
        *,
        mtime: float | None = None,
        if_match: str | None = None,
        device: str | None = None,
        meta: str | None = None,
    ) -> UploadSession:
        """Join finished partial uploads (tus concatenation) into the file at ``path``.

        The blocks are taken over as they are (no data moves); the partial sessions go.
        """
        path = paths.normalize_path(path)
        if path == "" or not partial_ids:
            raise Conflict("a concatenation needs a file path and at least one partial upload")
        for pid in partial_ids:
            self._s.pending.settle(pid)
        with self._db.read() as conn:
            parts = [self._row(conn, pid) for pid in partial_ids]
        for part in parts:
            if part.kind != "partial" or part.length is None or part.offset != part.length:
                raise Conflict(f"upload {part.id} is not a finished partial upload")
        total = sum(int(p.length) for p in parts)
        if total > self._s.config.max_file_size:
            raise TooLarge(f"files are limited to {self._s.config.max_file_size} bytes")
        self._vol._precheck(path, if_match, None, total)
        with self._db.write() as conn:
            taken: list[tuple[int, int]] = []  # (block id, offset in the joined file)
            base = 0
            for pid in partial_ids:
                part = self._row(conn, pid, lock=True)
                taken += [(blk.block_id, base + blk.offset) for blk in self._blocks(conn, part)]
                base += int(part.length)
            session_id, pin_id = self._insert_session(
                conn,
                kind="final",
                path=path,
                length=total,
                offset=total,
                block_count=len(taken),
                mtime=mtime,
                if_match=if_match,
                device=device,
                meta=meta,
            )
            rows = [
                {"upload_id": pin_id, "idx": i, "block_id": block_id, "offset": at}
                for i, (block_id, at) in enumerate(taken)
            ]
            if rows:
                conn.execute(insert(t.upload_blocks), rows)
            conn.execute(delete(t.uploads).where(t.uploads.c.id.in_([p.upload_id for p in parts])))
        return self._finalize(session_id)

    # -- append ------------------------------------------------------------------------

    def append(
        self, session_id: str, offset: int, stream: Readable, *, checksum: Checksum | None = None
    ) -> UploadSession:
        """Append the stream at ``offset`` (which must be the session's); returns the new state.

        An append that ends the upload returns once the file is committed. Any other
        returns once its data is stored when appends are pipelined (the config's
        ``pipelined_appends``): it joins the session's batch of answered appends, which is
        synced and committed on the pool, in one transaction, once it holds
        ``append_commit_bytes`` or ``append_commit_seconds`` after it opened, while the
        client sends on; the next append starts from the held-back tail in memory. A status
        request (:meth:`get`) commits the batch and waits for it, so a status always
        reports a durable offset; if the commit fails (or the process dies first), the
        session stays at the offset before the batch, the next append is refused with
        :class:`OffsetMismatch` naming it, and the client resumes from there as after any
        interruption.
        """
        row, prefix, before = self._resume_point(session_id, offset)
        limit = (row.length if row.length is not None else self._s.config.max_file_size) - offset
        whole, hashing = self._hashers.take_unsettled(session_id, offset)
        # The previous append may still be hashing its last pieces: this one's hash thread
        # waits for it, and a failure here goes back to the state between the two.
        whole_before = whole.copy() if whole is not None and hashing is None else None
        check = hashlib.new(checksum.algorithm) if checksum is not None else None
        body = LimitedReader(stream, limit, None)
        start = offset - len(prefix)
        # ``whole`` continues over this body's bytes; the tail read back was hashed before.
        writer = self._writer(row.path, hasher=whole, hash_after=hashing, unhashed=len(prefix))

        def keep_hash_as_before() -> None:
            before = writer.hash_state_before() if hashing is not None else whole_before
            if before is not None:
                self._hashers.keep(session_id, offset, before)

        pipelined = self._s.config.appends_pipelined
        try:
            # Pipelined, the last blocks are left to finish on the pool too (the commit waits).
            source = Prefixed(prefix, body if check is None else _Check(body, check))
            writer.consume(source, drain=not pipelined)
            if check is not None and checksum is not None and check.digest() != checksum.digest:
                raise ChecksumMismatch(f"the data does not match its {checksum.algorithm} checksum")
            ends = row.length is not None and offset + body.count == row.length
            if ends:
                writer.drain()
                writer.store_tail()  # the end of the file: a real block boundary
            if body.count == 0:
                writer.abort()
                keep_hash_as_before()
                return self.get(session_id)
            new_offset = offset + body.count
            step = _Step(row, writer, start, new_offset, self._clock())
            if pipelined:
                answered = self._answer_later(session_id, step, before, whole, last=ends)
                if not ends:
                    return self._to_session(answered.row)
                # The last append commits with the batch it joined, then the file does.
                self._await(session_id, answered)
                return self.get(session_id)
            self._await(session_id, before)
            self._commit([step])
        except BaseException:
            writer.abort()
            keep_hash_as_before()
            raise
        writer.committed()
        if whole is not None:
            self._hashers.keep(session_id, new_offset, whole, writer.hashed)
        return self.get(session_id)

    def _resume_point(self, session_id: str, offset: int) -> tuple[Any, bytes, _Pending | None]:
        """The session row an append at ``offset`` continues, the tail it starts with, and the
        answered append it follows (None: the row is the committed one)."""
        pending = self._s.pending.answered(session_id)
        if pending is not None and pending.row.offset == offset:
            return pending.row, pending.tail, pending
        self._s.pending.settle(session_id)  # then the database has the truth
        with self._db.read() as conn:
            row = self._row(conn, session_id)
        if row.completed_at is not None:
            raise OffsetMismatch("the upload is complete", int(row.offset))
        if offset != row.offset:
            raise OffsetMismatch(f"the upload is at offset {row.offset}, not {offset}", int(row.offset))
        return row, self._open_tail(row), None

    def _await(self, session_id: str, before: _Pending | None) -> None:
        """Commit and wait for the answered appends up to ``before``; if they did not commit,
        neither can what follows them."""
        if before is None:
            return
        before.batch.submit()
        try:
            before.landed.result()
        except BaseException:
            with self._db.read() as conn:
                at = int(self._row(conn, session_id).offset)
            raise OffsetMismatch(
                f"the data before offset {at} was not stored after all; resume from there", at
            ) from None

    def _answer_later(
        self, session_id: str, step: _Step, before: _Pending | None, whole: Any, *, last: bool
    ) -> _Pending:
        """Add the append to the session's open batch (or a new one after ``before``'s); the
        session as answered. The batch is submitted now if it is full or ``last``. See
        :meth:`append`."""
        cfg = self._s.config
        if before is not None and before.batch.join(step):
            batch, joined = before.batch, True
        else:
            if before is not None:
                before.batch.submit()  # queued ahead of the new batch, which waits for it
            landed_before = None if before is None else before.landed
            deadline = time.monotonic() + cfg.append_commit_seconds
            batch = _Batch(partial(self._land, session_id), self._s.executor, landed_before, deadline)
            batch.join(step)
            joined = False
        # The commit runs later, but the session was live and extended as of the answer.
        # block_count and the tail object are the commit's to decide; None here, so nothing
        # trusts a stale one (the next append starts from the tail in memory).
        after = _row_after(
            step.row,
            offset=step.end,
            tail_name=None,
            expires_at=step.accepted + cfg.upload_session_seconds,
            block_count=None,
        )
        writer = step.writer
        if whole is not None:
            # For the next append (a failure forgets it), whose hash thread waits for this one's.
            self._hashers.keep(session_id, step.end, whole, writer.hashed)
        pending = _Pending(after, writer.tail, batch)
        self._s.pending.put(session_id, pending)
        # Added after the put, so it runs after it even if the batch has landed already. It
        # names the batch, not this append: an earlier append's tail is not kept alive.
        batch.landed.add_done_callback(lambda _: self._s.pending.drop(session_id, batch))
        if last or batch.bytes >= cfg.append_commit_bytes:
            batch.submit()
        elif not joined:
            self._s.pending.watch(batch)
        return pending

    def _land(self, session_id: str, steps: list[_Step], before: Future[None] | None) -> None:
        """On the pool: a batch of answered appends commits, after ``before`` (see :meth:`append`)."""
        try:
            if before is not None:
                before.result()  # queued earlier on this FIFO pool: running or done
            self._commit(steps)
        except BaseException as exc:
            for step in steps:
                step.writer.abort()
            self._hashers.forget(session_id)
            log.warning(
                "upload %s: data up to offset %d was not committed (%s)", session_id, steps[-1].end, exc
            )
            raise
        for step in steps:
            step.writer.committed()

    def _commit(self, steps: list[_Step]) -> None:
        """Commit appends in a row (blocks, the last one's tail, the offset); the replaced tail
        object goes after.

        The new tail object is stored here, while the writers' last blocks may still be on
        the pool, and synced with them in one batch: a pipelined append is answered before
        this runs, so sealing and writing up to a block is off the request's path. A failure
        deletes it.
        """
        last = steps[-1]
        tail = None
        if last.writer.tail:
            tail = self._store_tail_object(last.row.id, last.end - len(last.writer.tail), last.writer.tail)
        try:
            names = [] if tail is None else [tail]
            for step in steps[:-1]:
                names += step.writer.unsynced()
            last.writer.make_durable(also=names)
            with self._db.write() as conn:
                replaced = self._commit_append(conn, steps, tail)
        except BaseException:
            self._drop_tail_object(tail)
            raise
        if replaced is not None:
            # Unreferenced now. Deleted off the request's path (unlinking a MiB file is not
            # free); if the delete is lost, gc sweeps the object as an orphan.
            self._s.executor.submit(self._s.blocks.backend.delete, replaced)

    def _commit_append(self, conn: Connection, steps: list[_Step], tail: str | None) -> str | None:
        """Record the appends' blocks and advance the session past the last one, which must
        have been live when the first was answered (the expiry counts from the last's answer).
        Returns the tail object the session named before (the first append started from it)."""
        first, last = steps[0], steps[-1]
        current = self._row(conn, first.row.id, lock=True, now=first.accepted)
        if current.offset != first.row.offset or current.completed_at is not None:
            raise OffsetMismatch("another request appended to this upload meanwhile", int(current.offset))
        rows = []
        count = current.block_count
        for step in steps:
            step.writer.finish_in(conn, at=step.accepted)  # its blocks were stored by then
            for r in step.writer.refs:
                rows.append(
                    {
                        "upload_id": current.upload_id,
                        "idx": count,
                        "block_id": r.block_id,
                        "offset": step.start + r.offset,
                    }
                )
                count += 1
        _INSERT_UPLOAD_BLOCKS.execute_many(conn, rows)
        expires = last.accepted + self._s.config.upload_session_seconds
        _ADVANCE.execute(
            conn,
            {
                "b_id": current.id,
                "b_offset": last.end,
                "b_count": count,
                "b_tail": tail,
                "b_expires": expires,
            },
        )
        EXTEND_LEASE.execute(conn, {"b_upload": current.upload_id, "b_expires": expires})
        return current.tail_name  # type: ignore[no-any-return]

    # -- finishing -----------------------------------------------------------------------

    def _finalize(self, session_id: str) -> UploadSession:
        with self._db.read() as conn:
            row = self._row(conn, session_id)
        if not _needs_finalizing(row):
            return self._to_session(row)
        if row.tail_name is not None:
            self._store_tail(session_id)  # a crash came between declaring the length and this
        with self._db.read() as conn:
            row = self._row(conn, session_id)
            blocks = self._blocks(conn, row)
        whole = self._hashers.take(session_id, int(row.offset))
        sha = whole.digest() if whole is not None else self._read_back_hash(row, blocks)
        source = _SessionBlocks(row, blocks, sha, self._clock)
        # The target's folder existed when the session was created; if it was deleted since,
        # it comes back with the file rather than the upload failing until it expires.
        _, created = self._vol._commit_source(
            row.path, source, if_match=row.if_match, mtime=row.mtime, device=row.device, make_folders=True
        )
        return replace(self.get(session_id), created=created)

    def _store_tail(self, session_id: str) -> None:
        """Turn a session's tail into its last block (its end turned out to be the file's)."""
        with self._db.read() as conn:
            row = self._row(conn, session_id)
        data = self._open_tail(row)
        writer = self._writer(row.path, keep_tail=False)
        try:
            writer.consume(io.BytesIO(data))
            self._commit([_Step(row, writer, int(row.offset) - len(data), int(row.offset), self._clock())])
        except BaseException:
            writer.abort()
            raise
        writer.committed()

    def _read_back_hash(self, row: Row[Any], blocks: list[_Block]) -> bytes:
        h = hashlib.sha256()
        entry = Entry(0, row.path or "", "", False, int(row.offset), 0.0, 0.0)
        locations = [BlockLocation(x.offset, x.size, x.name, x.sha256, x.inline) for x in blocks]
        reader = VersionReader(entry, locations, self._s.blocks, self._vol.account.keys, self._s.executor)
        with reader:
            for data in reader.iter_range(0, int(row.offset)):
                h.update(data)
        return h.digest()

    # -- helpers -------------------------------------------------------------------------

    def _row(
        self, conn: Connection, session_id: str, *, lock: bool = False, now: float | None = None
    ) -> Row[Any]:
        """The session of this account live at ``now`` (default: the clock's), or :class:`NotFound`."""
        query = _SESSION_FOR_UPDATE if lock else _SESSION
        at = self._clock() if now is None else now
        params = {"b_id": session_id, "b_account": self._account_id, "b_now": at}
        row = query.first(conn, params)
        if row is None:
            raise NotFound("no such upload (it may have expired)")
        return row  # type: ignore[no-any-return]

    def _blocks(self, conn: Connection, row: Row[Any]) -> list[_Block]:
        rows = conn.execute(
            select(ub.idx, ub.offset, ub.block_id, b.size, b.name, b.sha256, b.inline_data)
            .join(t.blocks, b.id == ub.block_id)
            .where(ub.upload_id == row.upload_id, ub.idx < row.block_count)
            .order_by(ub.idx)
        ).all()
        return [
            _Block(
                int(r.block_id),
                int(r.offset),
                int(r.size),
                r.name,
                bytes(r.sha256),
                None if r.inline_data is None else bytes(r.inline_data),
            )
            for r in rows
        ]

    def _store_tail_object(self, session_id: str, at: int, data: bytes) -> str:
        """The tail, sealed like a block and bound to this session and offset, as its own object."""
        keys = self._vol.account.keys
        blob = seal(
            keys.block_cipher, _tail_binding(session_id, at), data, codec=CODEC_RAW, key_epoch=keys.epoch
        )
        name = f"{self._account_id}/tails/{session_id}.{secrets.token_hex(8)}"
        self._s.blocks.backend.put(name, blob, sync=False)  # synced with the blocks, before the commit
        return name

    def _drop_tail_object(self, name: str | None) -> None:
        if name is not None:
            self._s.blocks.backend.delete(name)

    def _open_tail(self, row: Row[Any]) -> bytes:
        if row.tail_name is None:
            return b""
        try:
            blob = self._s.blocks.backend.get(row.tail_name)
        except NotFound:
            raise IntegrityError(f"the upload's tail {row.tail_name} is missing from the store") from None
        keys = self._vol.account.keys
        at = int(row.offset) - (len(blob) - OVERHEAD)
        _, data = open_sealed(keys.block_cipher, _tail_binding(row.id, at), blob)
        return data

    def _writer(
        self,
        path: str | None,
        *,
        keep_tail: bool = True,
        hasher: Any = None,
        hash_after: Callable[[], None] | None = None,
        unhashed: int = 0,
    ) -> BlockWriter:
        cfg = self._s.config
        return BlockWriter(
            self._vol.account,
            self._db,
            self._s.blocks,
            self._s.executor,
            compress=not is_precompressed(paths.name_of(path) if path else None),
            depth=cfg.pipeline_depth,
            pin_every_bytes=cfg.pin_every_bytes,
            lease_seconds=cfg.write_lease_seconds,
            clock=self._clock,
            buffers=self._s.buffers,
            hash_threads=self._s.hash_threads,
            whole_hash=hasher is not None,
            hasher=hasher,
            hash_after=hash_after,
            unhashed=unhashed,
            keep_tail=keep_tail,
        )

    def _to_session(self, row: Any) -> UploadSession:
        completed = None
        if row.completed_at is not None and row.path is not None:
            try:
                completed = self._vol.stat(row.path)
            except NotFound:
                completed = None  # committed, then deleted or moved away since
        return UploadSession(
            row.id,
            row.kind,
            row.path,
            row.length,
            int(row.offset),
            row.meta,
            row.created_at,
            row.expires_at,
            completed,
        )


# The session's statements, prepared: built and run through SQLAlchemy, those of an
# append's commit (with the pin's lease, writer.EXTEND_LEASE) were 2 of its 3 ms of CPU
# (on the pool, beside the next append's blocks).
_SESSION_SELECT = select(t.upload_sessions).where(
    s_.id == bindparam("b_id"), s_.account_id == bindparam("b_account"), s_.expires_at >= bindparam("b_now")
)
_SESSION = Prepared(_SESSION_SELECT)
_SESSION_FOR_UPDATE = Prepared(_SESSION_SELECT.with_for_update())
_INSERT_UPLOAD_BLOCKS = Prepared(insert(t.upload_blocks), keys=("upload_id", "idx", "block_id", "offset"))
_ADVANCE = Prepared(
    update(t.upload_sessions)
    .where(s_.id == bindparam("b_id"))
    .values(
        offset=bindparam("b_offset"),
        block_count=bindparam("b_count"),
        tail_name=bindparam("b_tail"),
        expires_at=bindparam("b_expires"),
    )
)


def _tail_binding(session_id: str, at: int) -> bytes:
    """Associated data of a sealed tail: it cannot be moved to another session or offset."""
    return f"upload-tail/{session_id}/{at}".encode()


def _needs_finalizing(row: Row[Any]) -> bool:
    return (
        row.completed_at is None
        and row.path is not None
        and row.length is not None
        and row.offset == row.length
        and row.kind != "partial"
    )


@dataclass(frozen=True)
class _Block:
    block_id: int
    offset: int
    size: int
    name: str
    sha256: bytes
    inline: bytes | None


class _SessionBlocks:
    """What :meth:`Volume._commit` needs from a write, for a finished session."""

    def __init__(
        self, row: Row[Any], blocks: list[_Block], sha256: bytes, clock: Callable[[], float]
    ) -> None:
        self._row = row
        self._clock = clock
        self.refs = [BlockAt(x.block_id, x.offset) for x in blocks]
        self.size = int(row.offset)
        self.sha256 = sha256

    def finish_in(self, conn: Connection) -> None:
        """Inside the commit: the session completes (its pins can go: the version holds the blocks)."""
        done = conn.execute(
            update(t.upload_sessions)
            .where(s_.id == self._row.id, s_.completed_at.is_(None), s_.offset == self._row.offset)
            .values(completed_at=self._clock(), tail_name=None)
        ).rowcount
        if done != 1:
            raise OffsetMismatch("the upload changed while it was being finished", int(self._row.offset))
        conn.execute(delete(t.upload_blocks).where(ub.upload_id == self._row.upload_id))

    def retry_after(self, exc: Exception) -> None:
        raise exc

    def committed(self) -> None:
        pass
