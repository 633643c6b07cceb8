"""One block in, one block out: name, compress, seal, store; fetch, open, verify.

Object names are ``<account>/<id[:2]>/<id>.<nonce>`` where ``id`` is the block's
keyed MAC (so the store never sees plaintext hashes) and ``nonce`` is random per
stored copy. The nonce makes every stored copy's name unique, which is what lets
garbage collection delete an object after its row without racing a writer that
re-stores the same content meanwhile (the writer's copy has another name).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from storage.backends.base import Backend
from storage.codec import Codec
from storage.envelope import OVERHEAD, open_sealed, parse_header, seal
from storage.errors import IntegrityError, NotFound, UnsupportedFormat
from storage.keys import AccountKeys


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """A block written to the backend whose row may not exist yet."""

    sha256: bytes
    size: int
    name: str
    stored_size: int
    codec: int
    key_epoch: int


class BlockStore:
    def __init__(self, backend: Backend, codec: Codec) -> None:
        self.backend = backend
        self.codec = codec

    @staticmethod
    def object_name(account_id: int, keys: AccountKeys, sha256: bytes) -> str:
        mac = keys.block_id(sha256).hex()
        return f"{account_id}/{mac[:2]}/{mac}.{secrets.token_hex(8)}"

    def store(
        self, account_id: int, keys: AccountKeys, data: bytes, sha256: bytes, *, compress: bool
    ) -> StoredBlock:
        codec, payload = self.codec.encode(data, try_compress=compress)
        blob = seal(keys.block_cipher, keys.block_id(sha256), payload, codec=codec, key_epoch=keys.epoch)
        name = self.object_name(account_id, keys, sha256)
        self.backend.put(name, blob)
        return StoredBlock(sha256, len(data), name, len(blob), codec, keys.epoch)

    def fetch(self, keys: AccountKeys, name: str, sha256: bytes, size: int) -> bytes:
        """The verified plaintext of one block, or :class:`IntegrityError`."""
        try:
            blob = self.backend.get(name)
        except NotFound:
            raise IntegrityError(f"block object {name} is missing from the store") from None
        if len(blob) < OVERHEAD:
            raise IntegrityError(f"block object {name} is truncated")
        if parse_header(blob).key_epoch != keys.epoch:
            raise UnsupportedFormat(f"block {name} was sealed under another key epoch")
        header, payload = open_sealed(keys.block_cipher, keys.block_id(sha256), blob)
        data = self.codec.decode(header.codec, payload)
        if len(data) != size or hashlib.sha256(data).digest() != sha256:
            raise IntegrityError(f"block object {name} does not match its recorded hash")
        return data
