"""The Volume facade on SQLite and PostgreSQL: tree operations, versions, isolation."""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import unicodedata
from typing import Any

import pytest
from sqlalchemy import event, select

from storage import paths
from storage.engine import Engine
from storage.envelope import seal
from storage.errors import (
    AlreadyExists,
    BackendUnavailable,
    Conflict,
    IntegrityError,
    InvalidName,
    NotFound,
    PreconditionFailed,
    QuotaExceeded,
    TooLarge,
)
from storage.metadata import schema as t
from storage.volume import Volume
from storage.writer import BlockWriter, HashThreads, WholeHash
from tests.e2e.harness import wait_until
from tests.storage.conftest import SMALL_CHUNKS, CountingReader, EngineFactory, HandOffs, VolatileTracking


@pytest.fixture
def vol(engine: Engine) -> Volume:
    engine.accounts.create("alice", "correct horse")
    return engine.volume("alice")


def put(vol: Volume, path: str, data: bytes, **kw: object) -> None:
    vol.write(path, io.BytesIO(data), **kw)  # type: ignore[arg-type]


def read(vol: Volume, path: str, **kw: object) -> bytes:
    with vol.open(path, **kw) as f:  # type: ignore[arg-type]
        return f.read()


@pytest.mark.parametrize("size", [0, 1, 4096, (256 << 10) + 1, 3 << 20])
def test_written_bytes_read_back_identical(vol: Volume, size: int) -> None:
    data = os.urandom(size)
    put(vol, "f.bin", data)
    assert read(vol, "f.bin") == data
    entry = vol.stat("f.bin")
    assert entry.size == size
    assert entry.sha256 == hashlib.sha256(data).digest()
    assert entry.etag is not None and entry.etag.startswith('"')


def test_ranges_seek_to_the_right_block(vol: Volume) -> None:
    data = os.urandom(2 << 20)
    put(vol, "r.bin", data)
    rng = random.Random(7)
    with vol.open("r.bin") as f:
        for _ in range(60):
            start = rng.randrange(len(data))
            length = rng.randrange(1, 300_000)
            f.seek(start)
            assert f.read(length) == data[start : start + length]
        assert b"".join(f.iter_range(100, 1_500_000)) == data[100:1_500_000]
        f.seek(0, io.SEEK_END)
        assert f.read(10) == b""


def test_overwrite_keeps_every_revision_readable(vol: Volume) -> None:
    contents = [f"version {i}\n".encode() * (i + 1) for i in range(5)]
    for c in contents:
        put(vol, "notes.txt", c)
    revs = vol.revisions("notes.txt")
    assert [r.size for r in revs] == [len(c) for c in reversed(contents)]
    assert revs[0].is_current and not any(r.is_current for r in revs[1:])
    for rev, c in zip(reversed(revs), contents, strict=True):
        assert read(vol, "notes.txt", version_id=rev.version_id) == c
    assert read(vol, "notes.txt") == contents[-1]


def test_etag_changes_with_content_and_preconditions_hold(vol: Volume) -> None:
    put(vol, "a.txt", b"one")
    etag1 = vol.stat("a.txt").etag
    assert etag1 is not None
    with pytest.raises(PreconditionFailed):
        put(vol, "a.txt", b"two", if_none_match="*")
    with pytest.raises(PreconditionFailed):
        put(vol, "a.txt", b"two", if_match='"nope"')
    put(vol, "a.txt", b"two", if_match=etag1)
    assert vol.stat("a.txt").etag != etag1
    with pytest.raises(PreconditionFailed):
        put(vol, "a.txt", b"three", if_match=etag1)
    with pytest.raises(PreconditionFailed):
        put(vol, "new.txt", b"x", if_match="*")
    put(vol, "new.txt", b"x", if_none_match="*")
    assert read(vol, "a.txt") == b"two"


