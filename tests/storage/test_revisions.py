"""Revisions: listing (live and trashed files), paging, and restore as a new version."""

from __future__ import annotations

import io

import pytest

from storage.engine import Engine
from storage.errors import Conflict, NotFound, QuotaExceeded
from storage.volume import Volume


@pytest.fixture
def vol(engine: Engine) -> Volume:
    engine.accounts.create("alice", "alice-password")
    return engine.volume("alice")


def _read(vol: Volume, path: str, version_id: int | None = None) -> bytes:
    with vol.open(path, version_id=version_id) as r:
        return r.read()


def _five_versions(vol: Volume) -> list[bytes]:
    contents = [f"version {i} ".encode() * (i + 1) for i in range(5)]
    for data in contents:
        vol.write("doc.txt", io.BytesIO(data))
    return contents


def test_five_writes_make_five_revisions_newest_first(vol: Volume) -> None:
    contents = _five_versions(vol)
    revs = vol.revisions("doc.txt")
    assert [r.size for r in revs] == [len(c) for c in reversed(contents)]
    assert [r.is_current for r in revs] == [True, False, False, False, False]
    assert [_read(vol, "doc.txt", r.version_id) for r in revs] == list(reversed(contents))
    page = vol.revisions("doc.txt", limit=2)
    assert [r.version_id for r in page] == [r.version_id for r in revs[:2]]
    rest = vol.revisions("doc.txt", before=page[-1].version_id)
    assert [r.version_id for r in rest] == [r.version_id for r in revs[2:]]


def test_restore_appends_a_version_equal_to_the_old_one(vol: Volume) -> None:
    contents = _five_versions(vol)
    second = vol.revisions("doc.txt")[3]
    seq = vol.journal()[-1].seq
    entry = vol.restore("doc.txt", second.version_id, device="test")
    revs = vol.revisions("doc.txt")
    assert len(revs) == 6 and revs[0].version_id == entry.version_id and revs[0].is_current
    assert (revs[0].sha256, revs[0].size, revs[0].device) == (second.sha256, second.size, "test")
    assert _read(vol, "doc.txt") == contents[1]
    assert [c.op for c in vol.journal(after=seq)] == ["modify"]
    assert vol.quota().used_bytes == sum(map(len, contents)) + len(contents[1])  # every kept version counts
    assert [_read(vol, "doc.txt", r.version_id) for r in revs[1:]] == list(reversed(contents))


def test_a_trashed_file_keeps_its_revisions_and_can_be_restored(vol: Volume) -> None:
    contents = _five_versions(vol)
    vol.delete("doc.txt")
    with pytest.raises(NotFound):
        vol.revisions("doc.txt")
    found = vol.lookup("doc.txt", include_deleted=True)
    assert found.deleted_at is not None and found.size == len(contents[-1])
    revs = vol.revisions("doc.txt", include_deleted=True)
    assert len(revs) == 5 and not any(r.is_current for r in revs)
    entry = vol.restore("doc.txt", revs[2].version_id)
    assert entry.node_id == found.node_id
    assert _read(vol, "doc.txt") == contents[2]
    assert vol.lookup("doc.txt").deleted_at is None
    assert len(vol.revisions("doc.txt")) == 6
    assert vol.journal()[-1].op == "create"


def test_restore_refuses_what_it_cannot_do(engine: Engine, vol: Volume) -> None:
    vol.mkdir("dir")
    vol.write("dir/a.txt", io.BytesIO(b"a"))
    vol.write("b.txt", io.BytesIO(b"b"))
    a_rev = vol.revisions("dir/a.txt")[0].version_id
    with pytest.raises(NotFound):
        vol.restore("b.txt", a_rev)  # another file's revision
    with pytest.raises(NotFound):
        vol.restore("b.txt", 10**9)
    with pytest.raises(Conflict):
        vol.restore("dir", a_rev)
    vol.delete("dir")
    with pytest.raises(Conflict):
        vol.restore("dir/a.txt", a_rev)  # its folder is in the trash too
    engine.accounts.create("bob", "bob-password-1")
    bob = engine.volume("bob")
    bob.write("b.txt", io.BytesIO(b"bob"))
    with pytest.raises(NotFound):
        bob.restore("b.txt", vol.revisions("b.txt")[0].version_id)


def test_restore_respects_the_quota(engine: Engine, vol: Volume) -> None:
    vol.write("big", io.BytesIO(b"x" * 5000))
    vol.write("big", io.BytesIO(b"y"))
    engine.accounts.set_quota("alice", 1000)
    with pytest.raises(QuotaExceeded):
        vol.restore("big", vol.revisions("big")[1].version_id)
    assert _read(vol, "big") == b"y"
