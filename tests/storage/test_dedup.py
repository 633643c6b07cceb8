"""Dedup and delta behaviour at the design's default chunk sizes (avg ~1 MiB)."""

from __future__ import annotations

import io

from storage.chunker import ChunkerParams
from storage.engine import Engine
from tests.storage.conftest import EngineFactory, database_url

__all__ = ["database_url"]

MiB = 1 << 20


def _pseudo_random(size: int, seed: int = 1) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


def _engine(make_engine: EngineFactory) -> Engine:
    engine = make_engine(chunker=ChunkerParams())
    engine.accounts.create("d", "password1")
    return engine


def test_same_content_under_a_second_name_costs_almost_nothing(make_engine: EngineFactory) -> None:
    engine = _engine(make_engine)
    vol = engine.volume("d")
    data = _pseudo_random(64 * MiB)
    vol.write("one.bin", io.BytesIO(data))
    stored_once = engine.stats().stored_bytes
    vol.write("two.bin", io.BytesIO(data))
    stored_twice = engine.stats().stored_bytes
    assert stored_twice - stored_once < stored_once * 0.01
    with vol.open("two.bin") as f:
        assert f.read() == data


def test_one_byte_inserted_at_the_start_adds_at_most_three_blocks(make_engine: EngineFactory) -> None:
    engine = _engine(make_engine)
    vol = engine.volume("d")
    data = _pseudo_random(64 * MiB, seed=2)
    vol.write("big.bin", io.BytesIO(data))
    blocks_before = engine.stats().blocks
    assert blocks_before >= 30  # 64 MiB at ~1.25 MiB average: the cut points matter
    vol.write("big.bin", io.BytesIO(b"!" + data))
    assert engine.stats().blocks - blocks_before <= 3
    with vol.open("big.bin") as f:
        assert f.read(10) == b"!" + data[:9]


def test_a_one_byte_edit_in_the_middle_adds_at_most_two_blocks(make_engine: EngineFactory) -> None:
    engine = _engine(make_engine)
    vol = engine.volume("d")
    data = bytearray(_pseudo_random(32 * MiB, seed=3))
    vol.write("mid.bin", io.BytesIO(bytes(data)))
    blocks_before = engine.stats().blocks
    data[16 * MiB] ^= 0xFF
    vol.write("mid.bin", io.BytesIO(bytes(data)))
    assert engine.stats().blocks - blocks_before <= 2


def test_two_writes_racing_with_the_same_new_small_file_share_one_block(
    make_engine: EngineFactory, database_url: str
) -> None:
    """Both miss the block at look-up time and both store it; the second commit finds the
    first's row (its insert does nothing) and both versions read back."""
    engine = make_engine(database_url)
    engine.accounts.create("d", "password1")
    vol = engine.volume("d")
    data = b"the same small file, written twice at once"
    first, second = vol.begin_write("a.txt"), vol.begin_write("b.txt")
    first.feed(io.BytesIO(data))
    second.feed(io.BytesIO(data))
    first.commit()
    second.commit()
    for name in ("a.txt", "b.txt"):
        with vol.open(name) as f:
            assert f.read() == data
    assert engine.stats().blocks == 1


def test_two_writes_racing_with_the_same_new_blocks_share_them(
    make_engine: EngineFactory, database_url: str
) -> None:
    """The multi-block form: both writes store every block; the second commit's insert finds
    the first's rows for the shared blocks (and inserts its own new last block), so the
    account holds each block once and both files read back."""
    engine = make_engine(database_url, chunker=ChunkerParams())
    engine.accounts.create("d", "password1")
    vol = engine.volume("d")
    shared = _pseudo_random(6 * MiB, seed=7)
    own = _pseudo_random(2 * MiB, seed=8)
    first, second = vol.begin_write("a.bin"), vol.begin_write("b.bin")
    first.feed(io.BytesIO(shared))
    second.feed(io.BytesIO(shared + own))
    first.commit()
    assert engine.stats().blocks >= 3
    second.commit()
    names: set[str] = set()
    for name, data in (("a.bin", shared), ("b.bin", shared + own)):
        with vol.open(name) as f:
            assert f.read() == data
            names.update(loc.name for loc in f.locations)
    # Each distinct block is stored and recorded once, the shared ones included.
    assert engine.stats().blocks == len(names)