def test_tree_errors_are_typed(vol: Volume) -> None:
    with pytest.raises(Conflict):
        put(vol, "missing/f.txt", b"x")
    with pytest.raises(Conflict):
        vol.mkdir("a/b")
    vol.mkdir("a")
    with pytest.raises(AlreadyExists):
        vol.mkdir("a")
    put(vol, "file", b"x")
    with pytest.raises(Conflict):
        put(vol, "file/child", b"x")
    with pytest.raises(Conflict):
        put(vol, "a", b"x")
    with pytest.raises(NotFound):
        vol.stat("nope")
    with pytest.raises(Conflict):
        vol.listdir("file")
    with pytest.raises(Conflict):
        vol.delete("")


@pytest.mark.parametrize("bad", ["a\\b", "x\x00y", "tab\there", "..", "a/../b", "é" * 200])
def test_unstorable_names_are_refused(vol: Volume, bad: str) -> None:
    with pytest.raises(InvalidName):
        put(vol, bad, b"x")


def test_nfc_and_nfd_names_are_one_file(vol: Volume) -> None:
    nfd = unicodedata.normalize("NFD", "café.txt")
    put(vol, nfd, b"mac")
    put(vol, "café.txt", b"linux")
    assert [e.name for e in vol.listdir("")] == ["café.txt"]
    assert read(vol, nfd) == b"linux"


def test_listing_is_one_query_whatever_the_folder_size(vol: Volume, engine: Engine) -> None:
    vol.mkdir("big")
    for i in range(40):
        put(vol, f"big/{i:03}.txt", b"x" * i)
    statements: list[str] = []

    def count(*args: object) -> None:
        if str(args[2]).lstrip().upper().startswith("SELECT"):
            statements.append(str(args[2]))

    event.listen(engine.db.engine, "before_cursor_execute", count)
    try:
        entries = vol.listdir("big")
        first = len(statements)
        again = vol.listdir("big")
    finally:
        event.remove(engine.db.engine, "before_cursor_execute", count)
    assert [e.size for e in entries] == list(range(40))
    assert first == 3  # the account's generation, resolve the folder, list its children
    # Cached under the generation: only the generation is read again.
    assert again == entries and len(statements) == first + 1


def test_move_keeps_node_identity_history_and_properties(vol: Volume) -> None:
    vol.mkdir("src")
    vol.mkdir("src/deep")
    put(vol, "src/deep/f.txt", b"v1")
    put(vol, "src/deep/f.txt", b"v2")
    vol.set_properties("src/deep/f.txt", {"{urn:x}color": "blue"})
    before = vol.stat("src/deep/f.txt")
    vol.move("src", "dst")
    after = vol.stat("dst/deep/f.txt")
    assert after.node_id == before.node_id and after.etag == before.etag
    assert len(vol.revisions("dst/deep/f.txt")) == 2
    assert vol.get_properties("dst/deep/f.txt") == {"{urn:x}color": "blue"}
    with pytest.raises(NotFound):
        vol.stat("src/deep/f.txt")
    assert [e.path for e in vol.walk("")] == ["dst", "dst/deep", "dst/deep/f.txt"]


def test_move_refuses_cycles_and_respects_overwrite(vol: Volume) -> None:
    vol.mkdir("a")
    vol.mkdir("a/b")
    with pytest.raises(Conflict):
        vol.move("a", "a/b/c")
    put(vol, "x", b"x")
    put(vol, "y", b"y")
    with pytest.raises(AlreadyExists):
        vol.move("x", "y")
    vol.move("x", "y", overwrite=True)
    assert read(vol, "y") == b"x"
    assert vol.quota().used_bytes == 2  # the replaced file is in the trash, still retained


