"""Per-block compression: zstd where it pays, raw where it does not.

The decision is made twice. By type: a file whose name says it is already
compressed (images, audio, video, archives, office zips) skips zstd entirely,
which saves the CPU that would be spent finding out. By result: a block whose
zstd output is not at least ``min_saving`` smaller is stored raw, so random data
costs one fast failed attempt (zstd level 1 rejects random data at ~3 GB/s on
this machine) and never grows.

Level 1 is the default: measured on this kind of machine it compresses log-like
text to 4.1 % at ~750 MB/s, against 5.0 %(!) at ~455 MB/s for level 3 on 1 MiB
blocks (``bench/storage_throughput.py`` prints both).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import zstandard

from storage.envelope import CODEC_RAW, CODEC_ZSTD
from storage.errors import IntegrityError, UnsupportedFormat

COMPRESSED_SUFFIXES = frozenset(
    [
        "jpg",
        "jpeg",
        "png",
        "gif",
        "webp",
        "heic",
        "heif",
        "avif",
        "jxl",
        "mp3",
        "m4a",
        "aac",
        "ogg",
        "oga",
        "opus",
        "flac",
        "wma",
        "mp4",
        "m4v",
        "mov",
        "mkv",
        "webm",
        "avi",
        "wmv",
        "flv",
        "3gp",
        "zip",
        "gz",
        "tgz",
        "bz2",
        "xz",
        "txz",
        "zst",
        "lz4",
        "lzma",
        "7z",
        "rar",
        "br",
        "docx",
        "xlsx",
        "pptx",
        "odt",
        "ods",
        "odp",
        "epub",
        "jar",
        "apk",
        "ipa",
        "dmg",
        "iso",
        "woff",
        "woff2",
        "pdf",
    ]
)


def is_precompressed(filename: str | None) -> bool:
    if not filename or "." not in filename:
        return False
    return filename.rsplit(".", 1)[1].lower() in COMPRESSED_SUFFIXES


#: A block of 4 x PROBE_BYTES or more is compressed only if its first PROBE_BYTES compress.
PROBE_BYTES = 64 << 10


@dataclass
class Codec:
    level: int = 1
    min_saving: float = 0.03
    max_block_size: int = 16 << 20
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def _compressor(self) -> zstandard.ZstdCompressor:
        c: zstandard.ZstdCompressor | None = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d: zstandard.ZstdDecompressor | None = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def encode(self, data: bytes, *, try_compress: bool = True) -> tuple[int, bytes]:
        if try_compress and data:
            compressor = self._compressor()
            if len(data) >= 4 * PROBE_BYTES:
                # Random or already-compressed content costs zstd ~285 us per 1.25 MiB
                # block to find out; its first 64 KiB tell in ~10 us.
                with memoryview(data) as view:
                    sample = len(compressor.compress(view[:PROBE_BYTES]))
                if sample > PROBE_BYTES * (1 - self.min_saving):
                    return CODEC_RAW, data
            packed = compressor.compress(data)
            if len(packed) <= len(data) * (1 - self.min_saving):
                return CODEC_ZSTD, packed
        return CODEC_RAW, data

    def decode(self, codec: int, payload: bytes) -> bytes:
        if codec == CODEC_RAW:
            return payload
        if codec != CODEC_ZSTD:
            raise UnsupportedFormat(f"codec {codec} is not supported")
        try:
            # python-zstandard honours max_output_size only for frames that do not
            # declare their size, so the declared size is checked first.
            declared = zstandard.frame_content_size(payload)
            if declared > self.max_block_size:
                raise IntegrityError(f"block declares {declared} bytes, over the {self.max_block_size} limit")
            return self._decompressor().decompress(payload, max_output_size=self.max_block_size)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"block does not decompress: {exc}") from None
