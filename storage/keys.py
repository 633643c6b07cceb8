"""Key hierarchy: one master key wraps one data key per account; HKDF derives the rest.

* The **master key** (32 random bytes) lives in a file outside the database
  (``master.key`` in the data dir, mode 0600) or is passed in by the config
  loader. Nodes sharing a database share it. It is never logged; its public
  identity is a short fingerprint (``key_id``) stored beside each wrap so a
  wrong key is reported as such, not as corrupt data.
* Each **account data key** (32 random bytes) is stored only wrapped: AES-256-GCM
  under a wrapping key derived from the master key, with the account id and the
  master key id as associated data (a wrap cannot be moved to another account).
  Rotating the master key re-wraps these; blocks are never touched.
* **Subkeys** come from the account key by HKDF-SHA256 with labelled contexts
  ``davserver/v1/<purpose>``: block encryption, block-id MAC and chunker seed.
  Block ids are keyed MACs, and the chunker's gear table is seeded, so neither
  block names nor block boundaries reveal content to whoever reads the store.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage.errors import IntegrityError

KEY_SIZE = 32
_WRAP_FORMAT = b"\x01"


def derive(key: bytes, purpose: str, length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA256 subkey for one labelled purpose."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=length,
        salt=None,
        info=f"davserver/v1/{purpose}".encode(),
    ).derive(key)


class MasterKey:
    """The server's root secret; ``repr`` never shows it."""

    __slots__ = ("_key", "_wrap", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("a master key is exactly 32 bytes")
        self._key = key
        self._wrap = AESGCM(derive(key, "account-key-wrap"))
        self.key_id = derive(key, "master-key-id", 8).hex()

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id})"

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(KEY_SIZE))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MasterKey:
        """Read a key file: 64 hex characters (a trailing newline is allowed)."""
        text = Path(path).read_text(encoding="ascii").strip()
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"master key file {path} is not 64 hex characters") from None
        return cls(raw)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> MasterKey:
        p = Path(path)
        if p.exists():
            return cls.load(p)
        key = cls.generate()
        key.save(p)
        return key

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key with owner-only permissions, never replacing an existing file."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(self._key.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())

    def wrap(self, account_id: int, data_key: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return _WRAP_FORMAT + nonce + self._wrap.encrypt(nonce, data_key, self._aad(account_id))

    def unwrap(self, account_id: int, wrapped: bytes) -> bytes:
        if wrapped[:1] != _WRAP_FORMAT or len(wrapped) != 1 + 12 + KEY_SIZE + 16:
            raise IntegrityError(f"account {account_id}: unknown key wrap format")
        try:
            return self._wrap.decrypt(wrapped[1:13], wrapped[13:], self._aad(account_id))
        except InvalidTag:
            raise IntegrityError(f"account {account_id}: key wrap does not authenticate") from None

    def _aad(self, account_id: int) -> bytes:
        return f"davserver/v1/account-key/{account_id}/{self.key_id}".encode()


@dataclass(frozen=True, slots=True)
class AccountKeys:
    """The subkeys of one account, derived once and kept for the engine's lifetime."""

    epoch: int
    block_cipher: AESGCM
    block_mac_key: bytes
    chunker_seed: int

    @classmethod
    def derive_from(cls, data_key: bytes, epoch: int = 1) -> AccountKeys:
        seed = int.from_bytes(derive(data_key, "chunker-seed", 8), "big") & (2**63 - 1)
        return cls(
            epoch=epoch,
            block_cipher=AESGCM(derive(data_key, "block-encryption")),
            block_mac_key=derive(data_key, "block-id"),
            chunker_seed=seed or 1,
        )

    def block_id(self, sha256_digest: bytes) -> bytes:
        """The block's keyed id: HMAC-SHA256 of its plaintext SHA-256."""
        return hmac.digest(self.block_mac_key, sha256_digest, "sha256")


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)