def test_move_and_copy_onto_a_folder_holding_the_source_are_refused(vol: Volume) -> None:
    # Replacing the destination would trash it, and the source inside it with it.
    vol.mkdir("q")
    vol.mkdir("q/a")
    put(vol, "q/a/f.txt", b"keep")
    for transfer in (vol.move, vol.copy):
        for src, dst in (("q/a/f.txt", "q"), ("q/a/f.txt", "q/a"), ("q/a", "q")):
            with pytest.raises(Conflict):
                transfer(src, dst, overwrite=True)
    assert read(vol, "q/a/f.txt") == b"keep"
    assert vol.trash() == []


def test_a_move_copy_or_restore_that_would_make_a_path_too_long_is_refused(vol: Volume) -> None:
    # Only the destination's own path was checked: a file below it ended up unreachable.
    deep = ""
    for _ in range(16):  # 240 bytes a name: 3855 bytes with the slashes
        deep = paths.join(deep, "é" * 120)
        vol.mkdir(deep)
    leaf = "s/" + "f" * 230 + "/" + "l" * 100 + ".txt"  # 3857 + 336 bytes once under deep
    vol.mkdir("s")
    vol.mkdir("s/" + "f" * 230)
    put(vol, leaf, b"leaf")
    for transfer in (vol.move, vol.copy):
        with pytest.raises(InvalidName):
            transfer("s", deep + "/s")
    assert read(vol, leaf) == b"leaf"
    item = vol.delete("s")
    with pytest.raises(InvalidName):
        vol.restore_from_trash(item, deep + "/s")
    vol.restore_from_trash(item)
    # A move that keeps the paths' length (or shortens them) needs no look at the subtree.
    vol.move("s", "t")
    assert read(vol, "t" + leaf[1:]) == b"leaf"


def test_copy_shares_blocks_and_copies_properties(vol: Volume, engine: Engine) -> None:
    vol.mkdir("album")
    payload = os.urandom(1 << 20)
    put(vol, "album/a.raw", payload)
    vol.set_properties("album", {"{DAV:}displayname": "Album"})
    unique_before = engine.stats().unique_block_bytes
    vol.copy("album", "album copy")
    assert read(vol, "album copy/a.raw") == payload
    assert vol.get_properties("album copy") == {"{DAV:}displayname": "Album"}
    assert engine.stats().unique_block_bytes == unique_before
    assert vol.stat("album copy/a.raw").node_id != vol.stat("album/a.raw").node_id
    assert vol.quota().used_bytes == 2 * len(payload)


def test_copy_of_a_deep_tree_in_bulk(vol: Volume, engine: Engine) -> None:
    """Every level, file, empty file, folder property and journal entry is copied."""
    files = {
        "t/a.txt": b"a",
        "t/empty": b"",
        "t/sub/b.bin": os.urandom(300_000),
        "t/sub/deeper/c.txt": b"c" * 10,
        "t/sub/deeper/deepest/d.txt": b"d",
    }
    for folder in ("t", "t/sub", "t/sub/deeper", "t/sub/deeper/deepest", "t/emptydir"):
        vol.mkdir(folder)
    for path, data in files.items():
        put(vol, path, data)
    vol.set_properties("t/sub/deeper", {"{urn:x}p": "folder"})
    vol.set_properties("t/sub/b.bin", {"{urn:x}p": "file", "{urn:x}q": "2"})
    seq_before = vol.journal(after=0, limit=10_000)[-1].seq
    vol.copy("t", "u")
    for path, data in files.items():
        assert read(vol, "u" + path[1:]) == data
    assert vol.stat("u/emptydir").is_dir
    assert vol.get_properties("u/sub/deeper") == {"{urn:x}p": "folder"}
    assert vol.get_properties("u/sub/b.bin") == {"{urn:x}p": "file", "{urn:x}q": "2"}
    assert [e.path for e in vol.walk("u")] == ["u" + e.path[1:] for e in vol.walk("t")]
    changes = vol.journal(after=seq_before)
    first = changes[0].seq
    assert first > seq_before
    assert [c.seq for c in changes] == list(range(first, first + len(changes)))
    assert sorted(c.path for c in changes) == sorted(["u", *("u" + e.path[1:] for e in vol.walk("t"))])
    assert vol.quota().used_bytes == 2 * sum(map(len, files.values()))
    assert engine.fsck(deep=True).clean
    # Changing the copy leaves the original alone.
    put(vol, "u/sub/b.bin", b"changed")
    assert read(vol, "t/sub/b.bin") == files["t/sub/b.bin"]


