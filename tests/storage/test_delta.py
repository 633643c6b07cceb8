"""Block-level sync: a client that cuts files like the server sends only the blocks the
account lacks, and commits a file as its block list, checked like any write."""

from __future__ import annotations

import hashlib
import io
import random

import pytest

from storage.chunker import Chunker, ChunkerParams
from storage.delta import BlockSync
from storage.engine import Engine
from storage.errors import InvalidBlockList, NotFound, PreconditionFailed, QuotaExceeded, TooLarge
from storage.volume import Volume
from tests.storage.conftest import EngineFactory


@pytest.fixture
def vol(engine: Engine) -> Volume:
    engine.accounts.create("alice", "alice-password")
    return engine.volume("alice")


def client_chunker(sync: BlockSync) -> Chunker:
    """What a client builds from the config API: the same cut points as the server's."""
    c = sync.config()["chunker"]
    params = ChunkerParams(c["min_size"], c["avg_size"], c["max_size"], c["normalization"])
    return Chunker(params, c["seed"])


def upload(sync: BlockSync, data: bytes) -> tuple[list[tuple[bytes, int]], int]:
    """Cut, send what is missing; returns the block list and how many blocks were sent."""
    blocks = [(hashlib.sha256(b).digest(), b) for b in client_chunker(sync).split_bytes(data)]
    missing = set(sync.missing([h for h, _ in blocks]))
    sent = 0
    for h, b in blocks:
        if h in missing:
            assert sync.put(h, b) is True
            missing.discard(h)
            sent += 1
    return [(h, len(b)) for h, b in blocks], sent


def test_the_client_cuts_where_the_server_does(vol: Volume) -> None:
    data = random.Random(1).randbytes(1_500_000)
    vol.write("server.bin", io.BytesIO(data))
    sync = vol.block_sync
    _, manifest = sync.manifest("server.bin")
    cut = [(hashlib.sha256(b).digest(), len(b)) for b in client_chunker(sync).split_bytes(data)]
    assert cut == [(m.sha256, m.size) for m in manifest]
    assert sync.missing([h for h, _ in cut]) == []


def test_commit_then_a_small_edit_sends_only_the_changed_blocks(vol: Volume) -> None:
    sync = vol.block_sync
    data = bytearray(random.Random(2).randbytes(2_000_000))
    blocks, sent = upload(sync, bytes(data))
    assert sent == len(blocks) > 4
    entry, created = sync.commit("f.bin", blocks, size=len(data), parent_rev=None, mtime=1_700_000_000)
    assert created and entry.size == len(data) and entry.sha256 == hashlib.sha256(data).digest()
    data[1_000_000] ^= 0xFF
    blocks2, sent2 = upload(sync, bytes(data))
    assert 1 <= sent2 <= 2
    entry2, created2 = sync.commit("f.bin", blocks2, size=len(data), parent_rev=entry.version_id)
    assert not created2 and entry2.node_id == entry.node_id
    with vol.open("f.bin") as r:
        assert r.read() == bytes(data)
    assert [c.op for c in vol.journal()][-2:] == ["create", "modify"]
    assert vol.revisions("f.bin")[0].sha256 == hashlib.sha256(data).digest()


def test_stale_or_missing_parents_are_refused(vol: Volume) -> None:
    sync = vol.block_sync
    blocks, _ = upload(sync, b"x" * 1000)
    entry, _ = sync.commit("f", blocks, size=1000, parent_rev=None)
    with pytest.raises(PreconditionFailed):
        sync.commit("f", blocks, size=1000, parent_rev=None)  # exists already
    vol.write("f", io.BytesIO(b"someone else"))
    with pytest.raises(PreconditionFailed, match="revision"):
        sync.commit("f", blocks, size=1000, parent_rev=entry.version_id)
    with pytest.raises(PreconditionFailed):
        sync.commit("nope", blocks, size=1000, parent_rev=entry.version_id)
    assert len(vol.revisions("f")) == 2


