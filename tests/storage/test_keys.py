"""The key hierarchy (storage/keys.py): master key file, account key wraps, HKDF subkeys.

``tests/golden/keys_v1.json`` freezes the HKDF outputs of every label and a key
wrap made once under a fixed master key, so renaming a label or changing the
wrap format is caught.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.chunker import Chunker, ChunkerParams
from storage.codec import Codec
from storage.envelope import open_sealed
from storage.errors import IntegrityError
from storage.keys import KEY_SIZE, AccountKeys, MasterKey, derive, new_data_key

GOLDEN_DIR = Path(__file__).parents[1] / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "keys_v1.json").read_text(encoding="utf-8"))
MASTER = bytes.fromhex(GOLDEN["master_key_hex"])
DATA_KEY = bytes.fromhex(GOLDEN["data_key_hex"])
ACCOUNT = GOLDEN["account_id"]
WRAPPED = bytes.fromhex(GOLDEN["wrapped_data_key_hex"])


# --- frozen vectors -------------------------------------------------------------


def test_golden_wrapped_account_key_unwraps() -> None:
    master = MasterKey(MASTER)
    assert master.key_id == GOLDEN["master_key_id"]
    assert master.unwrap(ACCOUNT, WRAPPED) == DATA_KEY


@pytest.mark.parametrize("purpose", ["account-key-wrap", "master-key-id"])
def test_golden_master_subkeys(purpose: str) -> None:
    expected = bytes.fromhex(GOLDEN["hkdf_master"][purpose])
    assert derive(MASTER, purpose, len(expected)) == expected


@pytest.mark.parametrize("purpose", ["block-encryption", "block-id", "chunker-seed"])
def test_golden_account_subkeys(purpose: str) -> None:
    expected = bytes.fromhex(GOLDEN["hkdf_account"][purpose])
    assert derive(DATA_KEY, purpose, len(expected)) == expected


def test_golden_account_keys_use_the_frozen_subkeys() -> None:
    keys = AccountKeys.derive_from(DATA_KEY)
    assert keys.block_mac_key == bytes.fromhex(GOLDEN["hkdf_account"]["block-id"])
    assert keys.chunker_seed == GOLDEN["chunker_seed"]
    sha_empty = hashlib.sha256(b"").digest()
    assert keys.block_id(sha_empty).hex() == GOLDEN["block_id_of_empty_sha256_hex"]
    # the block-encryption subkey, by its effect: a frozen block opens under it
    block = json.loads((GOLDEN_DIR / "block_v1.json").read_text(encoding="utf-8"))
    assert block["data_key_hex"] == GOLDEN["data_key_hex"]
    first = block["blocks"][0]
    _, payload = open_sealed(
        keys.block_cipher, bytes.fromhex(first["block_id_hex"]), base64.b64decode(first["sealed_b64"])
    )
    assert Codec().decode(first["codec"], payload) == base64.b64decode(first["plaintext_b64"])


def test_the_chunker_seed_is_the_frozen_subkey_minus_its_top_bit() -> None:
    raw = int.from_bytes(bytes.fromhex(GOLDEN["hkdf_account"]["chunker-seed"]), "big")
    assert GOLDEN["chunker_seed"] == raw & (2**63 - 1)


def test_purposes_give_distinct_subkeys() -> None:
    purposes = ["block-encryption", "block-id", "chunker-seed", "account-key-wrap", "master-key-id"]
    assert len({derive(DATA_KEY, p) for p in purposes}) == len(purposes)


# --- master key file ------------------------------------------------------------


def test_master_key_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    key = MasterKey.generate()
    key.save(path)
    loaded = MasterKey.load(path)
    assert loaded.key_id == key.key_id
    data_key = new_data_key()
    assert loaded.unwrap(5, key.wrap(5, data_key)) == data_key


def test_master_key_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    old = os.umask(0)  # the mode must come from save(), not from a friendly umask
    try:
        MasterKey.generate().save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_master_key_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    first = MasterKey.generate()
    first.save(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        MasterKey.generate().save(path)
    assert path.read_bytes() == before
    assert MasterKey.load(path).key_id == first.key_id


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    created = MasterKey.load_or_create(path)
    assert path.exists()
    assert MasterKey.load_or_create(path).key_id == created.key_id


def test_master_key_file_is_hex_with_a_newline(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    MasterKey(MASTER).save(path)
    assert path.read_text(encoding="ascii") == MASTER.hex() + "\n"


@pytest.mark.parametrize("content", ["not hex at all\n", "abcd\n", (MASTER + b"x").hex() + "\n", ""])
def test_malformed_master_key_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "master.key"
    path.write_text(content, encoding="ascii")
    with pytest.raises(ValueError):
        MasterKey.load(path)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_master_key_must_be_32_bytes(length: int) -> None:
    with pytest.raises(ValueError):
        MasterKey(bytes(length))


def test_repr_never_shows_the_master_key() -> None:
    key = MasterKey(MASTER)
    for text in (repr(key), str(key), f"{key!r}", f"{key}", repr([key])):
        assert MASTER.hex() not in text.lower()
        assert MASTER.hex()[:16] not in text.lower()
        assert repr(MASTER) not in text
    assert key.key_id in repr(key)


# --- wraps --------------------------------------------------------------------------


def test_unwrap_with_a_wrong_master_key_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        MasterKey.generate().unwrap(ACCOUNT, WRAPPED)


@pytest.mark.parametrize("account", [ACCOUNT + 1, ACCOUNT - 1, 0, -ACCOUNT])
def test_unwrap_for_another_account_is_an_integrity_error(account: int) -> None:
    with pytest.raises(IntegrityError):
        MasterKey(MASTER).unwrap(account, WRAPPED)


def test_any_flipped_byte_of_a_wrap_is_an_integrity_error() -> None:
    master = MasterKey(MASTER)
    for offset in range(len(WRAPPED)):
        tampered = bytearray(WRAPPED)
        tampered[offset] ^= 0x01
        with pytest.raises(IntegrityError):
            master.unwrap(ACCOUNT, bytes(tampered))


@pytest.mark.parametrize("cut", [0, 1, 13, len(WRAPPED) - 1])
def test_truncated_or_extended_wrap_is_an_integrity_error(cut: int) -> None:
    master = MasterKey(MASTER)
    with pytest.raises(IntegrityError):
        master.unwrap(ACCOUNT, WRAPPED[:cut])
    with pytest.raises(IntegrityError):
        master.unwrap(ACCOUNT, WRAPPED + WRAPPED[:cut] + b"\x00")


def test_wraps_are_randomised_and_all_unwrap() -> None:
    master = MasterKey(MASTER)
    data_key = new_data_key()
    a, b = master.wrap(9, data_key), master.wrap(9, data_key)
    assert a != b
    assert master.unwrap(9, a) == master.unwrap(9, b) == data_key
    assert data_key not in a


def test_new_data_keys_are_random_32_bytes() -> None:
    a, b = new_data_key(), new_data_key()
    assert len(a) == len(b) == KEY_SIZE
    assert a != b


# --- account subkeys ----------------------------------------------------------------


def test_different_accounts_get_different_block_ids_and_seeds() -> None:
    one, two = AccountKeys.derive_from(new_data_key()), AccountKeys.derive_from(new_data_key())
    sha = hashlib.sha256(b"the same content in two accounts").digest()
    assert one.block_id(sha) != two.block_id(sha)
    assert one.chunker_seed != two.chunker_seed
    assert one.block_mac_key != two.block_mac_key


def test_block_id_is_a_keyed_mac_not_the_plain_hash() -> None:
    keys = AccountKeys.derive_from(DATA_KEY)
    sha = hashlib.sha256(b"content").digest()
    assert keys.block_id(sha) != sha
    assert keys.block_id(sha) != hashlib.sha256(sha).digest()
    assert keys.block_id(sha) == keys.block_id(sha)
    assert len(keys.block_id(sha)) == 32


def test_epoch_is_kept() -> None:
    assert AccountKeys.derive_from(DATA_KEY, epoch=3).epoch == 3
    assert AccountKeys.derive_from(DATA_KEY).epoch == 1


@settings(max_examples=100, deadline=None)
@given(data_key=st.binary(min_size=32, max_size=32))
def test_chunker_seed_fits_pyfastcdc(data_key: bytes) -> None:
    seed = AccountKeys.derive_from(data_key).chunker_seed
    assert 0 < seed < 2**63
    Chunker(ChunkerParams(), seed)  # pyfastcdc computes seed << 1 as uint64: 2**63 would overflow


def test_a_seed_of_2_to_the_63_would_not_fit() -> None:
    # proves the test above can fail: the bound it checks is real
    with pytest.raises(OverflowError):
        Chunker(ChunkerParams(), 2**63)
