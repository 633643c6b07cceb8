"""The sync engine in-process (the app over httpx's WSGI transport): its rules, and a
seeded random workout in which two devices and a third writer edit at once.

The workout's law is the client's promise: after syncing, both folders equal the
server's tree, and every content a device held when it synced is still somewhere
in that tree (at its path or in a conflicted copy) -- only deletes remove data.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from davserver.app import AppSettings, create_app
from storage.engine import Engine
from storage.errors import StorageError
from sync_ext.client.index import Index
from sync_ext.client.progress import Reporter
from sync_ext.client.remote import Remote
from sync_ext.client.syncer import Summary, Syncer
from tests.davserver.inprocess import LOCKINFO
from tests.e2e.syncclient import local_tree
from tests.storage.conftest import EngineFactory

Device = Callable[[str], Syncer]


@pytest.fixture
def engine(make_engine: EngineFactory) -> Engine:
    engine = make_engine()
    engine.accounts.create("alice", "alice-password")
    return engine


@pytest.fixture
def transport(engine: Engine) -> httpx.WSGITransport:
    return httpx.WSGITransport(app=create_app(engine, AppSettings()))


@pytest.fixture
def device(transport: httpx.WSGITransport, tmp_path: Path) -> Iterator[Device]:
    opened: list[tuple[Remote, Index]] = []

    def make(name: str) -> Syncer:
        remote = Remote("http://127.0.0.1", ("alice", "alice-password"), transport=transport)
        root = tmp_path / name
        root.mkdir()
        index = Index(root / ".davsync" / "index.sqlite")
        opened.append((remote, index))
        reporter = Reporter(verbose=False, bars=False, stream=io.StringIO())
        return Syncer(remote, index, root, root / ".davsync", device=name, reporter=reporter)

    yield make
    for remote, index in opened:
        index.close()
        remote.close()


def server_tree(engine: Engine) -> dict[str, str]:
    vol = engine.volume("alice")
    out = {}
    for e in vol.walk(""):
        out[e.path] = "dir" if e.is_dir else f"{e.size}:{e.sha256.hex() if e.sha256 else ''}"
    return out


def settle(*devices: Syncer) -> None:
    """Sync round-robin until a whole round does nothing."""
    for _ in range(8):
        summaries: list[Summary] = [d.sync() for d in devices]
        assert all(not s.errors for s in summaries), [s.errors for s in summaries]
        if not any(s.actions for s in summaries):
            return
    raise AssertionError("the devices did not settle")


def contents(root: Path) -> set[bytes]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".davsync"]
        for f in filenames:
            out.add((Path(dirpath) / f).read_bytes())
    return out


# -- rules --------------------------------------------------------------------------------


def test_a_touched_file_is_not_sent_again(device: Device) -> None:
    a = device("a")
    (a.root / "f.txt").write_bytes(b"same")
    assert a.sync().uploaded == 1
    os.utime(a.root / "f.txt", (1, 1))
    again = a.sync()
    assert again.uploaded == 0 and a.remote.traffic.blocks_sent == 1


def test_a_download_takes_blocks_from_local_files(device: Device, engine: Engine) -> None:
    a, b = device("a"), device("b")
    data = os.urandom(600 << 10)
    (a.root / "one.bin").write_bytes(data)
    settle(a, b)
    (a.root / "two.bin").write_bytes(data[: 300 << 10] + b"x" + data[300 << 10 :])
    a.sync()
    got = b.sync()
    assert got.downloaded == 1
    assert got.blocks_from_local >= 3
    assert (b.root / "two.bin").read_bytes() == (a.root / "two.bin").read_bytes()


def test_a_stale_local_block_is_not_trusted(device: Device) -> None:
    a, b = device("a"), device("b")
    data = os.urandom(200 << 10)
    (a.root / "one.bin").write_bytes(data)
    settle(a, b)
    # b's copy changes behind the index's back, keeping size and mtime.
    st = (b.root / "one.bin").stat()
    (b.root / "one.bin").write_bytes(os.urandom(200 << 10))
    os.utime(b.root / "one.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    (a.root / "copy.bin").write_bytes(data)
    a.sync()
    b.sync()
    assert (b.root / "copy.bin").read_bytes() == data


def test_a_folder_deleted_on_the_server_keeps_what_was_edited_in_it_here(
    device: Device, engine: Engine
) -> None:
    a = device("a")
    (a.root / "d").mkdir()
    (a.root / "d/old.txt").write_bytes(b"old")
    (a.root / "d/edited.txt").write_bytes(b"v1")
    a.sync()
    engine.volume("alice").delete("d")
    (a.root / "d/edited.txt").write_bytes(b"v2, edited offline")
    settle(a)
    assert local_tree(a.root) == server_tree(engine)
    assert (a.root / "d/edited.txt").read_bytes() == b"v2, edited offline"
    assert not (a.root / "d/old.txt").exists()


def test_a_file_replaced_by_a_folder_on_the_server_keeps_the_local_edit(
    device: Device, engine: Engine
) -> None:
    a = device("a")
    (a.root / "x").write_bytes(b"v1")
    a.sync()
    vol = engine.volume("alice")
    vol.delete("x")
    vol.mkdir("x")
    (a.root / "x").write_bytes(b"v2 edited here")
    settle(a)
    tree = server_tree(engine)
    assert tree["x"] == "dir"
    copies = [p for p in tree if p.startswith("x (conflicted copy, a, ")]
    assert len(copies) == 1 and (a.root / copies[0]).read_bytes() == b"v2 edited here"


def test_a_deleted_folder_goes_in_one_request(device: Device) -> None:
    a = device("a")
    (a.root / "many").mkdir()
    for i in range(30):
        (a.root / f"many/f{i}").write_bytes(b"%d" % i)
    a.sync()
    before = a.remote.traffic.requests
    for f in (a.root / "many").iterdir():
        f.unlink()
    (a.root / "many").rmdir()
    assert a.sync().deleted_remote == 1
    assert a.remote.traffic.requests - before <= 4


def test_names_the_server_refuses_are_skipped_not_fatal(device: Device, engine: Engine) -> None:
    a = device("a")
    (a.root / "back\\slash.txt").write_bytes(b"x")
    (a.root / "fine.txt").write_bytes(b"y")
    os.symlink(a.root / "fine.txt", a.root / "link")
    summary = a.sync()
    assert not summary.errors
    assert server_tree(engine) == {"fine.txt": f"1:{hashlib.sha256(b'y').hexdigest()}"}


# -- the workout --------------------------------------------------------------------------


class Writer:
    """Random edits on a local folder, every content unique."""

    def __init__(self, root: Path, rng: random.Random, tag: str) -> None:
        self.root, self.rng, self.tag, self.n = root, rng, tag, 0

    def content(self) -> bytes:
        self.n += 1
        size = self.rng.choice([0, 10, 1000, 70_000, 300_000])
        return f"{self.tag}-{self.n}|".encode() + self.rng.randbytes(size)

    def files(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.is_file() and ".davsync" not in p.parts]

    def dirs(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.is_dir() and ".davsync" not in p.parts]

    def step(self) -> None:
        rng = self.rng
        op = rng.choice(["create", "create", "edit", "edit", "delete", "rename", "mkdir", "mvdir", "rmdir"])
        files, dirs = self.files(), self.dirs()
        if op == "create" or (op in ("edit", "delete", "rename") and not files):
            folder = rng.choice([self.root, *dirs])
            (folder / f"{self.tag}{self.n}.txt").write_bytes(self.content())
        elif op == "edit":
            rng.choice(files).write_bytes(self.content())
        elif op == "delete":
            rng.choice(files).unlink()
        elif op == "rename":
            src = rng.choice(files)
            folder = rng.choice([self.root, *dirs])
            target = folder / f"r-{self.tag}{self.n}{src.suffix}"
            self.n += 1
            if not target.exists():
                src.rename(target)
        elif op == "mkdir" or not dirs:
            folder = rng.choice([self.root, *dirs])
            (folder / f"dir-{self.tag}{self.n}").mkdir()
            self.n += 1
        elif op == "mvdir":
            src = rng.choice(dirs)
            target = self.root / f"moved-{self.tag}{self.n}"
            self.n += 1
            src.rename(target)
        else:
            victim = rng.choice(dirs)
            for p in sorted(victim.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
            victim.rmdir()


def third_party_step(engine: Engine, rng: random.Random, n: int) -> set[bytes]:
    """Another device writes through the storage facade (a WebDAV or API user); returns
    the content it wrote."""
    vol = engine.volume("alice")
    files = [e.path for e in vol.walk("") if not e.is_dir]
    data = f"web-{n}|".encode() + rng.randbytes(rng.choice([0, 500]))
    try:
        if files and rng.random() < 0.5:
            vol.write(rng.choice(files), io.BytesIO(data))
        elif files and rng.random() < 0.3:
            vol.move(rng.choice(files), f"web-moved-{n}.txt")
            return set()
        else:
            vol.write(f"web-{n}.txt", io.BytesIO(data))
    except StorageError:
        return set()
    return {data}


@pytest.mark.parametrize("seed", range(int(os.environ.get("WORKOUT_SEEDS", "6"))))
def test_two_devices_and_a_web_user_editing_at_once_converge_and_lose_nothing(
    device: Device, engine: Engine, seed: int
) -> None:
    rng = random.Random(seed)
    a, b = device("a"), device("b")
    wa, wb = Writer(a.root, rng, "A"), Writer(b.root, rng, "B")
    before: set[bytes] = set()
    for round_ in range(int(os.environ.get("WORKOUT_ROUNDS", "5"))):
        for _ in range(rng.randint(1, 6)):
            wa.step()
        for _ in range(rng.randint(1, 6)):
            wb.step()
        # What must survive: every content written this round that its writer still holds.
        kept = (contents(a.root) | contents(b.root)) - before
        if rng.random() < 0.5:
            kept |= third_party_step(engine, rng, round_)
        order = [a, b] if rng.random() < 0.5 else [b, a]
        settle(*order)
        tree = server_tree(engine)
        assert local_tree(a.root) == tree, f"round {round_}"
        assert local_tree(b.root) == tree, f"round {round_}"
        before = contents(a.root)
        missing = kept - before
        assert not missing, f"round {round_}: {len(missing)} contents lost"


def test_a_folder_replaced_here_by_a_file_keeps_what_the_server_added_to_it(
    device: Device, engine: Engine
) -> None:
    a = device("a")
    (a.root / "x").mkdir()
    (a.root / "x/old.txt").write_bytes(b"old")
    a.sync()
    engine.volume("alice").write("x/added-there.txt", io.BytesIO(b"added on the server"))
    (a.root / "x/old.txt").unlink()
    (a.root / "x").rmdir()
    (a.root / "x").write_bytes(b"now a file here")
    settle(a)
    tree = server_tree(engine)
    assert local_tree(a.root) == tree
    assert (a.root / "x/added-there.txt").read_bytes() == b"added on the server"
    copies = [p for p in tree if p.startswith("x (conflicted copy, a, ")]
    assert len(copies) == 1 and (a.root / copies[0]).read_bytes() == b"now a file here"


def test_big_files_move_in_parallel_with_one_progress_display(device: Device, engine: Engine) -> None:
    a = device("a")
    a.report = Reporter(verbose=True, bars=True, stream=io.StringIO())
    assert a.parallel > 1
    for i in range(3):
        (a.root / f"big{i}.bin").write_bytes(os.urandom(9 << 20))
    summary = a.sync()
    assert summary.uploaded == 3 and not summary.errors
    assert local_tree(a.root) == server_tree(engine)
    b = device("b")
    b.report = Reporter(verbose=True, bars=True, stream=io.StringIO())
    assert b.sync().downloaded == 3
    assert local_tree(b.root) == server_tree(engine)


def test_a_restarted_client_reads_the_feed_before_trusting_its_mirror(device: Device, engine: Engine) -> None:
    """Its own last uploads are not in the mirror until the feed is read: a client killed
    before that must not take them for deleted on the server when it starts again."""
    a = device("a")
    (a.root / "new.txt").write_bytes(b"uploaded just before the client died")
    (a.root / "folder").mkdir()
    assert a.sync_pass(pull=True).uploaded == 1  # uploads; the mirror lags now
    restarted = Syncer(a.remote, Index(a.root / ".davsync" / "index.sqlite"), a.root, a.state_dir,
                       device="a", reporter=a.report)  # fmt: skip
    summary = restarted.sync(pull=False)  # the continuous mode's pass without remote news
    assert summary.deleted_local == 0 and summary.actions == 0
    assert (a.root / "new.txt").exists() and (a.root / "folder").is_dir()
    assert local_tree(a.root) == server_tree(engine)
    restarted.index.close()


def test_an_idle_pass_asks_nothing_and_a_change_is_still_seen(device: Device, engine: Engine) -> None:
    a = device("a")
    (a.root / "f.txt").write_bytes(b"one")
    a.sync()
    a.sync()  # reads the feed (its own upload), settles
    before = a.remote.traffic.requests
    assert a.sync(pull=False).actions == 0
    assert a.remote.traffic.requests == before
    (a.root / "g.txt").write_bytes(b"two")
    assert a.sync(pull=False).uploaded == 1
    assert local_tree(a.root) == server_tree(engine)


def test_a_file_locked_through_the_drive_waits_quietly_and_syncs_once_unlocked(
    device: Device, engine: Engine, transport: httpx.WSGITransport
) -> None:
    a = device("a")
    (a.root / "report.odt").write_bytes(b"v1")
    settle(a)
    dav = httpx.Client(transport=transport, auth=("alice", "alice-password"))
    url = "http://127.0.0.1/dav/report.odt"
    lock = dav.request("LOCK", url, content=LOCKINFO, headers={"Timeout": "Second-600"})
    assert lock.status_code == 200
    (a.root / "report.odt").write_bytes(b"v2, edited here while open elsewhere")
    passes = [a.sync(), a.sync(), a.sync()]
    assert all(s.locked == ["report.odt"] and len(s.errors) == 1 for s in passes)
    log = a.report.console.file.getvalue()
    assert log.count("report.odt is locked by a WebDAV client") == 1, log
    assert "could not sync" not in log
    with engine.volume("alice").open("report.odt") as r:
        assert r.read() == b"v1"
    assert dav.request("UNLOCK", url, headers={"Lock-Token": lock.headers["Lock-Token"]}).status_code == 204
    settle(a)
    with engine.volume("alice").open("report.odt") as r:
        assert r.read() == b"v2, edited here while open elsewhere"
    # Locked again later: said again.
    a.report.still_locked([])
    lock = dav.request("LOCK", url, content=LOCKINFO, headers={"Timeout": "Second-600"})
    (a.root / "report.odt").write_bytes(b"v3")
    assert a.sync().locked == ["report.odt"]
    assert a.report.console.file.getvalue().count("report.odt is locked by a WebDAV client") == 2
    dav.close()