def test_bad_block_lists_and_blocks(vol: Volume) -> None:
    sync = vol.block_sync
    blocks, _ = upload(sync, b"y" * 500)
    with pytest.raises(InvalidBlockList, match="add up"):
        sync.commit("f", blocks, size=501, parent_rev=None)
    with pytest.raises(InvalidBlockList, match="not uploaded"):
        sync.commit("f", [*blocks, (hashlib.sha256(b"z").digest(), 1)], size=501, parent_rev=None)
    with pytest.raises(InvalidBlockList, match="bytes, not"):
        sync.commit("f", [(blocks[0][0], 400), (blocks[0][0], 100)], size=500, parent_rev=None)
    with pytest.raises(InvalidBlockList, match="hash"):
        sync.put(hashlib.sha256(b"a").digest(), b"b")
    with pytest.raises(TooLarge):
        big = b"q" * (sync.config()["max_block_size"] + 1)
        sync.put(hashlib.sha256(big).digest(), big)
    assert sync.put(blocks[0][0], b"y" * 500) is False  # idempotent
    with pytest.raises(NotFound):
        vol.stat("f")


def test_blocks_and_manifests_read_back(vol: Volume) -> None:
    sync = vol.block_sync
    data = random.Random(3).randbytes(700_000)
    blocks, _ = upload(sync, data)
    entry, _ = sync.commit("f", blocks, size=len(data), parent_rev=None)
    got, manifest = sync.manifest("f")
    assert got.version_id == entry.version_id
    assert [(m.sha256, m.size) for m in manifest] == blocks
    assert b"".join(sync.get(m.sha256) for m in manifest) == data
    with pytest.raises(NotFound):
        sync.get(hashlib.sha256(b"never uploaded").digest())


def test_uploaded_blocks_wait_for_their_commit_through_the_gc_grace(engine: Engine, vol: Volume) -> None:
    sync = vol.block_sync
    blocks, _ = upload(sync, b"w" * 3000)
    assert engine.gc().blocks_deleted == 0  # within the grace period
    sync.commit("f", blocks, size=3000, parent_rev=None)
    blocks2, _ = upload(sync, b"never committed" * 100)
    assert engine.gc(grace_seconds=0).blocks_deleted == 1
    assert sync.missing([h for h, _ in blocks2]) == [h for h, _ in blocks2]


def test_parked_blocks_are_capped_until_a_commit_lists_them(make_engine: EngineFactory) -> None:
    engine = make_engine(max_pending_block_bytes=150_000)
    engine.accounts.create("alice", "alice-password")
    sync = engine.volume("alice").block_sync
    rng = random.Random(7)
    first = rng.randbytes(100_000)
    blocks, _ = upload(sync, first)
    second = rng.randbytes(100_000)
    with pytest.raises(QuotaExceeded):
        upload(sync, second)  # 200,000 bytes would wait for a commit
    sync.commit("first.bin", blocks, size=len(first), parent_rev=None)
    blocks, _ = upload(sync, second)  # the commit freed the room
    sync.commit("second.bin", blocks, size=len(second), parent_rev=None)
    # Parked blocks older than the gc grace no longer count (gc may take them any time).
    later = make_engine(max_pending_block_bytes=150_000, gc_grace_seconds=0)
    later.accounts.create("bob", "bob-password-1")
    bob = later.volume("bob").block_sync
    upload(bob, rng.randbytes(100_000))
    upload(bob, rng.randbytes(100_000))


def test_parked_blocks_count_against_the_quota(engine: Engine) -> None:
    engine.accounts.create("carol", "carol-password", quota=120_000)
    sync = engine.volume("carol").block_sync
    upload(sync, random.Random(8).randbytes(100_000))
    with pytest.raises(QuotaExceeded):
        upload(sync, random.Random(9).randbytes(50_000))
