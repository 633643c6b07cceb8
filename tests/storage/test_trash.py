"""The trash: deletes are listed, restored (to the original or another path, never over
something) and purged."""

from __future__ import annotations

import io

import pytest

from storage.engine import Engine
from storage.errors import AlreadyExists, Conflict, NotFound
from storage.volume import Volume


@pytest.fixture
def vol(engine: Engine) -> Volume:
    engine.accounts.create("alice", "alice-password")
    return engine.volume("alice")


def _read(vol: Volume, path: str) -> bytes:
    with vol.open(path) as r:
        return r.read()


def test_a_deleted_folder_is_one_item_restored_whole(vol: Volume) -> None:
    vol.mkdir("docs")
    vol.mkdir("docs/sub")
    vol.write("docs/a.txt", io.BytesIO(b"a" * 10))
    vol.write("docs/sub/b.txt", io.BytesIO(b"b" * 20))
    vol.write("docs/gone.txt", io.BytesIO(b"g"))
    vol.delete("docs/gone.txt")  # deleted before the folder: its own item
    item = vol.delete("docs")
    assert vol.quota().used_bytes == 31  # the trash is retained: it still counts
    listed = vol.trash()
    assert [(i.id, i.path, i.is_dir, i.size) for i in listed] == [
        (item, "docs", True, 30),
        (listed[1].id, "docs/gone.txt", False, 1),
    ]
    entry = vol.restore_from_trash(item)
    assert entry.path == "docs" and entry.is_dir
    assert _read(vol, "docs/sub/b.txt") == b"b" * 20
    assert sorted(e.name for e in vol.listdir("docs")) == ["a.txt", "sub"]
    assert vol.quota().used_bytes == 31
    assert [i.path for i in vol.trash()] == ["docs/gone.txt"]
    vol.purge_trash_item(vol.trash()[0].id)
    assert vol.quota().used_bytes == 30
    assert vol.journal()[-1].op == "create"


def test_restore_elsewhere_and_clashes(vol: Volume) -> None:
    vol.mkdir("d")
    vol.write("d/x.txt", io.BytesIO(b"old"))
    item = vol.delete("d")
    vol.mkdir("d")  # something new took its place
    with pytest.raises(AlreadyExists):
        vol.restore_from_trash(item)
    with pytest.raises(Conflict):
        vol.restore_from_trash(item, "no/such/parent")
    entry = vol.restore_from_trash(item, "d-restored")
    assert entry.path == "d-restored"
    assert _read(vol, "d-restored/x.txt") == b"old"
    assert len(vol.revisions("d-restored/x.txt")) == 1
    with pytest.raises(NotFound):
        vol.restore_from_trash(item)  # no longer in the trash


def test_purge_removes_an_item_for_good(engine: Engine, vol: Volume) -> None:
    vol.write("f.bin", io.BytesIO(b"z" * 300_000))
    item = vol.delete("f.bin")
    vol.purge_trash_item(item)
    assert vol.trash() == []
    with pytest.raises(NotFound):
        vol.purge_trash_item(item)
    with pytest.raises(NotFound):
        vol.lookup("f.bin", include_deleted=True)
    assert engine.gc(grace_seconds=0).blocks_deleted > 0
    assert engine.fsck(deep=True).clean


def test_another_accounts_trash_is_out_of_reach(engine: Engine, vol: Volume) -> None:
    vol.write("secret", io.BytesIO(b"s"))
    item = vol.delete("secret")
    engine.accounts.create("bob", "bob-password-1")
    bob = engine.volume("bob")
    assert bob.trash() == []
    with pytest.raises(NotFound):
        bob.restore_from_trash(item)
    with pytest.raises(NotFound):
        bob.purge_trash_item(item)
    assert [i.id for i in vol.trash()] == [item]
