"""Per-block compression (storage/codec.py): round trips, never expanding, precompressed names."""

from __future__ import annotations

import concurrent.futures
import random

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.codec import COMPRESSED_SUFFIXES, PROBE_BYTES, Codec, is_precompressed
from storage.envelope import CODEC_RAW, CODEC_ZSTD
from storage.errors import IntegrityError, UnsupportedFormat

CODEC = Codec()

blocks = st.one_of(
    st.binary(max_size=8192),
    st.tuples(st.binary(min_size=1, max_size=64), st.integers(1, 1000)).map(lambda t: t[0] * t[1]),
    st.builds(
        lambda seed, n: random.Random(seed).randbytes(n), st.integers(0, 2**32), st.integers(0, 100_000)
    ),
)


@settings(max_examples=300, deadline=None)
@given(data=blocks, compress=st.booleans())
def test_decode_of_encode_is_identity(data: bytes, compress: bool) -> None:
    codec, payload = CODEC.encode(data, try_compress=compress)
    assert codec in (CODEC_RAW, CODEC_ZSTD)
    assert CODEC.decode(codec, payload) == data


@settings(max_examples=300, deadline=None)
@given(data=blocks, compress=st.booleans())
def test_encode_never_expands(data: bytes, compress: bool) -> None:
    codec, payload = CODEC.encode(data, try_compress=compress)
    assert len(payload) <= len(data)
    if codec == CODEC_ZSTD:
        assert len(payload) <= len(data) * (1 - CODEC.min_saving)
    else:
        assert payload == data


def test_compressible_data_is_zstd_coded_and_smaller() -> None:
    data = b"".join(f"line {i}: the quick brown fox\n".encode() for i in range(5000))
    codec, payload = CODEC.encode(data)
    assert codec == CODEC_ZSTD
    assert len(payload) < len(data) // 5


def test_random_data_is_stored_raw() -> None:
    data = random.Random(1).randbytes(1 << 20)
    assert CODEC.encode(data) == (CODEC_RAW, data)


def test_compression_can_be_skipped() -> None:
    data = b"a" * 100_000
    assert CODEC.encode(data, try_compress=False) == (CODEC_RAW, data)


def test_empty_block_is_raw() -> None:
    assert CODEC.encode(b"") == (CODEC_RAW, b"")
    assert CODEC.decode(CODEC_RAW, b"") == b""


def test_a_saving_below_min_saving_is_stored_raw() -> None:
    # half random, half zeros compresses to about 50 %: a codec demanding 60 % keeps it raw
    data = random.Random(2).randbytes(50_000) + bytes(50_000)
    assert CODEC.encode(data)[0] == CODEC_ZSTD
    assert Codec(min_saving=0.6).encode(data) == (CODEC_RAW, data)


def test_a_large_block_is_judged_by_its_first_64_kib() -> None:
    """The probe: zstd is not run over a whole block whose start does not compress."""
    text = b"".join(f"line {i}: the quick brown fox\n".encode() for i in range(40_000))
    noise = random.Random(3).randbytes(PROBE_BYTES)
    assert len(text) > 4 * PROBE_BYTES
    assert CODEC.encode(text)[0] == CODEC_ZSTD
    assert CODEC.encode(noise + text) == (CODEC_RAW, noise + text)  # would have compressed
    # A compressible start lets zstd judge the whole block.
    assert CODEC.encode(text[:PROBE_BYTES] + noise * 4)[0] == CODEC_ZSTD
    # Below four probes' worth, the whole block decides.
    small = noise[: PROBE_BYTES // 2] + text[: 2 * PROBE_BYTES]
    assert CODEC.encode(small)[0] == CODEC_ZSTD


def test_garbage_zstd_payload_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        CODEC.decode(CODEC_ZSTD, b"definitely not a zstd frame")


def test_truncated_zstd_payload_is_an_integrity_error() -> None:
    codec, payload = CODEC.encode(b"x" * 10_000 + b"y" * 10_000)
    assert codec == CODEC_ZSTD
    with pytest.raises(IntegrityError):
        CODEC.decode(CODEC_ZSTD, payload[:-3])


def test_a_frame_without_content_size_larger_than_the_limit_is_refused() -> None:
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(4096))
    with pytest.raises(IntegrityError):
        Codec(max_block_size=1024).decode(CODEC_ZSTD, frame)


def test_a_frame_declaring_a_size_over_the_limit_is_refused() -> None:
    frame = zstandard.ZstdCompressor().compress(bytes(4096))  # content size in the header
    with pytest.raises(IntegrityError):
        Codec(max_block_size=1024).decode(CODEC_ZSTD, frame)


def test_an_unknown_codec_is_unsupported_not_guessed() -> None:
    with pytest.raises(UnsupportedFormat):
        Codec().decode(7, b"whatever")


def test_codec_is_usable_from_threads() -> None:
    data = [f"{i} ".encode() * 2000 for i in range(32)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda d: CODEC.decode(*CODEC.encode(d)), data))
    assert results == data


# --- precompressed names ------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["photo.jpg", "PHOTO.JPG", "song.Mp3", "archive.tar.gz", "backup.zst", "report.docx", "a.b.c.zip", ".gz"],
)
def test_precompressed_names_are_detected(name: str) -> None:
    assert is_precompressed(name)


@pytest.mark.parametrize(
    "name",
    [None, "", "README", "notes.txt", "data.csv", "image.bmp", "disk.img", "jpg", "photo.jpg.txt", "file."],
)
def test_other_names_are_not_precompressed(name: str | None) -> None:
    assert not is_precompressed(name)


def test_suffix_list_is_lower_case_without_dots() -> None:
    assert all(s == s.lower() and "." not in s and s for s in COMPRESSED_SUFFIXES)
