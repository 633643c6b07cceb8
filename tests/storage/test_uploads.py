"""Upload sessions: appends in pieces, resumption, checksums, restarts, expiry, isolation."""

from __future__ import annotations

import gc
import hashlib
import io
import itertools
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from storage.config import StorageConfig
from storage.engine import Engine
from storage.errors import (
    BackendUnavailable,
    ChecksumMismatch,
    Conflict,
    IntegrityError,
    NotFound,
    OffsetMismatch,
    QuotaExceeded,
    TooLarge,
)
from storage.keys import MasterKey
from storage.metadata import schema as t
from storage.model import UploadSession
from storage.uploads import Checksum, Uploads
from storage.volume import Volume
from storage.writer import BlockWriter
from tests.storage.conftest import SMALL_CHUNKS, CountingReader, EngineFactory, HandOffs, VolatileTracking


@pytest.fixture
def vol(engine: Engine) -> Volume:
    engine.accounts.create("alice", "alice-password")
    return engine.volume("alice")


def _data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _pieces(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    at = 0
    for size in sizes:
        yield data[at : at + size]
        at += size
    if at < len(data):
        yield data[at:]


def _block_hashes(engine: Engine, vol: Volume, path: str) -> list[bytes]:
    version = vol.stat(path).version_id
    with engine.db.read() as conn:
        rows = conn.execute(
            select(t.blocks.c.sha256)
            .join(t.version_blocks, t.version_blocks.c.block_id == t.blocks.c.id)
            .where(t.version_blocks.c.version_id == version)
            .order_by(t.version_blocks.c.idx)
        )
        return [bytes(r.sha256) for r in rows]


def _assert_completed_as(done: UploadSession, vol: Volume, data: bytes, path: str = "f.bin") -> None:
    """The append that ended the upload reports the file committed, and ``path`` reads ``data``."""
    assert done.completed is not None and done.completed.sha256 == hashlib.sha256(data).digest()
    with vol.open(path) as r:
        assert r.read() == data


def _assert_collected_and_clean(engine: Engine) -> None:
    """After gc with no grace, fsck --deep finds nothing wrong and nothing leaked."""
    engine.gc(grace_seconds=0)
    check = engine.fsck(deep=True)
    assert check.clean and check.leak_free, check


def test_an_append_hands_each_block_to_the_pool_once_it_is_cut(
    engine: Engine, vol: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not one or two blocks later (the held-back tail, a first block held in case it is
    the only one): each append would start with the pool idle until it had read two more
    blocks past its first."""
    hand_offs = HandOffs(engine, monkeypatch)
    data = _data(3_000_000)
    step = 4096
    first = 1_000_000
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data))
    prefix = 0  # the tail the second append starts from
    for at, piece in ((0, data[:first]), (first, data[first:])):
        hand_offs.blocks.clear()
        hand_offs.body = CountingReader(piece, step)
        state = vol.uploads.append(up.id, at, hand_offs.body)
        assert len(hand_offs.blocks) > 5
        for start, _, read in hand_offs.blocks:
            assert prefix + read <= start + SMALL_CHUNKS.max_size + step
        # What the pool did not get: the tail (of the last append: stored on this thread).
        prefix += len(piece) - sum(size for _, size, _ in hand_offs.blocks)
        assert 0 < prefix <= SMALL_CHUNKS.max_size
    _assert_completed_as(state, vol, data)


def test_appends_in_pieces_make_the_same_blocks_as_one_write(engine: Engine, vol: Volume) -> None:
    data = _data(1_500_000)
    up = vol.uploads.create(kind="tus", path="big.bin", length=len(data), mtime=1_600_000_000)
    offset = 0
    for piece in _pieces(data, [1, 70_001, 333_333, 4096, 500_000]):
        state = vol.uploads.append(up.id, offset, io.BytesIO(piece))
        offset += len(piece)
        assert state.offset == offset
    assert state.completed is not None and state.completed.size == len(data)
    assert state.completed.sha256 == hashlib.sha256(data).digest()
    with vol.open("big.bin") as r:
        assert r.read() == data
    assert vol.stat("big.bin").mtime == 1_600_000_000
    vol.write("copy.bin", io.BytesIO(data))
    assert _block_hashes(engine, vol, "big.bin") == _block_hashes(engine, vol, "copy.bin")
    assert [c.op for c in vol.journal()][-2:] == ["create", "create"]
    assert len(vol.revisions("big.bin")) == 1
    assert vol.uploads.get(up.id).completed is not None  # still answerable until it expires


def test_each_append_syncs_its_blocks_and_tail_before_recording_them(
    make_engine: EngineFactory, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(database_url)
    tracking = VolatileTracking(engine.blocks.backend)
    engine.blocks.backend = tracking
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    seen: list[str] = []
    real = Uploads._commit_append

    def commit_append(self: Uploads, conn: Any, steps: list[Any], tail: Any) -> str | None:
        names = [
            r.stored.name
            for step in steps
            for r in step.writer.refs
            if r.stored is not None and r.stored.inline is None
        ]
        names += [tail] if tail is not None else []
        with tracking._lock:
            assert not tracking.volatile & set(names), "recorded before it was durable"
        seen.extend(names)
        return real(self, conn, steps, tail)

    monkeypatch.setattr(Uploads, "_commit_append", commit_append)
    data = _data(1_500_000)
    up = vol.uploads.create(kind="tus", path="big.bin", length=len(data))
    offset = 0
    for piece in _pieces(data, [300_000, 400_000, 500_000]):
        vol.uploads.append(up.id, offset, io.BytesIO(piece))
        vol.uploads.get(up.id)  # a status request: what was answered commits now
        offset += len(piece)
    with vol.open("big.bin") as r:
        assert r.read() == data
    assert any("/tails/" in name for name in seen)  # the held-back tails were put without sync
    assert len([n for n in seen if "/tails/" not in n]) >= 5
    assert not tracking.volatile


def test_resuming_from_the_wrong_offset_is_refused(vol: Volume) -> None:
    up = vol.uploads.create(kind="tus", path="f", length=10)
    vol.uploads.append(up.id, 0, io.BytesIO(b"01234"))
    with pytest.raises(OffsetMismatch) as err:
        vol.uploads.append(up.id, 3, io.BytesIO(b"34567"))
    assert err.value.offset == 5
    assert vol.uploads.append(up.id, 5, io.BytesIO(b"56789")).completed is not None
    with pytest.raises(OffsetMismatch):
        vol.uploads.append(up.id, 10, io.BytesIO(b"x"))


def test_a_session_whose_folders_were_deleted_meanwhile_brings_them_back(vol: Volume) -> None:
    vol.mkdir("photos")
    vol.mkdir("photos/2026")
    data = _data(300_000)
    up = vol.uploads.create(kind="tus", path="photos/2026/cat.jpg", length=len(data))
    vol.uploads.append(up.id, 0, io.BytesIO(data[:100_000]))
    vol.delete("photos")
    state = vol.uploads.append(up.id, 100_000, io.BytesIO(data[100_000:]))
    assert state.completed is not None and state.created
    with vol.open("photos/2026/cat.jpg") as r:
        assert r.read() == data
    assert vol.stat("photos").is_dir and vol.stat("photos/2026").is_dir
    # Journaled like any create, folders before the file, so sync clients follow.
    tail = [(c.op, c.path) for c in vol.journal()][-3:]
    assert tail == [("create", "photos"), ("create", "photos/2026"), ("create", "photos/2026/cat.jpg")]
    assert vol.revisions("photos/2026/cat.jpg")[0].size == len(data)


def test_a_file_in_the_way_of_a_sessions_folder_stops_it_until_moved(vol: Volume) -> None:
    vol.mkdir("docs")
    up = vol.uploads.create(kind="tus", path="docs/a.txt", length=10)
    vol.uploads.append(up.id, 0, io.BytesIO(b"01234"))
    vol.delete("docs")
    vol.write("docs", io.BytesIO(b"now a file"))
    with pytest.raises(Conflict, match="is a file"):
        vol.uploads.append(up.id, 5, io.BytesIO(b"56789"))
    with pytest.raises(NotFound):
        vol.stat("docs/a.txt")
    # Nothing was lost: once the file moves away, the received data commits.
    vol.move("docs", "docs.old")
    assert vol.uploads.get(up.id).completed is not None
    with vol.open("docs/a.txt") as r:
        assert r.read() == b"0123456789"


def test_a_checksum_mismatch_discards_the_piece(vol: Volume) -> None:
    up = vol.uploads.create(kind="tus", path="f", length=8)
    bad = Checksum("sha1", hashlib.sha1(b"other").digest())
    with pytest.raises(ChecksumMismatch):
        vol.uploads.append(up.id, 0, io.BytesIO(b"abcd"), checksum=bad)
    assert vol.uploads.get(up.id).offset == 0
    good = Checksum("sha256", hashlib.sha256(b"abcd").digest())
    assert vol.uploads.append(up.id, 0, io.BytesIO(b"abcd"), checksum=good).offset == 4
    done = vol.uploads.append(up.id, 4, io.BytesIO(b"efgh"))
    assert done.completed is not None and done.completed.sha256 == hashlib.sha256(b"abcdefgh").digest()


class Breaks(io.RawIOBase):
    """Gives ``good`` bytes, then fails like a dropped connection."""

    def __init__(self, good: bytes) -> None:
        self._good = io.BytesIO(good)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._good.readinto(buffer)
        if n:
            return n
        raise ConnectionResetError("client went away")


def test_an_interrupted_append_changes_nothing_and_resumes(engine: Engine, vol: Volume) -> None:
    data = _data(900_000, seed=2)
    up = vol.uploads.create(kind="resumable", path="f.bin", length=len(data))
    vol.uploads.append(up.id, 0, io.BytesIO(data[:300_000]))
    with pytest.raises(ConnectionResetError):
        vol.uploads.append(up.id, 300_000, Breaks(data[300_000:700_000]))
    assert vol.uploads.get(up.id).offset == 300_000
    with pytest.raises(NotFound):
        vol.stat("f.bin")
    done = vol.uploads.append(up.id, 300_000, io.BytesIO(data[300_000:]))
    assert done.completed is not None and done.completed.sha256 == hashlib.sha256(data).digest()
    _assert_collected_and_clean(engine)


def test_another_engine_on_the_same_database_resumes_and_hashes_by_reading_back(
    make_engine: EngineFactory, database_url: str
) -> None:
    """What a second node, or this one after a restart, sees: only the database and the block store.

    Nodes that share sessions do not pipeline appends (a Redis URL turns it off), so here
    the first engine commits before answering, as each node of a cluster does.
    """
    first = make_engine(database_url, pipelined_appends=False)
    first.accounts.create("alice", "alice-password")
    data = _data(700_000, seed=3)
    up = first.volume("alice").uploads.create(kind="tus", path="f.bin", length=len(data))
    first.volume("alice").uploads.append(up.id, 0, io.BytesIO(data[:250_000]))
    second = make_engine(database_url, master_key=first.config.master_key, blocks_url=first.config.blocks_url)
    vol2 = second.volume("alice")
    assert vol2.uploads.get(up.id).offset == 250_000
    done = vol2.uploads.append(up.id, 250_000, io.BytesIO(data[250_000:]))
    _assert_completed_as(done, vol2, data)


def test_deferred_length_and_empty_uploads(vol: Volume) -> None:
    up = vol.uploads.create(kind="tus", path="later.txt", length=None)
    assert vol.uploads.append(up.id, 0, io.BytesIO(b"hello ")).completed is None
    vol.uploads.append(up.id, 6, io.BytesIO(b"world"))
    with pytest.raises(Conflict):
        vol.uploads.declare_length(up.id, 3)
    done = vol.uploads.declare_length(up.id, 11)
    assert done.completed is not None
    with vol.open("later.txt") as r:
        assert r.read() == b"hello world"
    empty = vol.uploads.create(kind="tus", path="empty", length=0)
    assert empty.completed is not None and vol.stat("empty").size == 0


def test_limits_are_checked_when_the_session_is_created(engine: Engine, vol: Volume) -> None:
    with pytest.raises(TooLarge):
        vol.uploads.create(kind="tus", path="huge", length=engine.config.max_file_size + 1)
    engine.accounts.set_quota("alice", 1000)
    with pytest.raises(QuotaExceeded):
        vol.uploads.create(kind="tus", path="big", length=1001)
    with pytest.raises(Conflict):
        vol.uploads.create(kind="tus", path="no/such/folder/f", length=1)
    up = vol.uploads.create(kind="tus", path="f", length=4)
    with pytest.raises(TooLarge):
        vol.uploads.append(up.id, 0, io.BytesIO(b"12345"))
    assert vol.uploads.get(up.id).offset == 0


def test_sessions_belong_to_their_account(engine: Engine, vol: Volume) -> None:
    up = vol.uploads.create(kind="tus", path="f", length=3)
    engine.accounts.create("bob", "bob-password-1")
    bob = engine.volume("bob")
    for attempt in (
        lambda: bob.uploads.get(up.id),
        lambda: bob.uploads.append(up.id, 0, io.BytesIO(b"abc")),
        lambda: bob.uploads.delete(up.id),
    ):
        with pytest.raises(NotFound):
            attempt()
    assert vol.uploads.get(up.id).offset == 0


def test_expired_and_deleted_sessions_are_reclaimed(make_engine: EngineFactory, database_url: str) -> None:
    now = [1_000_000.0]
    engine = make_engine(database_url, clock=lambda: now[0])
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    expiring = vol.uploads.create(kind="tus", path="a", length=400_000)
    vol.uploads.append(expiring.id, 0, io.BytesIO(os.urandom(200_000)))
    terminated = vol.uploads.create(kind="tus", path="b", length=400_000)
    vol.uploads.append(terminated.id, 0, io.BytesIO(os.urandom(200_000)))
    vol.uploads.delete(terminated.id)
    with pytest.raises(NotFound):
        vol.uploads.get(terminated.id)
    now[0] += engine.config.upload_session_seconds + 1
    with pytest.raises(NotFound):
        vol.uploads.get(expiring.id)
    report = engine.gc(grace_seconds=0)
    assert report.blocks_deleted > 0
    with engine.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(t.upload_sessions)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(t.blocks)).scalar_one() == 0
    assert engine.fsck().leak_free


def test_an_append_committed_late_extends_the_session_from_when_it_was_answered(
    make_engine: EngineFactory, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pipelined append commits on the pool, maybe long after its answer; the clock
    # moving during that commit must neither refuse it nor stretch the session's life.
    now = [1_000_000.0]
    engine = make_engine(database_url, clock=lambda: now[0])
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    lifetime = engine.config.upload_session_seconds
    real = BlockWriter.finish_in

    def finish_in(self: BlockWriter, conn: Any, **kw: Any) -> None:
        now[0] += lifetime / 2  # inside the commit transaction, after the session was checked
        real(self, conn, **kw)

    monkeypatch.setattr(BlockWriter, "finish_in", finish_in)
    up = vol.uploads.create(kind="tus", path="f.bin", length=1_000_000)
    answered_at = now[0]  # the clock moves only in the commit
    assert vol.uploads.append(up.id, 0, io.BytesIO(_data(300_000))).offset == 300_000
    status = vol.uploads.get(up.id)
    assert status.offset == 300_000, "the commit went through"
    assert status.expires_at == answered_at + lifetime
    now[0] = answered_at + lifetime + 1
    with pytest.raises(NotFound):
        vol.uploads.get(up.id)
    # Its blocks are as old as the append, not as the commit: a grace period that the
    # append's time has passed but the commit's time has not still lets them go.
    assert engine.gc(grace_seconds=lifetime * 3 / 4).blocks_deleted > 0
    with engine.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(t.blocks)).scalar_one() == 0


def test_partial_uploads_concatenate_into_one_file(engine: Engine, vol: Volume) -> None:
    data = _data(1_000_000, seed=4)
    cuts = [0, 123_457, 500_000, 777_777, len(data)]
    parts = []
    for lo, hi in itertools.pairwise(cuts):
        part = vol.uploads.create(kind="partial", path=None, length=hi - lo)
        vol.uploads.append(part.id, 0, io.BytesIO(data[lo:hi]))
        parts.append(part.id)
    unfinished = vol.uploads.create(kind="partial", path=None, length=10)
    with pytest.raises(Conflict):
        vol.uploads.concat("joined.bin", [*parts, unfinished.id])
    final = vol.uploads.concat("joined.bin", parts, mtime=1_500_000_000)
    assert final.completed is not None and final.completed.sha256 == hashlib.sha256(data).digest()
    with vol.open("joined.bin") as r:
        assert r.read() == data
    with pytest.raises(NotFound):
        vol.uploads.get(parts[0])  # taken over by the final upload
    engine.gc(grace_seconds=0)
    check = engine.fsck(deep=True)
    assert check.clean, check


def test_the_tail_is_sealed_and_bound_to_its_session(make_engine: EngineFactory, tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'tail.db'}")
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    marker = b"PLAINTEXT-TAIL-MARKER-" * 20
    one = vol.uploads.create(kind="tus", path="one", length=10_000)
    two = vol.uploads.create(kind="tus", path="two", length=10_000)
    vol.uploads.append(one.id, 0, io.BytesIO(marker))
    vol.uploads.append(two.id, 0, io.BytesIO(b"x" * len(marker)))
    vol.uploads.get(one.id), vol.uploads.get(two.id)  # both appends committed
    engine.db.dispose()
    stored = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("tails" in str(p) for p in stored)
    assert not any(marker[:22] in p.read_bytes() for p in stored)
    with engine.db.write() as conn:  # point one session at the other's tail
        tail = conn.execute(
            select(t.upload_sessions.c.tail_name).where(t.upload_sessions.c.id == one.id)
        ).scalar_one()
        conn.execute(
            t.upload_sessions.update().where(t.upload_sessions.c.id == two.id).values(tail_name=tail)
        )
    with pytest.raises(IntegrityError):
        vol.uploads.append(two.id, len(marker), io.BytesIO(b"y"))


def test_a_partial_upload_of_deferred_length_keeps_its_last_bytes(vol: Volume) -> None:
    part = vol.uploads.create(kind="partial", path=None, length=None)
    vol.uploads.append(part.id, 0, io.BytesIO(b"first half, "))
    vol.uploads.declare_length(part.id, 12)
    other = vol.uploads.create(kind="partial", path=None, length=11)
    vol.uploads.append(other.id, 0, io.BytesIO(b"second half"))
    joined = vol.uploads.concat("joined.txt", [part.id, other.id])
    assert joined.completed is not None
    with vol.open("joined.txt") as r:
        assert r.read() == b"first half, second half"


# -- pipelined appends: answered once stored, committed while the next one arrives ----------


class HeldSyncs(VolatileTracking):
    """Syncs wait while ``hold`` is clear; ``fail_next`` makes the next sync fail (a full disk)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.hold = threading.Event()
        self.hold.set()
        self.fail_next = False

    def sync(self, names: Iterable[str]) -> None:
        assert self.hold.wait(30), "a sync was held for 30 s"
        with self._lock:
            fail, self.fail_next = self.fail_next, False
        if fail:
            raise BackendUnavailable("disk full (injected)")
        super().sync(names)


def _committed_offset(engine: Engine, session_id: str) -> int:
    with engine.db.read() as conn:
        return int(
            conn.execute(
                select(t.upload_sessions.c.offset).where(t.upload_sessions.c.id == session_id)
            ).scalar_one()
        )


def _commits_to(engine: Engine, session_id: str, offset: int) -> bool:
    """Whether the session's committed offset reaches ``offset`` within 10 s (no status
    request: that would commit it)."""
    deadline = time.monotonic() + 10
    while _committed_offset(engine, session_id) != offset:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _commit_threads() -> set[threading.Thread]:
    """The threads that commit answered appends by their deadline (of every engine)."""
    return {th for th in threading.enumerate() if th.name == "davserver-append-commits"}


def _no_commit_thread_but(earlier: set[threading.Thread]) -> bool:
    """Whether, within 10 s, no such thread is left but ``earlier`` ones (other tests')."""
    deadline = time.monotonic() + 10
    while _commit_threads() - earlier:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def held(make_engine: EngineFactory, database_url: str) -> tuple[Engine, Volume, HeldSyncs]:
    engine = make_engine(database_url)
    assert engine.config.appends_pipelined  # the default without Redis
    backend = HeldSyncs(engine.blocks.backend)
    engine.blocks.backend = backend
    engine.accounts.create("alice", "alice-password")
    return engine, engine.volume("alice"), backend


def test_an_append_is_answered_before_its_commit_and_a_status_waits_for_it(
    held: tuple[Engine, Volume, HeldSyncs],
) -> None:
    engine, vol, backend = held
    data = _data(1_500_000, seed=5)
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data))
    backend.hold.clear()  # the disk "stalls": nothing can become durable
    assert vol.uploads.append(up.id, 0, io.BytesIO(data[:300_000])).offset == 300_000
    # The next append starts from the answered offset and the tail in memory.
    assert vol.uploads.append(up.id, 300_000, io.BytesIO(data[300_000:700_000])).offset == 700_000
    assert _committed_offset(engine, up.id) == 0, "nothing is recorded before it is durable"
    assert vol.uploads.get(up.id, settle=False).offset == 700_000
    status: list[int] = []
    waiter = threading.Thread(target=lambda: status.append(vol.uploads.get(up.id).offset))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not status, "a status must wait for the commits it would report"
    backend.hold.set()
    waiter.join(30)
    assert status == [700_000]
    assert _committed_offset(engine, up.id) == 700_000
    done = vol.uploads.append(up.id, 700_000, io.BytesIO(data[700_000:]))
    _assert_completed_as(done, vol, data)
    assert len(vol.revisions("f.bin")) == 1
    assert not backend.volatile
    _assert_collected_and_clean(engine)


