"""The change feed: a reader replaying the journal from any position ends with the
server's tree; scopes, paging, compaction and expired positions."""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass

import pytest

from storage.engine import Engine
from storage.errors import CursorExpired
from storage.model import Change
from storage.volume import Volume


@pytest.fixture
def vol(engine: Engine) -> Volume:
    engine.accounts.create("alice", "alice-password")
    return engine.volume("alice")


@dataclass
class Node:
    is_dir: bool
    rev: int | None
    size: int | None


def apply(tree: dict[str, Node], change: Change) -> None:
    """What a sync client does with one entry: paths, kinds, revisions and sizes."""

    def drop(path: str) -> None:
        for p in [p for p in tree if p == path or p.startswith(path + "/")]:
            del tree[p]

    if change.op == "delete":
        drop(change.path)
    elif change.op == "move":
        assert change.old_path is not None
        moved = {p: n for p, n in tree.items() if p == change.old_path or p.startswith(change.old_path + "/")}
        drop(change.old_path)
        drop(change.path)
        for p, node in moved.items():
            tree[change.path + p[len(change.old_path) :]] = node
    else:
        tree[change.path] = Node(change.is_dir, change.version_id, change.size)


def server_tree(vol: Volume, scope: str = "") -> dict[str, Node]:
    return {
        e.path: Node(e.is_dir, None if e.is_dir else e.version_id, None if e.is_dir else e.size)
        for e in vol.walk(scope)
    }


def replay(vol: Volume, after: int, tree: dict[str, Node], scope: str = "", limit: int = 7) -> int:
    while True:
        page = vol.changes(after, limit=limit, scope=scope)
        for change in page.changes:
            apply(tree, change)
        after = page.position
        if not page.has_more:
            return after


def random_ops(vol: Volume, rng: random.Random, count: int) -> None:
    """Creates, overwrites, deletes, renames, folder moves, copies, trash restores."""
    for _ in range(count):
        entries = vol.walk("")
        files = [e.path for e in entries if not e.is_dir]
        dirs = [""] + [e.path for e in entries if e.is_dir]
        op = rng.choice(
            ["mkdir", "write", "write", "overwrite", "delete", "move", "move_dir", "copy", "restore"]
        )
        name = f"n{rng.randrange(10_000)}"
        parent = rng.choice(dirs)
        target = f"{parent}/{name}" if parent else name
        if op == "mkdir":
            vol.mkdir(target)
        elif op == "write" or (op == "overwrite" and not files):
            vol.write(target, io.BytesIO(rng.randbytes(rng.randrange(0, 3000))))
        elif op == "overwrite":
            vol.write(rng.choice(files), io.BytesIO(rng.randbytes(rng.randrange(1, 3000))))
        elif op == "delete" and len(entries) > 3:
            vol.delete(rng.choice(entries).path)
        elif op == "move" and files:
            vol.move(rng.choice(files), target)
        elif op == "move_dir" and len(dirs) > 1:
            src = rng.choice(dirs[1:])
            if not (parent == src or parent.startswith(src + "/")):
                vol.move(src, target)
        elif op == "copy" and len(dirs) > 1:
            src = rng.choice(dirs[1:])
            if not (parent == src or parent.startswith(src + "/")):
                vol.copy(src, target)
        elif op == "restore":
            items = vol.trash()
            if items:
                vol.restore_from_trash(items[0].id, target)


def test_replaying_from_any_position_rebuilds_the_tree(vol: Volume) -> None:
    rng = random.Random(6578)
    snapshots = [(0, {})]
    for _ in range(6):
        random_ops(vol, rng, 25)
        snapshots.append((vol.change_seq(), server_tree(vol)))
    final = server_tree(vol)
    assert len(final) > 20
    for position, tree in snapshots:
        rebuilt = dict(tree)
        replay(vol, position, rebuilt)
        assert rebuilt == final