def test_copy_over_quota_changes_nothing(engine: Engine) -> None:
    engine.accounts.create("q", "quota person", 1_000_000)
    vol = engine.volume("q")
    vol.mkdir("t")
    put(vol, "t/f", os.urandom(600_000))
    with pytest.raises(QuotaExceeded):
        vol.copy("t", "u")
    with pytest.raises(NotFound):
        vol.stat("u")
    assert vol.quota().used_bytes == 600_000


def test_delete_moves_to_trash_which_counts_until_purged(vol: Volume) -> None:
    vol.mkdir("d")
    put(vol, "d/one", b"1" * 100)
    put(vol, "d/two", b"2" * 50)
    put(vol, "top", b"t" * 10)
    assert vol.quota().used_bytes == 160
    vol.delete("d")
    assert vol.quota().used_bytes == 160
    with pytest.raises(NotFound):
        vol.stat("d/one")
    vol.mkdir("d")  # the name is free again
    put(vol, "d/one", b"new")
    assert read(vol, "d/one") == b"new"
    assert vol.purge_trash() == 3
    assert vol.quota().used_bytes == 13


def test_quota_is_enforced_and_nothing_is_committed(engine: Engine) -> None:
    engine.accounts.create("q", "password1", quota=1000)
    vol = engine.volume("q")
    put(vol, "fits", b"x" * 600)
    with pytest.raises(QuotaExceeded):
        put(vol, "too-much", b"y" * 600)
    with pytest.raises(QuotaExceeded):
        put(vol, "declared", b"", size_hint=5000)
    with pytest.raises(NotFound):
        vol.stat("too-much")
    with pytest.raises(QuotaExceeded):
        put(vol, "fits", b"z" * 900)  # the old version is retained: both must fit
    put(vol, "fits", b"z" * 400)
    assert vol.quota().used_bytes == 1000
    assert engine.fsck().clean


def test_file_size_limit(make_engine: EngineFactory, database_url: str) -> None:
    engine = make_engine(database_url, max_file_size=1000)
    engine.accounts.create("s", "password1")
    vol = engine.volume("s")
    with pytest.raises(TooLarge):
        put(vol, "big", b"x", size_hint=1001)
    with pytest.raises(TooLarge):
        put(vol, "big", b"x" * 1001)
    put(vol, "ok", b"x" * 1000)
    with pytest.raises(NotFound):
        vol.stat("big")


class FailingStream:
    """Yields ``good`` bytes, then fails like a dropped connection."""

    def __init__(self, good: bytes) -> None:
        self._buf = io.BytesIO(good)

    def read(self, n: int = -1) -> bytes:
        data = self._buf.read(n)
        if not data:
            raise ConnectionResetError("client went away")
        return data


def test_aborted_write_leaves_previous_version_intact(make_engine: EngineFactory, database_url: str) -> None:
    engine = make_engine(database_url, pin_every_bytes=256 << 10)
    engine.accounts.create("a", "password1")
    vol = engine.volume("a")
    old = os.urandom(300_000)
    put(vol, "doc", old)
    seq = vol.journal()[-1].seq
    with pytest.raises(ConnectionResetError):
        vol.write("doc", FailingStream(os.urandom(2 << 20)))
    assert read(vol, "doc") == old
    assert len(vol.revisions("doc")) == 1
    assert vol.journal(after=seq) == []
    assert vol.quota().used_bytes == len(old)
    report = engine.gc(grace_seconds=0)
    assert report.blocks_deleted + report.orphan_objects_deleted > 0
    check = engine.fsck(deep=True)
    assert check.clean and check.leak_free, check
    assert read(vol, "doc") == old