def test_an_answered_append_that_cannot_commit_makes_the_client_resume_from_the_durable_offset(
    held: tuple[Engine, Volume, HeldSyncs],
) -> None:
    engine, vol, backend = held
    data = _data(1_200_000, seed=6)
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data))
    assert vol.uploads.append(up.id, 0, io.BytesIO(data[:200_000])).offset == 200_000
    vol.uploads.get(up.id)  # committed
    backend.hold.clear()
    backend.fail_next = True  # the next append's blocks will not sync
    assert vol.uploads.append(up.id, 200_000, io.BytesIO(data[200_000:500_000])).offset == 500_000
    assert vol.uploads.append(up.id, 500_000, io.BytesIO(data[500_000:800_000])).offset == 800_000
    backend.hold.set()
    with pytest.raises(OffsetMismatch) as err:
        vol.uploads.append(up.id, 800_000, io.BytesIO(data[800_000:]))
    assert err.value.offset == 200_000, "both answered appends are gone, the one before stays"
    assert vol.uploads.get(up.id).offset == 200_000
    with pytest.raises(NotFound):
        vol.stat("f.bin")
    done = vol.uploads.append(up.id, 200_000, io.BytesIO(data[200_000:]))
    _assert_completed_as(done, vol, data)
    _assert_collected_and_clean(engine)


