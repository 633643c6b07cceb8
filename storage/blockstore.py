"""One block in, one block out: name, compress, seal, store; fetch, open, verify.

A block whose sealed object is small (``inline_bytes``) is not written to the
backend: :meth:`BlockStore.store` hands the object back in ``StoredBlock.inline``
and the caller keeps it in the block's metadata row, inside the same transaction
as the version that uses it. Its name is made all the same (names stay unique).

Object names are ``<account>/<id[:2]>/<id>.<nonce>`` where ``id`` is the block's
keyed MAC (so the store never sees plaintext hashes) and ``nonce`` is random per
stored copy. The nonce makes every stored copy's name unique, which is what lets
garbage collection delete an object after its row without racing a writer that
re-stores the same content meanwhile (the writer's copy has another name).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from storage.backends.base import Backend
from storage.codec import Codec
from storage.envelope import OVERHEAD, open_sealed, parse_header, seal
from storage.errors import IntegrityError, NotFound, UnsupportedFormat
from storage.keys import AccountKeys
from storage.tiering import ReadTracker


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """A block written to the backend whose row may not exist yet."""

    sha256: bytes
    size: int
    name: str
    stored_size: int
    codec: int
    key_epoch: int
    #: The sealed object itself, when it is small enough to live in the block's row.
    inline: bytes | None = None


class BlockStore:
    def __init__(
        self,
        backend: Backend,
        codec: Codec,
        *,
        rehash_reads: bool = False,
        reads: ReadTracker | None = None,
        inline_bytes: int = 0,
    ) -> None:
        self.backend = backend
        self.codec = codec
        self.inline_bytes = inline_bytes
        self.rehash_reads = rehash_reads
        #: Notes which blocks are read (only with an archive tier to feed).
        self.reads = reads

    @staticmethod
    def object_name(account_id: int, keys: AccountKeys, sha256: bytes) -> str:
        mac = keys.block_id(sha256).hex()
        return f"{account_id}/{mac[:2]}/{mac}.{secrets.token_hex(8)}"

    def store(
        self,
        account_id: int,
        keys: AccountKeys,
        data: bytes,
        sha256: bytes,
        *,
        compress: bool,
        sync: bool = True,
    ) -> StoredBlock:
        """Seal and store one block. ``sync=False``: the object is durable only after
        :meth:`sync` of its name (see the backend contract); a row may refer to it only then.
        """
        codec, payload = self.codec.encode(data, try_compress=compress)
        blob = seal(keys.block_cipher, keys.block_id(sha256), payload, codec=codec, key_epoch=keys.epoch)
        name = self.object_name(account_id, keys, sha256)
        if len(blob) <= self.inline_bytes:
            return StoredBlock(sha256, len(data), name, len(blob), codec, keys.epoch, inline=blob)
        self.backend.put(name, blob, sync=sync)
        return StoredBlock(sha256, len(data), name, len(blob), codec, keys.epoch)

    def sync(self, names: Sequence[str]) -> None:
        """Make objects stored with ``sync=False`` durable."""
        if names:
            self.backend.sync(names)

    def always_inline(self, size: int) -> bool:
        """Whether a block of ``size`` plaintext bytes is kept in its row whatever its content."""
        return largest_sealed(size) <= self.inline_bytes

    def fetch(
        self,
        keys: AccountKeys,
        name: str,
        sha256: bytes,
        size: int,
        *,
        rehash: bool | None = None,
        inline: bytes | None = None,
    ) -> bytes:
        """The verified plaintext of one block, or :class:`IntegrityError`.

        Verified means: the AES-GCM tag holds under the account's key with the
        block id (a keyed MAC of the plaintext hash) and the header as associated
        data, so the payload is exactly what this account sealed for this hash, and
        the size matches. Re-hashing the plaintext as well (``rehash``, default
        ``rehash_reads``) only adds a check that the writer hashed the bytes it
        sealed; it costs a SHA-256 pass (~1.1 GB/s per core) on every read and
        took a large GET from ~1.1 GB/s to ~0.76 GB/s, so it is left to
        ``fsck --deep`` unless configured.

        ``inline``: the sealed object from the block's row (then the backend is not asked).
        """
        if inline is not None:
            return self._open(keys, name, sha256, size, inline, rehash)
        try:
            # The bound reads a block whole; a longer object is corrupt and fails
            # authentication below.
            blob = self.backend.get(name, 0, largest_sealed(size))
        except NotFound:
            raise IntegrityError(f"block object {name} is missing from the store") from None
        if self.reads is not None:
            self.reads.read(name)
        return self._open(keys, name, sha256, size, blob, rehash)

    def _open(
        self, keys: AccountKeys, name: str, sha256: bytes, size: int, blob: bytes, rehash: bool | None
    ) -> bytes:
        if len(blob) < OVERHEAD:
            raise IntegrityError(f"block object {name} is truncated")
        header = parse_header(blob)
        if header.key_epoch != keys.epoch:
            raise UnsupportedFormat(f"block {name} was sealed under another key epoch")
        _, payload = open_sealed(keys.block_cipher, keys.block_id(sha256), blob, header)
        data = self.codec.decode(header.codec, payload)
        if len(data) != size:
            raise IntegrityError(f"block object {name} has {len(data)} bytes, not {size}")
        if (self.rehash_reads if rehash is None else rehash) and hashlib.sha256(data).digest() != sha256:
            raise IntegrityError(f"block object {name} does not match its recorded hash")
        return data


def largest_sealed(size: int) -> int:
    """The most bytes a block of ``size`` plaintext bytes is stored as: compression is kept
    only when it saves, so the envelope is all a block can grow by."""
    return size + OVERHEAD