def test_no_row_names_a_block_before_it_is_synced(
    make_engine: EngineFactory, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks are stored without waiting for the disk and synced per batch, in the
    background, before the pin or commit that records them: never after."""
    engine = make_engine(database_url, pin_every_bytes=256 << 10)
    tracking = VolatileTracking(engine.blocks.backend)
    engine.blocks.backend = tracking
    recorded: list[str] = []
    real_record = BlockWriter.record_blocks

    def record_blocks(self: BlockWriter, conn: Any, refs: Any, **kw: Any) -> None:
        names = [r.stored.name for r in refs if r.stored is not None and r.stored.inline is None]
        with tracking._lock:
            assert not tracking.volatile & set(names), "a block row before its object is durable"
        recorded.extend(names)
        real_record(self, conn, refs, **kw)

    monkeypatch.setattr(BlockWriter, "record_blocks", record_blocks)
    engine.accounts.create("a", "password1")
    vol = engine.volume("a")
    data = os.urandom(3 << 20)
    put(vol, "big", data)
    assert read(vol, "big") == data
    assert tracking.syncs >= 8  # ~12 pins of 256 KiB plus the commit's own
    assert len(recorded) == len(set(recorded)) >= 20
    assert not tracking.volatile


def test_a_write_whose_blocks_cannot_be_synced_commits_nothing(
    make_engine: EngineFactory, database_url: str
) -> None:
    engine = make_engine(database_url, pin_every_bytes=256 << 10)
    engine.accounts.create("a", "password1")
    vol = engine.volume("a")
    old = os.urandom(300_000)
    put(vol, "doc", old)
    engine.blocks.backend = VolatileTracking(engine.blocks.backend, fail_sync=True)
    for size in (1 << 20, 100_000):  # pins in the background; only the commit's sync
        with pytest.raises(BackendUnavailable):
            put(vol, "doc", os.urandom(size))
        assert read(vol, "doc") == old
        assert len(vol.revisions("doc")) == 1
    engine.blocks.backend = engine.blocks.backend.inner
    report = engine.gc(grace_seconds=0)
    assert report.orphan_objects_deleted > 0
    check = engine.fsck(deep=True)
    assert check.clean and check.leak_free, check


def test_fsck_deep_rehashes_what_reads_only_authenticate(engine: Engine) -> None:
    """A block sealed from other bytes than its hash (a writer bug) is found by fsck --deep."""
    engine.accounts.create("a", "password1")
    vol = engine.volume("a")
    put(vol, "doc", b"the real content " * 100)
    with engine.db.read() as conn:
        block = conn.execute(select(t.blocks.c.name, t.blocks.c.sha256, t.blocks.c.size)).one()
    keys = vol.account.keys
    wrong = b"x" * block.size
    codec, payload = engine.codec.encode(wrong)
    sealed = seal(
        keys.block_cipher, keys.block_id(bytes(block.sha256)), payload, codec=codec, key_epoch=keys.epoch
    )
    engine.backend.put(block.name, sealed)
    assert read(vol, "doc") == wrong  # the tag holds: reads do not re-hash by default
    check = engine.fsck(deep=True)
    assert not check.clean and any("recorded hash" in p for p in check.problems), check


def test_accounts_are_isolated(engine: Engine) -> None:
    engine.accounts.create("alice", "password1")
    engine.accounts.create("bob", "password2")
    alice, bob = engine.volume("alice"), engine.volume("bob")
    put(alice, "secret.txt", b"alice only")
    with pytest.raises(NotFound):
        bob.stat("secret.txt")
    put(bob, "secret.txt", b"bob's")
    assert read(alice, "secret.txt") == b"alice only"
    alice_version = alice.stat("secret.txt").version_id
    with pytest.raises(NotFound):
        read(bob, "secret.txt", version_id=alice_version)
    # Same content in two accounts is stored twice: dedup is per account.
    put(alice, "same", b"shared content" * 1000)
    put(bob, "same", b"shared content" * 1000)
    assert engine.stats().blocks == 4


def test_journal_records_every_change_in_order(vol: Volume) -> None:
    vol.mkdir("d")
    put(vol, "d/f", b"1")
    put(vol, "d/f", b"2")
    vol.move("d", "e")
    vol.copy("e/f", "g")
    vol.delete("e")
    ops = [(c.op, c.path, c.old_path) for c in vol.journal()]
    assert ops == [
        ("create", "d", None),
        ("create", "d/f", None),
        ("modify", "d/f", None),
        ("move", "e", "d"),
        ("create", "g", None),
        ("delete", "e", None),
    ]
    seqs = [c.seq for c in vol.journal()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_properties_set_and_remove_atomically(vol: Volume) -> None:
    put(vol, "p", b"x")
    vol.set_properties("p", {"{a}x": "1", "{a}y": "2"})
    vol.set_properties("p", {"{a}x": "3"}, remove=["{a}y"])
    assert vol.get_properties("p") == {"{a}x": "3"}
    mtime = 1_600_000_000.5
    assert vol.set_mtime("p", mtime).mtime == mtime


def test_concurrent_writers_of_one_file_leave_one_whole_version(vol: Volume, engine: Engine) -> None:
    payloads = [bytes([i]) * (200_000 + i) for i in range(6)]
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            put(vol, "shared", data)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert read(vol, "shared") in payloads
    assert len(vol.revisions("shared")) == len(payloads)
    assert vol.quota().used_bytes == sum(map(len, payloads))  # every version is retained
    assert engine.fsck(deep=True).clean


def test_a_corrupted_block_is_an_integrity_error_not_bad_data(make_engine: EngineFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    engine.accounts.create("c", "password1")
    vol = engine.volume("c")
    put(vol, "f", os.urandom(100_000))
    obj = next(p for p in (tmp_path / "blocks").rglob("*") if p.is_file())
    blob = bytearray(obj.read_bytes())
    blob[len(blob) // 2] ^= 1
    obj.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError):
        read(vol, "f")
    report = engine.fsck(deep=True)
    assert not report.clean and "authenticate" in report.problems[0]


def test_gc_keeps_referenced_and_reclaims_purged_blocks(vol: Volume, engine: Engine) -> None:
    keep, drop = os.urandom(500_000), os.urandom(500_000)
    put(vol, "keep", keep)
    put(vol, "drop", drop)
    vol.delete("drop")
    assert engine.gc(grace_seconds=0).blocks_deleted == 0  # still in the trash
    vol.purge_trash()
    report = engine.gc(grace_seconds=0)
    assert report.blocks_deleted > 0 and report.bytes_freed >= len(drop)
    assert read(vol, "keep") == keep
    check = engine.fsck(deep=True)
    assert check.clean and check.leak_free


def test_a_block_collected_between_dedup_and_commit_is_stored_again(
    vol: Volume, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = os.urandom(400_000)
    put(vol, "first", content)
    vol.delete("first")
    vol.purge_trash()  # the blocks are now unreferenced, but still there to dedup against
    original_commit = Volume._commit

    def commit_after_gc(self: Volume, *args: object) -> object:
        assert engine.gc(grace_seconds=0).blocks_deleted > 0
        return original_commit(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Volume, "_commit", commit_after_gc)
    put(vol, "second", content)
    monkeypatch.undo()
    assert read(vol, "second") == content
    assert engine.fsck(deep=True).clean


def test_master_key_rotation_rewraps_without_touching_blocks(make_engine: EngineFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from storage.keys import MasterKey

    old = MasterKey.generate()
    engine = make_engine(master_key=old)
    engine.accounts.create("k", "password1")
    put(engine.volume("k"), "f", b"kept" * 1000)
    objects = {p: p.read_bytes() for p in (tmp_path / "blocks").rglob("*") if p.is_file()}
    new = MasterKey.generate()
    assert engine.rotate_master_key(new) == 1
    engine.close()
    reopened = make_engine(master_key=new)
    assert read(reopened.volume("k"), "f") == b"kept" * 1000
    assert {p: p.read_bytes() for p in objects} == objects
    assert reopened.fsck(deep=True).clean


class Overgenerous:
    """A source whose read(n) returns more than n bytes (some adapters do)."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(n + 1000 if n > 0 else -1)


def test_sources_returning_more_than_asked_are_handled(vol: Volume) -> None:
    data = os.urandom(700_000)
    vol.write("o.bin", Overgenerous(data))
    assert read(vol, "o.bin") == data


def test_read1_stops_at_block_boundaries_and_covers_the_file(vol: Volume) -> None:
    data = os.urandom(700_000)
    put(vol, "r1", data)
    with vol.open("r1") as f:
        f.seek(12345)
        pieces = []
        while piece := f.read1(100_000):
            assert len(piece) <= 100_000
            pieces.append(piece)
        assert b"".join(pieces) == data[12345:]
        assert len(pieces) > 7  # blocks end reads early


def test_a_write_hands_each_block_to_the_pool_once_it_is_cut(
    engine: Engine, vol: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a block later (a first block held back in case it is the only one): the pool
    works on the first block while the rest arrives."""
    hand_offs = HandOffs(engine, monkeypatch)
    data = random.Random(5).randbytes(2_000_000)
    step = 4096
    hand_offs.body = CountingReader(data, step)
    vol.write("f.bin", hand_offs.body)
    assert len(hand_offs.blocks) > 5
    for start, _, read in hand_offs.blocks:
        # A cut is certain once max_size bytes past the block's start have arrived.
        assert read <= start + SMALL_CHUNKS.max_size + step
    with vol.open("f.bin") as r:
        assert r.read() == data


def test_hash_threads_are_kept_between_hashes_and_never_waited_for() -> None:
    threads = HashThreads(keep=1)
    ran: list[int] = []
    started = threading.Semaphore(0)
    release = threading.Event()

    def task() -> None:
        ran.append(threading.get_ident())
        started.release()
        release.wait(10)

    def alive() -> set[int]:
        return {th.ident for th in threading.enumerate() if th.ident is not None} & set(ran)

    threads.run(task)
    threads.run(task)  # while the first still runs: a second thread, no wait
    assert started.acquire(timeout=5) and started.acquire(timeout=5)
    assert len(set(ran)) == 2
    release.set()
    assert wait_until(lambda: len(alive()) == 1)  # keep=1: one stays, idle
    kept = alive()
    threads.run(task)
    assert started.acquire(timeout=5)
    assert {ran[-1]} == kept  # the kept thread ran it: nothing was started
    threads.close()
    assert wait_until(lambda: not alive())


def test_a_whole_file_hash_on_kept_threads_equals_hashlib() -> None:
    threads = HashThreads()
    try:
        for n in range(3):
            pieces = [bytes([n, i]) * 150_000 for i in range(4)]
            whole = WholeHash(depth=2, threads=threads)
            for piece in pieces:
                whole.update(piece)
            assert whole.digest() == hashlib.sha256(b"".join(pieces)).digest()
    finally:
        threads.close()


def test_the_whole_file_hash_takes_no_piece_after_finish() -> None:
    pieces = [bytes([i]) * 300_000 for i in range(5)]
    whole = WholeHash(depth=2)
    for piece in pieces:
        whole.update(piece)  # from the second piece on, hashed on its own thread
    whole.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        whole.update(b"late")
    assert whole.digest() == hashlib.sha256(b"".join(pieces)).digest()