def test_a_batch_queued_behind_one_that_fails_fails_too_and_drops_its_pins(
    make_engine: EngineFactory, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each append its own batch (commit size 0), pinned as it is written (64 KiB pins).
    engine = make_engine(database_url, append_commit_bytes=0, pin_every_bytes=64 << 10, workers=4)
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    gate = threading.Event()
    failed: list[bool] = []
    real = Uploads._commit_append

    def first_fails(self: Uploads, conn: Any, steps: list[Any], tail: Any) -> str | None:
        if not failed:
            failed.append(True)
            assert gate.wait(30)
            raise BackendUnavailable("the database went away (injected)")
        return real(self, conn, steps, tail)

    monkeypatch.setattr(Uploads, "_commit_append", first_fails)
    data = _data(1_200_000, seed=19)
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data))
    assert vol.uploads.append(up.id, 0, io.BytesIO(data[:400_000])).offset == 400_000
    # Answered while the first batch is still committing: its batch waits for that one.
    assert vol.uploads.append(up.id, 400_000, io.BytesIO(data[400_000:800_000])).offset == 800_000
    gate.set()
    assert vol.uploads.get(up.id).offset == 0
    for _ in range(50):  # and keep none: a pin still under way must be dropped too
        with engine.db.read() as conn:
            pins = conn.execute(
                select(func.count()).select_from(t.uploads).where(t.uploads.c.kind == "stream")
            ).scalar_one()
        assert pins == 0, "the failed appends' writers must drop their pins"
        time.sleep(0.02)
    done = vol.uploads.append(up.id, 0, io.BytesIO(data))
    _assert_completed_as(done, vol, data)
    _assert_collected_and_clean(engine)