def test_entries_carry_what_a_client_needs(vol: Volume) -> None:
    start = vol.change_seq()
    vol.mkdir("d", mtime=1_600_000_000)
    entry = vol.write("d/f.txt", io.BytesIO(b"hello"), mtime=1_700_000_000)
    vol.move("d", "e")
    vol.delete("e")
    changes = vol.changes(start).changes
    assert [(c.op, c.path, c.old_path, c.is_dir) for c in changes] == [
        ("create", "d", None, True),
        ("create", "d/f.txt", None, False),
        ("move", "e", "d", True),
        ("delete", "e", None, True),
    ]
    created = changes[1]
    assert (created.version_id, created.size, created.mtime) == (entry.version_id, 5, 1_700_000_000)
    assert created.sha256 == hashlib.sha256(b"hello").digest()
    assert changes[0].mtime == 1_600_000_000


def test_pages_end_at_the_accounts_position_across_gaps(vol: Volume) -> None:
    vol.write("a", io.BytesIO(b"1"))
    vol.set_properties("a", {"{urn:x}p": "v"})  # raises the sequence, writes no entry
    page = vol.changes(0, limit=10)
    assert [c.path for c in page.changes] == ["a"]
    assert page.position == vol.change_seq() > page.changes[-1].seq
    assert not page.has_more
    assert vol.changes(page.position).changes == []


def test_a_scope_sees_its_folder_and_moves_across_its_border_as_create_or_delete(vol: Volume) -> None:
    for d in ("in", "in/sub", "out"):
        vol.mkdir(d)
    start = vol.change_seq()
    vol.write("in/sub/a", io.BytesIO(b"a"))
    vol.write("out/b", io.BytesIO(b"b"))
    vol.write("inside", io.BytesIO(b"not in 'in' although the name starts alike"))
    vol.move("out/b", "in/b")
    vol.move("in/sub/a", "out/a")
    vol.move("in/b", "in/sub/b")
    vol.move("out", "in/out")
    scoped = vol.changes(start, scope="in").changes
    assert [(c.op, c.path, c.old_path) for c in scoped] == [
        ("create", "in/sub/a", None),
        ("create", "in/b", None),
        ("delete", "in/sub/a", None),
        ("move", "in/sub/b", "in/b"),
        ("create", "in/out", None),
    ]
    assert vol.has_changes(start, scope="out") == (True, vol.change_seq())
    later = vol.change_seq()
    vol.write("elsewhere", io.BytesIO(b"x"))
    assert vol.has_changes(later, scope="in") == (False, vol.change_seq())
    assert vol.has_changes(later) == (True, vol.change_seq())


def test_restoring_a_folder_from_the_trash_lists_each_node(vol: Volume) -> None:
    vol.mkdir("d")
    vol.mkdir("d/e")
    vol.write("d/e/f", io.BytesIO(b"f"))
    vol.delete("d")
    start = vol.change_seq()
    vol.restore_from_trash(vol.trash()[0].id, "r")
    assert [(c.op, c.path) for c in vol.changes(start).changes] == [
        ("create", "r"),
        ("create", "r/e"),
        ("create", "r/e/f"),
    ]


def test_compaction_resets_older_positions_only(engine: Engine, vol: Volume) -> None:
    now = [1_000_000.0]
    vol._clock = lambda: now[0]  # the journal entries' time, injected
    vol.write("old", io.BytesIO(b"o"))
    old_position = vol.change_seq()
    now[0] += 100 * 86400
    vol.write("new", io.BytesIO(b"n"))
    assert engine.compact_journal(now=now[0]) == 1
    with pytest.raises(CursorExpired):
        vol.changes(0)
    assert [c.path for c in vol.changes(old_position).changes] == ["new"]
    with pytest.raises(CursorExpired):
        vol.changes(vol.change_seq() + 1)
    assert engine.compact_journal(now=now[0]) == 0


def test_a_scope_hears_when_an_ancestor_is_moved_or_deleted(vol: Volume) -> None:
    for d in ("a", "a/s", "c", "c/s"):
        vol.mkdir(d)
    start = vol.change_seq()
    vol.move("a", "b")
    vol.move("c", "a")
    vol.delete("a")
    assert [(c.op, c.path, c.is_dir) for c in vol.changes(start, scope="a/s").changes] == [
        ("delete", "a/s", True),
        ("create", "a/s", True),
        ("delete", "a/s", True),
    ]
