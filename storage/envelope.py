"""The sealed block format (version 1).

Every stored object is ``header || AES-256-GCM(ciphertext || tag)``::

    offset size field
    0      4    magic  b"DSB\\x00"
    4      1    format version (1)
    5      1    cipher suite (1 = AES-256-GCM)
    6      1    codec (0 = raw, 1 = zstd)
    7      1    reserved, zero
    8      4    key epoch, big-endian (which account key sealed it)
    12     12   nonce (random)
    24     ...  ciphertext, then the 16-byte GCM tag

The associated data is the whole header followed by the 32-byte block id, so a
block cannot be renamed, swapped between ids, or have a header byte edited
without :class:`IntegrityError`. Unknown versions, suites or codecs raise
:class:`UnsupportedFormat`: a future format gets its own decoder here, and old
formats are never written again.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.errors import IntegrityError, UnsupportedFormat

MAGIC = b"DSB\x00"
FORMAT_V1 = 1
SUITE_AES256GCM = 1
CODEC_RAW = 0
CODEC_ZSTD = 1
KNOWN_CODECS = frozenset({CODEC_RAW, CODEC_ZSTD})
_HEADER = struct.Struct(">4sBBBBI12s")
HEADER_SIZE = _HEADER.size
TAG_SIZE = 16
OVERHEAD = HEADER_SIZE + TAG_SIZE


@dataclass(frozen=True, slots=True)
class Header:
    codec: int
    key_epoch: int
    nonce: bytes


def seal(cipher: AESGCM, block_id: bytes, payload: bytes, *, codec: int, key_epoch: int) -> bytes:
    nonce = secrets.token_bytes(12)
    header = _HEADER.pack(MAGIC, FORMAT_V1, SUITE_AES256GCM, codec, 0, key_epoch, nonce)
    return header + cipher.encrypt(nonce, payload, header + block_id)


def parse_header(blob: bytes) -> Header:
    if len(blob) < OVERHEAD:
        raise IntegrityError("sealed block is shorter than its header and tag")
    magic, version, suite, codec, reserved, epoch, nonce = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise IntegrityError("not a davserver block (bad magic)")
    if version != FORMAT_V1:
        raise UnsupportedFormat(f"block format version {version} is not supported")
    if suite != SUITE_AES256GCM:
        raise UnsupportedFormat(f"cipher suite {suite} is not supported")
    if codec not in KNOWN_CODECS:
        raise UnsupportedFormat(f"codec {codec} is not supported")
    if reserved != 0:
        raise UnsupportedFormat("reserved header byte is set")
    return Header(codec=codec, key_epoch=epoch, nonce=nonce)


def open_sealed(
    cipher: AESGCM, block_id: bytes, blob: bytes, header: Header | None = None
) -> tuple[Header, bytes]:
    """Authenticate and decrypt; returns the header and the (possibly compressed) payload.

    ``header``: the blob's, when the caller has parsed it already.
    """
    header = header or parse_header(blob)
    try:
        # A view, not a slice: slicing copied the whole block (0.75 -> 0.55 ms per 1.25 MiB).
        with memoryview(blob) as view:
            payload = cipher.decrypt(header.nonce, view[HEADER_SIZE:], blob[:HEADER_SIZE] + block_id)
    except InvalidTag:
        raise IntegrityError("block does not authenticate (tampered, truncated or misnamed)") from None
    return header, payload