def _tail_objects(engine: Engine, expected: int) -> list[str]:
    """The session tails in the store, once there are ``expected`` of them (replaced tails
    are deleted on the pool, after the commit) or after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        names = [o.name for o in engine.blocks.backend.list() if "/tails/" in o.name]
        if len(names) == expected or time.monotonic() > deadline:
            return names
        time.sleep(0.01)


def test_a_session_keeps_one_tail_object_and_a_failed_commit_leaves_none(
    held: tuple[Engine, Volume, HeldSyncs],
) -> None:
    engine, vol, backend = held
    data = _data(1_200_000, seed=9)
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data))
    for at in range(0, 800_000, 200_000):
        vol.uploads.append(up.id, at, io.BytesIO(data[at : at + 200_000]))
        vol.uploads.get(up.id)  # committed
    kept = _tail_objects(engine, 1)
    assert len(kept) == 1, "each commit deletes the tail its append started from"
    backend.fail_next = True  # the next append's blocks and tail will not sync
    vol.uploads.append(up.id, 800_000, io.BytesIO(data[800_000:1_000_000]))
    assert vol.uploads.get(up.id).offset == 800_000
    assert _tail_objects(engine, 1) == kept, "the failed commit's tail object is deleted"
    vol.uploads.append(up.id, 800_000, io.BytesIO(data[800_000:]))
    with vol.open("f.bin") as r:
        assert r.read() == data
    assert _tail_objects(engine, 0) == []


def test_closing_the_engine_commits_the_appends_it_answered(
    make_engine: EngineFactory, database_url: str
) -> None:
    first = make_engine(database_url, append_commit_seconds=3600)
    first.accounts.create("alice", "alice-password")
    data = _data(900_000, seed=7)
    up = first.volume("alice").uploads.create(kind="tus", path="f.bin", length=len(data))
    uploads = first.volume("alice").uploads
    earlier = _commit_threads()
    assert uploads.append(up.id, 0, io.BytesIO(data[:400_000])).offset == 400_000
    time.sleep(0.2)  # its deadline thread is waiting (an hour) by now
    first.close()
    assert _no_commit_thread_but(earlier), "a closed engine left its deadline thread waiting"
    again = make_engine(database_url, master_key=first.config.master_key, blocks_url=first.config.blocks_url)
    vol = again.volume("alice")
    assert vol.uploads.get(up.id).offset == 400_000
    done = vol.uploads.append(up.id, 400_000, io.BytesIO(data[400_000:]))
    assert done.completed is not None and done.completed.sha256 == hashlib.sha256(data).digest()


def test_answered_appends_commit_together_once_they_hold_the_commit_size(
    make_engine: EngineFactory, database_url: str
) -> None:
    engine = make_engine(database_url, append_commit_bytes=2_000_000, append_commit_seconds=3600)
    backend = VolatileTracking(engine.blocks.backend)
    engine.blocks.backend = backend
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    data = _data(4_000_000, seed=16)
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data))
    assert vol.uploads.append(up.id, 0, io.BytesIO(data[:800_000])).offset == 800_000
    assert vol.uploads.append(up.id, 800_000, io.BytesIO(data[800_000:1_600_000])).offset == 1_600_000
    time.sleep(0.3)
    assert _committed_offset(engine, up.id) == 0, "under the commit size, nothing commits yet"
    assert backend.syncs == 0
    assert vol.uploads.append(up.id, 1_600_000, io.BytesIO(data[1_600_000:2_400_000])).offset == 2_400_000
    assert _commits_to(engine, up.id, 2_400_000), "a full batch commits without being asked"
    assert backend.syncs == 1, "one sync for the three appends"
    # A status request commits the open batch at once (its deadline is an hour away).
    assert vol.uploads.append(up.id, 2_400_000, io.BytesIO(data[2_400_000:3_200_000])).offset == 3_200_000
    assert vol.uploads.get(up.id).offset == 3_200_000
    assert _committed_offset(engine, up.id) == 3_200_000 and backend.syncs == 2
    # The last append joins the open batch, which commits (one more sync) before the file does.
    assert vol.uploads.append(up.id, 3_200_000, io.BytesIO(data[3_200_000:3_600_000])).offset == 3_600_000
    done = vol.uploads.append(up.id, 3_600_000, io.BytesIO(data[3_600_000:]))
    assert backend.syncs == 3
    _assert_completed_as(done, vol, data)
    assert len(vol.revisions("f.bin")) == 1
    assert not backend.volatile
    _assert_collected_and_clean(engine)


def test_an_answered_append_commits_within_the_commit_seconds_unasked(
    make_engine: EngineFactory, database_url: str
) -> None:
    engine = make_engine(database_url, append_commit_seconds=0.2)
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    data = _data(900_000, seed=17)
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data))
    earlier = _commit_threads()
    assert vol.uploads.append(up.id, 0, io.BytesIO(data[:300_000])).offset == 300_000
    assert _commits_to(engine, up.id, 300_000), "an idle session's answered data must become durable"
    assert _no_commit_thread_but(earlier), "the thread that commits by the deadline outlived its work"
    assert vol.uploads.append(up.id, 300_000, io.BytesIO(data[300_000:600_000])).offset == 600_000
    assert _commits_to(engine, up.id, 600_000), "the thread starts again for the next batch"
    done = vol.uploads.append(up.id, 600_000, io.BytesIO(data[600_000:]))
    assert done.completed is not None and done.completed.sha256 == hashlib.sha256(data).digest()


class _Meeting:
    """A body whose first read waits until the other racing append has started reading too."""

    def __init__(self, data: bytes, barrier: threading.Barrier) -> None:
        self._body = io.BytesIO(data)
        self._barrier: threading.Barrier | None = barrier

    def read(self, size: int = -1) -> bytes:
        if self._barrier is not None:
            self._barrier.wait(timeout=30)
            self._barrier = None
        return self._body.read(size)


def test_two_appends_racing_from_one_offset_leave_a_consistent_session(
    make_engine: EngineFactory, database_url: str
) -> None:
    """A client resending a chunk while the first copy is still arriving: both are answered
    from the same offset, at most one of them is committed, and the session's durable offset
    and data agree, so the upload completes from what a status reports."""
    engine = make_engine(database_url, append_commit_seconds=3600, workers=1)
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    data = _data(1_000_000, seed=18)
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data))
    assert vol.uploads.append(up.id, 0, io.BytesIO(data[:300_000])).offset == 300_000  # batch open
    barrier = threading.Barrier(2)
    answers: list[int | Exception] = []

    def send(end: int) -> None:
        try:
            answers.append(vol.uploads.append(up.id, 300_000, _Meeting(data[300_000:end], barrier)).offset)
        except OffsetMismatch as exc:
            answers.append(exc)

    racers = [threading.Thread(target=send, args=(end,)) for end in (600_000, 500_000)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    assert not any(racer.is_alive() for racer in racers) and len(answers) == 2
    statuses: list[Any] = []
    asking = threading.Thread(target=lambda: statuses.append(vol.uploads.get(up.id)), daemon=True)
    asking.start()  # a status commits what can be committed
    asking.join(30)
    assert statuses, "the status hung: a batch waits on the pool for one never queued"
    status = statuses[0]
    assert status.offset in (500_000, 600_000)
    assert _committed_offset(engine, up.id) == status.offset
    done = vol.uploads.append(up.id, status.offset, io.BytesIO(data[status.offset :]))
    _assert_completed_as(done, vol, data)


def test_without_pipelining_an_append_is_committed_when_answered(
    make_engine: EngineFactory, database_url: str
) -> None:
    engine = make_engine(database_url, pipelined_appends=False)
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    up = vol.uploads.create(kind="tus", path="f.bin", length=500_000)
    vol.uploads.append(up.id, 0, io.BytesIO(_data(200_000)))
    assert _committed_offset(engine, up.id) == 200_000


def test_nodes_sharing_redis_do_not_pipeline_appends(tmp_path: Path) -> None:
    base = StorageConfig(
        database_url="sqlite://", blocks_url=f"file://{tmp_path}", master_key=MasterKey.generate()
    )
    assert base.appends_pipelined
    assert not replace(base, redis_url="redis://127.0.0.1:6379/0").appends_pipelined
    assert replace(base, redis_url="redis://127.0.0.1:6379/0", pipelined_appends=True).appends_pipelined


def test_pipelined_commits_finish_on_a_pool_of_one_thread(
    make_engine: EngineFactory, database_url: str
) -> None:
    """A commit on the pool pins its last blocks itself: a pin it queued behind the next
    append's commit (which waits for it) would never run with every worker waiting."""
    engine = make_engine(database_url, workers=1, pin_every_bytes=64 << 10)
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    data = _data(1_500_000, seed=8)
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data))
    result: list[Any] = []

    def upload() -> None:
        offset = 0
        for piece in _pieces(data, [400_000, 400_000, 400_000]):
            offset = vol.uploads.append(up.id, offset, io.BytesIO(piece)).offset
        result.append(vol.uploads.get(up.id))

    worker = threading.Thread(target=upload, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the upload's commits deadlocked on the pool"
    assert result and result[0].completed is not None
    assert result[0].completed.sha256 == hashlib.sha256(data).digest()


class _GatedHash:
    """A SHA-256 that holds the piece reaching ``hold_at`` bytes until ``gate`` opens: the
    whole-file hash thread is still busy with an append's last piece."""

    def __init__(self, hold_at: int) -> None:
        self.gate = threading.Event()
        self._h = hashlib.sha256()
        self._hold_at = hold_at
        self._seen = 0

    def update(self, data: bytes | memoryview) -> None:
        self._seen += len(data)
        if self._seen >= self._hold_at:
            self.gate.wait()
        self._h.update(data)

    def copy(self) -> Any:
        return self._h.copy()

    def digest(self) -> bytes:
        return self._h.digest()


def _answered_while_held(gated: _GatedHash, append: Callable[[], int], waited: str) -> int:
    """Run ``append`` on a thread while ``gated`` holds the hash: it must answer anyway
    (``waited``: the failure message). The gate opens afterwards, whatever happened."""
    answered: list[int] = []
    thread = threading.Thread(target=lambda: answered.append(append()))
    thread.start()
    thread.join(timeout=30)
    try:
        assert not thread.is_alive(), waited
        assert len(answered) == 1
        return answered[0]
    finally:
        gated.gate.set()
        thread.join()


def test_a_pipelined_append_is_answered_before_its_whole_file_hash_is_done(vol: Volume) -> None:
    """The hash of an append's last pieces finishes on its thread; the next append's hash
    thread waits for it before going on, so the file's SHA-256 is still that of every byte."""
    data = _data(1_500_000, seed=11)
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data))
    gated = _GatedHash(hold_at=900_000)
    vol.uploads._hashers.keep(up.id, 0, gated)
    offset = _answered_while_held(
        gated,
        lambda: vol.uploads.append(up.id, 0, io.BytesIO(data[:900_000])).offset,
        "the append waited for its hash thread before answering",
    )
    assert offset == 900_000
    done = vol.uploads.append(up.id, 900_000, io.BytesIO(data[900_000:]))
    assert done.completed is not None and done.completed.sha256 == hashlib.sha256(data).digest()


