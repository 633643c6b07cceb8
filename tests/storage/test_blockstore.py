"""One block in, one block out (storage/blockstore.py), over the memory backend."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.backends.memory import MemoryBackend
from storage.blockstore import BlockStore, StoredBlock
from storage.codec import Codec
from storage.envelope import CODEC_RAW, CODEC_ZSTD, OVERHEAD
from storage.errors import IntegrityError, UnsupportedFormat
from storage.keys import AccountKeys, new_data_key

ACCOUNT = 17
MARKER = b"PLAINTEXT-MARKER-7f3a"


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def store(backend: MemoryBackend) -> BlockStore:
    return BlockStore(backend, Codec())


@pytest.fixture
def keys() -> AccountKeys:
    return AccountKeys.derive_from(new_data_key())


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def compressible() -> bytes:
    return b"".join(b"%05d %s some text around the marker\n" % (i, MARKER) for i in range(2000))


def incompressible() -> bytes:
    rng = random.Random(5)
    return b"".join(rng.randbytes(1000) + MARKER for _ in range(200))


# --- round trip ------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("make", [compressible, incompressible, lambda: b""], ids=["text", "random", "empty"])
def test_store_then_fetch_returns_the_data(
    store: BlockStore, keys: AccountKeys, make: Callable[[], bytes], compress: bool
) -> None:
    data = make()
    stored = store.store(ACCOUNT, keys, data, sha(data), compress=compress)
    assert store.fetch(keys, stored.name, sha(data), len(data)) == data


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=5000), compress=st.booleans())
def test_fetch_of_store_is_identity(data: bytes, compress: bool) -> None:
    store = BlockStore(MemoryBackend(), Codec())
    keys = AccountKeys.derive_from(bytes(32))
    stored = store.store(ACCOUNT, keys, data, sha(data), compress=compress)
    assert store.fetch(keys, stored.name, sha(data), len(data)) == data


def test_stored_block_describes_what_was_written(
    store: BlockStore, backend: MemoryBackend, keys: AccountKeys
) -> None:
    data = compressible()
    stored = store.store(ACCOUNT, keys, data, sha(data), compress=True)
    blob = backend.get(stored.name)
    assert stored == StoredBlock(sha(data), len(data), stored.name, len(blob), CODEC_ZSTD, keys.epoch)
    assert stored.stored_size < len(data)
    raw = store.store(ACCOUNT, keys, data, sha(data), compress=False)
    assert raw.codec == CODEC_RAW
    assert raw.stored_size == len(data) + OVERHEAD


def test_object_name_is_account_prefix_and_keyed_id(store: BlockStore, keys: AccountKeys) -> None:
    data = b"named block"
    stored = store.store(ACCOUNT, keys, data, sha(data), compress=True)
    mac = keys.block_id(sha(data)).hex()
    account, fanout, leaf = stored.name.split("/")
    assert account == str(ACCOUNT)
    assert fanout == mac[:2]
    assert leaf.split(".")[0] == mac
    assert sha(data).hex() not in stored.name


def test_two_stores_of_the_same_content_get_different_names(
    store: BlockStore, backend: MemoryBackend, keys: AccountKeys
) -> None:
    data = compressible()
    a = store.store(ACCOUNT, keys, data, sha(data), compress=True)
    b = store.store(ACCOUNT, keys, data, sha(data), compress=True)
    assert a.name != b.name
    assert a.name.split(".")[0] == b.name.split(".")[0]  # same keyed id, different copy
    assert len(list(backend.list())) == 2
    assert backend.get(a.name) != backend.get(b.name)  # fresh nonce per copy
    assert store.fetch(keys, a.name, sha(data), len(data)) == store.fetch(keys, b.name, sha(data), len(data))


def test_same_content_in_two_accounts_gets_unrelated_names(store: BlockStore) -> None:
    data = b"shared content"
    one = store.store(1, AccountKeys.derive_from(new_data_key()), data, sha(data), compress=True)
    two = store.store(1, AccountKeys.derive_from(new_data_key()), data, sha(data), compress=True)
    assert one.name.split(".")[0] != two.name.split(".")[0]


# --- nothing readable in the store ----------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("make", [compressible, incompressible], ids=["text", "random"])
def test_stored_object_reveals_neither_plaintext_nor_its_hash(
    store: BlockStore, backend: MemoryBackend, keys: AccountKeys, make: Callable[[], bytes], compress: bool
) -> None:
    data = make()
    assert MARKER in data
    digest = sha(data)
    stored = store.store(ACCOUNT, keys, data, digest, compress=compress)
    objects = list(backend.list())
    assert [o.name for o in objects] == [stored.name]
    blob = backend.get(stored.name)
    for secret in (MARKER, digest, digest.hex().encode(), digest.hex().upper().encode(), data[:64]):
        assert secret not in blob
        assert secret.decode("latin-1") not in stored.name


# --- failures --------------------------------------------------------------------


@pytest.fixture
def stored_text(store: BlockStore, keys: AccountKeys) -> tuple[bytes, StoredBlock]:
    data = compressible()
    return data, store.store(ACCOUNT, keys, data, sha(data), compress=True)


def test_fetch_of_a_missing_object_is_an_integrity_error(
    store: BlockStore, backend: MemoryBackend, keys: AccountKeys, stored_text: tuple[bytes, StoredBlock]
) -> None:
    data, stored = stored_text
    backend.delete(stored.name)
    with pytest.raises(IntegrityError, match="missing"):
        store.fetch(keys, stored.name, sha(data), len(data))


def test_fetch_of_a_tampered_object_is_an_integrity_error(
    store: BlockStore, backend: MemoryBackend, keys: AccountKeys, stored_text: tuple[bytes, StoredBlock]
) -> None:
    data, stored = stored_text
    blob = backend.get(stored.name)
    for offset in [0, 4, 5, 6, 8, 12, 23, 24, len(blob) // 2, len(blob) - 16, len(blob) - 1]:
        tampered = bytearray(blob)
        tampered[offset] ^= 0x04
        backend.put(stored.name, bytes(tampered))
        with pytest.raises(IntegrityError):
            store.fetch(keys, stored.name, sha(data), len(data))


@pytest.mark.parametrize("length", [0, 10, OVERHEAD - 1, OVERHEAD, -1])
def test_fetch_of_a_truncated_object_is_an_integrity_error(
    store: BlockStore,
    backend: MemoryBackend,
    keys: AccountKeys,
    stored_text: tuple[bytes, StoredBlock],
    length: int,
) -> None:
    data, stored = stored_text
    backend.put(stored.name, backend.get(stored.name)[:length])
    with pytest.raises(IntegrityError):
        store.fetch(keys, stored.name, sha(data), len(data))


def test_an_object_swapped_for_another_block_is_an_integrity_error(
    store: BlockStore, backend: MemoryBackend, keys: AccountKeys, stored_text: tuple[bytes, StoredBlock]
) -> None:
    data, stored = stored_text
    other = b"another block entirely" * 10
    other_stored = store.store(ACCOUNT, keys, other, sha(other), compress=True)
    backend.put(stored.name, backend.get(other_stored.name))
    with pytest.raises(IntegrityError):
        store.fetch(keys, stored.name, sha(data), len(data))


@pytest.mark.parametrize("delta", [-1, 1, 4096])
def test_fetch_with_the_wrong_size_is_an_integrity_error(
    store: BlockStore, keys: AccountKeys, stored_text: tuple[bytes, StoredBlock], delta: int
) -> None:
    data, stored = stored_text
    with pytest.raises(IntegrityError):
        store.fetch(keys, stored.name, sha(data), len(data) + delta)


def test_fetch_with_the_wrong_sha_is_an_integrity_error(
    store: BlockStore, keys: AccountKeys, stored_text: tuple[bytes, StoredBlock]
) -> None:
    data, stored = stored_text
    for wrong in (sha(data + b"x"), bytes(32), sha(data)[::-1]):
        with pytest.raises(IntegrityError):
            store.fetch(keys, stored.name, wrong, len(data))


def test_bytes_sealed_under_the_wrong_hash_are_caught_by_rehashing(
    backend: MemoryBackend, keys: AccountKeys
) -> None:
    """A writer bug (sealing other bytes than it hashed) passes the tag check; re-hashing catches it."""
    data, sealed_instead = b"what the file holds" * 50, b"what a buggy writer sealed" * 40
    sealed_instead = sealed_instead[: len(data)].ljust(len(data), b".")
    store = BlockStore(backend, Codec())
    stored = store.store(ACCOUNT, keys, sealed_instead, sha(data), compress=True)
    assert store.fetch(keys, stored.name, sha(data), len(data)) == sealed_instead  # tag and size hold
    with pytest.raises(IntegrityError, match="recorded hash"):
        store.fetch(keys, stored.name, sha(data), len(data), rehash=True)
    with pytest.raises(IntegrityError, match="recorded hash"):
        BlockStore(backend, Codec(), rehash_reads=True).fetch(keys, stored.name, sha(data), len(data))


def test_fetch_with_another_accounts_keys_is_an_integrity_error(
    store: BlockStore, stored_text: tuple[bytes, StoredBlock]
) -> None:
    data, stored = stored_text
    with pytest.raises(IntegrityError):
        store.fetch(AccountKeys.derive_from(new_data_key()), stored.name, sha(data), len(data))


# --- frozen vectors through the whole read path ---------------------------------

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "block_v1.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("block", GOLDEN["blocks"], ids=[b["name"] for b in GOLDEN["blocks"]])
def test_golden_block_fetches_through_the_block_store(
    backend: MemoryBackend, block: dict[str, object]
) -> None:
    keys = AccountKeys.derive_from(bytes.fromhex(GOLDEN["data_key_hex"]), GOLDEN["key_epoch"])
    plaintext = base64.b64decode(block["plaintext_b64"])  # type: ignore[arg-type]
    mac = str(block["block_id_hex"])
    name = f"{ACCOUNT}/{mac[:2]}/{mac}.00000000"
    backend.put(name, base64.b64decode(block["sealed_b64"]))  # type: ignore[arg-type]
    store = BlockStore(backend, Codec())
    assert store.fetch(keys, name, bytes.fromhex(str(block["sha256_hex"])), len(plaintext)) == plaintext


def test_a_block_from_another_key_epoch_is_reported_as_such(backend: MemoryBackend) -> None:
    data_key = bytes(range(32))
    old, new = AccountKeys.derive_from(data_key, 1), AccountKeys.derive_from(data_key, 2)
    store = BlockStore(backend, Codec())
    data = b"epoch test" * 100
    stored = store.store(ACCOUNT, old, data, sha(data), compress=True)
    with pytest.raises(UnsupportedFormat, match="epoch"):
        store.fetch(new, stored.name, sha(data), len(data))