def _no_read_back(*_: object) -> bytes:
    raise AssertionError("the session's hasher was lost: the file was read back to hash it")


def test_the_next_append_does_not_wait_for_the_previous_ones_hash(
    vol: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second append's hash thread waits for the first one's, not the request: a client
    sending chunks back to back never waits for hashing between them (only, as before, when
    more pieces than the pipeline's depth wait to be hashed)."""
    monkeypatch.setattr(Uploads, "_read_back_hash", _no_read_back)
    data = _data(1_500_000, seed=12)
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data))
    gated = _GatedHash(hold_at=900_000)
    vol.uploads._hashers.keep(up.id, 0, gated)
    assert vol.uploads.append(up.id, 0, io.BytesIO(data[:900_000])).offset == 900_000
    offset = _answered_while_held(
        gated,
        lambda: vol.uploads.append(up.id, 900_000, io.BytesIO(data[900_000:1_100_000])).offset,
        "the second append waited for the first one's hash",
    )
    assert offset == 1_100_000
    done = vol.uploads.append(up.id, 1_100_000, io.BytesIO(data[1_100_000:]))
    assert done.completed is not None and done.completed.sha256 == hashlib.sha256(data).digest()


def test_an_append_failing_while_the_previous_one_still_hashes_leaves_the_hash_between_them(
    vol: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file's hash must come from the kept hasher: a read-back would hide a lost one.
    monkeypatch.setattr(Uploads, "_read_back_hash", _no_read_back)
    data = _data(1_800_000, seed=13)
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data))
    gated = _GatedHash(hold_at=900_000)
    vol.uploads._hashers.keep(up.id, 0, gated)
    vol.uploads.append(up.id, 0, io.BytesIO(data[:900_000]))
    wrong = Checksum("sha256", hashlib.sha256(b"something else").digest())
    failed: list[BaseException] = []

    def bad_append() -> None:
        try:
            vol.uploads.append(up.id, 900_000, io.BytesIO(data[900_000:]), checksum=wrong)
        except BaseException as exc:  # handed to the test thread
            failed.append(exc)

    second = threading.Thread(target=bad_append)
    second.start()
    time.sleep(0.2)  # the failure is being handled while the first append's hash is held
    gated.gate.set()
    second.join(timeout=30)
    assert not second.is_alive()
    assert len(failed) == 1 and isinstance(failed[0], ChecksumMismatch)
    # The kept hash is the one as of 900,000 bytes, not one that saw the refused piece.
    done = vol.uploads.append(up.id, 900_000, io.BytesIO(data[900_000:]))
    assert done.completed is not None and done.completed.sha256 == hashlib.sha256(data).digest()


def test_an_append_holds_on_to_no_writer_but_the_one_before_it(
    vol: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each append's hash thread waits for the previous append's: once it has, nothing may keep
    that writer (its blocks' data, its tail) alive, or memory grows with every chunk."""
    made: list[weakref.ref[BlockWriter]] = []
    original = Uploads._writer

    def recording(self: Uploads, *args: Any, **kwargs: Any) -> BlockWriter:
        writer = original(self, *args, **kwargs)
        made.append(weakref.ref(writer))
        return writer

    monkeypatch.setattr(Uploads, "_writer", recording)
    data = _data(1_200_000, seed=14)
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data) + 1)
    offset = 0
    for piece in _pieces(data, [200_000] * 6):
        offset = vol.uploads.append(up.id, offset, io.BytesIO(piece)).offset
    vol.uploads.get(up.id)  # the last answered append has committed
    gc.collect()
    alive = [i for i, ref in enumerate(made) if ref() is not None]
    assert len(made) == 6 and alive == [5], alive  # the last one: its hash is the session's


class _BrokenHash(_GatedHash):
    """Hashes the first piece (inline, on the writer's thread), then breaks (on the hash thread)."""

    def update(self, data: bytes | memoryview) -> None:
        if self._seen:
            raise OSError("the hash broke")
        self._seen += len(data)


def test_a_hash_thread_that_fails_fails_the_file_and_never_blocks_the_writer(vol: Volume) -> None:
    data = _data(1_500_000, seed=15)
    up = vol.uploads.create(kind="tus", path="f.bin", length=len(data))
    vol.uploads._hashers.keep(up.id, 0, _BrokenHash(hold_at=0))
    finished = threading.Event()
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            offset = 0
            for piece in _pieces(data, [500_000, 500_000, 500_000]):
                offset = vol.uploads.append(up.id, offset, io.BytesIO(piece)).offset
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)
        finished.set()

    threading.Thread(target=upload, daemon=True).start()
    assert finished.wait(30), "a writer blocked on the queue of a hash thread that had died"
    assert errors
    with pytest.raises(NotFound):
        vol.stat("f.bin")
