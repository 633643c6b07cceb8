"""``davsync`` end to end: real client processes, a real server, real folders."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from storage.chunker import Chunker, ChunkerParams
from tests.e2e.harness import DavServer, wait_until
from tests.e2e.syncclient import SyncClient, command, local_tree, server_tree, sha

Devices = Callable[[int], list[SyncClient]]
MiB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DavServer]:
    srv = DavServer(tmp_path_factory.mktemp("davsync") / "data", settings={"gc_grace_seconds": 3600})
    srv.init()
    srv.start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log, srv.log


@pytest.fixture
def account(server: DavServer) -> str:
    """A fresh account per test: davsync syncs a whole account."""
    name = "u" + uuid.uuid4().hex[:10]
    server.add_account(name, "pw-" + name)
    return name


@pytest.fixture
def api(server: DavServer, account: str) -> Iterator[httpx.Client]:
    with server.client(account) as client:
        yield client


@pytest.fixture
def devices(server: DavServer, account: str, tmp_path: Path) -> Devices:
    def make(n: int) -> list[SyncClient]:
        out = []
        for i in range(n):
            name = "AB"[i] if n <= 2 else f"d{i}"
            client = SyncClient(
                server, tmp_path / f"home-{name}", tmp_path / f"folder-{name}", f"laptop-{name}"
            )
            client.login(account)
            out.append(client)
        return out

    return make


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)


def converged(*clients: SyncClient, api: httpx.Client) -> dict[str, str]:
    remote = server_tree(api)
    for c in clients:
        assert c.tree() == remote, c.device
    return remote


# -- login --------------------------------------------------------------------------------


def test_login_keeps_a_device_token_not_the_password(
    devices: Devices, server: DavServer, account: str
) -> None:
    (a,) = devices(1)
    creds = a.home / "credentials.json"
    assert creds.stat().st_mode & 0o077 == 0
    doc = json.loads(creds.read_text())
    assert doc["user"] == account and doc["device"] == "laptop-A"
    assert server.accounts[account] not in creds.read_text()
    r = httpx.get(server.url + "/api/v1/account", headers={"Authorization": f"Bearer {doc['token']}"})
    assert r.status_code == 200 and r.json()["name"] == account


def test_login_with_a_wrong_password_says_so(server: DavServer, account: str, tmp_path: Path) -> None:
    c = SyncClient(server, tmp_path / "h", tmp_path / "f", "x")
    done = c.run("login", server.url, "--user", account, "--password-stdin", stdin="wrong\n")
    assert done.returncode == 2
    assert "refused the user name or password" in done.stderr
    assert not (tmp_path / "h" / "credentials.json").exists()


def test_a_revoked_token_stops_sync_with_a_clear_message(devices: Devices, api: httpx.Client) -> None:
    (a,) = devices(1)
    token_id = json.loads((a.home / "credentials.json").read_text())["token_id"]
    assert api.delete(f"/api/v1/account/tokens/{token_id}").status_code == 204
    done = a.run("sync", str(a.folder), "--once")
    assert done.returncode == 2
    assert "davsync login" in done.stderr


def test_a_running_client_whose_token_is_revoked_stops_and_says_why(
    devices: Devices, api: httpx.Client
) -> None:
    (a,) = devices(1)
    proc = a.start()
    try:
        assert proc.stdout is not None
        assert "in sync" in proc.stdout.readline() + proc.stdout.readline()
        token_id = json.loads((a.home / "credentials.json").read_text())["token_id"]
        assert api.delete(f"/api/v1/account/tokens/{token_id}").status_code == 204
        write(a.folder / "after.txt", "made after the revocation")  # the next scan needs the server
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, out
    assert "davsync login" in out


def test_logout_revokes_the_token_and_sync_then_asks_for_a_login(devices: Devices, server: DavServer) -> None:
    (a,) = devices(1)
    token = json.loads((a.home / "credentials.json").read_text())["token"]
    assert a.run("logout").returncode == 0
    r = httpx.get(server.url + "/api/v1/account", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    done = a.run("sync", str(a.folder), "--once")
    assert done.returncode == 2 and "not logged in" in done.stderr


def test_an_unreachable_server_is_reported(devices: Devices, tmp_path: Path) -> None:
    (a,) = devices(1)
    creds = a.home / "credentials.json"
    doc = json.loads(creds.read_text())
    doc["url"] = "http://127.0.0.1:9"  # discard port: nothing listens
    creds.write_text(json.dumps(doc))
    done = a.run("sync", str(a.folder), "--once", "--retries", "2")
    assert done.returncode == 3
    assert "cannot reach http://127.0.0.1:9" in done.stderr


def test_a_stopped_client_does_not_wait_for_an_unreachable_server(devices: Devices) -> None:
    (a,) = devices(1)
    creds = a.home / "credentials.json"
    doc = json.loads(creds.read_text())
    doc["url"] = "http://127.0.0.1:9"
    creds.write_text(json.dumps(doc))
    proc = a.start()
    try:
        assert proc.stdout is not None
        assert "cannot reach" in proc.stdout.readline()  # it is in its retry loop
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out


# -- convergence --------------------------------------------------------------------------


def test_two_clients_converge_through_creates_edits_deletes_and_renames(
    devices: Devices, api: httpx.Client
) -> None:
    a, b = devices(2)
    write(a.folder / "notes.txt", "v1")
    write(a.folder / "empty", b"")
    write(a.folder / "docs/report final #1.txt", "report")
    write(a.folder / "docs/deep/er/ünïcødé 😀.bin", os.urandom(3 * MiB))
    (a.folder / "empty folder").mkdir()
    a.sync()
    b.sync()
    tree = converged(a, b, api=api)
    assert tree["empty folder"] == "dir" and tree["empty"] == f"0:{sha(b'')}"

    # B edits, deletes, renames a file and moves a folder.
    write(b.folder / "notes.txt", "v2 from B")
    (b.folder / "empty").unlink()
    (b.folder / "docs/report final #1.txt").rename(b.folder / "docs/report final #2.txt")
    (b.folder / "docs/deep").rename(b.folder / "moved-deep")
    b.sync()
    a.sync()
    tree = converged(a, b, api=api)
    assert "empty" not in tree and "docs/deep" not in tree
    assert tree["moved-deep/er/ünïcødé 😀.bin"].startswith(f"{3 * MiB}:")
    # Renames travel as moves: the file keeps its history on the server.
    revs = api.get("/api/v1/files/list_revisions", params={"path": "docs/report final #2.txt"}).json()
    assert len(revs["revisions"]) == 1
    notes = api.get("/api/v1/files/list_revisions", params={"path": "notes.txt"}).json()
    assert len(notes["revisions"]) == 2

    # A does the same kinds of things; B follows.
    write(a.folder / "moved-deep/new.txt", "new in a moved folder")
    (a.folder / "docs").rename(a.folder / "documents")
    shutil.rmtree(a.folder / "empty folder")
    write(a.folder / "notes.txt", "v3 from A")
    a.sync()
    b.sync()
    tree = converged(a, b, api=api)
    assert "documents/report final #2.txt" in tree and "empty folder" not in tree


def test_renaming_a_big_file_sends_no_blocks_and_keeps_its_history(
    devices: Devices, api: httpx.Client
) -> None:
    a, b = devices(2)
    write(a.folder / "big.bin", os.urandom(8 * MiB))
    a.sync()
    b.sync()
    (a.folder / "big.bin").rename(a.folder / "renamed.bin")
    up = a.sync()
    assert up["blocks_sent"] == 0
    assert up["bytes_sent"] < 20_000
    down = b.sync()
    assert down["blocks_received"] == 0
    converged(a, b, api=api)
    meta = api.get("/api/v1/files/metadata", params={"path": "renamed.bin"}).json()
    assert meta["rev"] is not None


def test_changes_made_by_other_clients_arrive(devices: Devices, api: httpx.Client) -> None:
    (a,) = devices(1)
    a.sync()
    assert api.put("/dav/from-webdav.txt", content=b"via WebDAV").status_code == 201
    assert api.request("MKCOL", "/dav/dav-folder").status_code == 201
    a.sync()
    assert (a.folder / "from-webdav.txt").read_bytes() == b"via WebDAV"
    assert (a.folder / "dav-folder").is_dir()
    assert (
        api.request("MOVE", "/dav/dav-folder", headers={"Destination": "/dav/renamed-folder"}).status_code
        == 201
    )
    assert api.delete("/dav/from-webdav.txt").status_code == 204
    a.sync()
    assert local_tree(a.folder) == {"renamed-folder": "dir"}


# -- conflicts ----------------------------------------------------------------------------


def test_a_concurrent_edit_keeps_both_versions_as_a_conflicted_copy(
    devices: Devices, api: httpx.Client
) -> None:
    a, b = devices(2)
    write(a.folder / "plan.md", "original")
    a.sync()
    b.sync()
    write(a.folder / "plan.md", "edited on A")
    write(b.folder / "plan.md", "edited on B, differently")
    a.sync()
    b.sync()
    a.sync()
    tree = converged(a, b, api=api)
    copies = [p for p in tree if p.startswith("plan (conflicted copy, laptop-B, ")]
    assert len(copies) == 1 and copies[0].endswith(").md")
    assert (a.folder / "plan.md").read_text() == "edited on A"
    assert (a.folder / copies[0]).read_text() == "edited on B, differently"


def test_an_edit_against_a_delete_survives_on_both_sides(devices: Devices, api: httpx.Client) -> None:
    a, b = devices(2)
    write(a.folder / "keep/me.txt", "v1")
    a.sync()
    b.sync()
    shutil.rmtree(a.folder / "keep")
    write(b.folder / "keep/me.txt", "edited while A deleted the folder")
    a.sync()
    b.sync()
    a.sync()
    tree = converged(a, b, api=api)
    assert (a.folder / "keep/me.txt").read_text() == "edited while A deleted the folder"
    assert tree["keep"] == "dir"


def test_the_same_edit_on_both_sides_is_not_a_conflict(devices: Devices, api: httpx.Client) -> None:
    a, b = devices(2)
    write(a.folder / "same.txt", "one")
    a.sync()
    b.sync()
    write(a.folder / "same.txt", "two")
    write(b.folder / "same.txt", "two")
    a.sync()
    b.sync()
    assert converged(a, b, api=api) == {"same.txt": f"3:{sha(b'two')}"}


# -- delta transfer -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_one_byte_edit_or_insert_in_100_mib_sends_at_most_three_blocks(
    devices: Devices, api: httpx.Client
) -> None:
    a, b = devices(2)
    config = api.get("/api/v1/config").json()
    max_block = config["max_block_size"]
    big = a.folder / "video.raw"
    write(big, os.urandom(100 * MiB))
    full = a.sync()
    assert full["bytes_sent"] > 100 * MiB
    b.sync()

    with big.open("r+b") as f:  # one byte in the middle
        f.seek(50 * MiB)
        old = f.read(1)
        f.seek(50 * MiB)
        f.write(bytes([old[0] ^ 0xFF]))
    edit = a.sync()
    assert 1 <= edit["blocks_sent"] <= 3
    assert edit["bytes_sent"] <= 3 * max_block + 64 * 1024
    down = b.sync()
    assert 1 <= down["blocks_received"] <= 3
    assert down["bytes_received"] <= 3 * max_block + 256 * 1024

    data = big.read_bytes()
    big.write_bytes(b"!" + data)  # one byte inserted at the start
    del data
    insert = a.sync()
    assert 1 <= insert["blocks_sent"] <= 3
    assert insert["bytes_sent"] <= 3 * max_block + 64 * 1024
    down = b.sync()
    assert down["blocks_received"] <= 3
    converged(a, b, api=api)


# -- offline and interrupted --------------------------------------------------------------


def test_a_client_offline_during_200_changes_catches_up_from_its_cursor(
    devices: Devices, api: httpx.Client
) -> None:
    a, b = devices(2)
    for i in range(60):
        write(a.folder / f"d{i % 5}/f{i}.txt", f"file {i}")
    a.sync()
    assert "listing the account" in b.sync()["log"]
    cursor_before = _cursor(b)
    for i in range(40):  # 40 edits
        write(a.folder / f"d{i % 5}/f{i}.txt", f"file {i} edited")
    for i in range(40, 50):  # 10 deletes
        (a.folder / f"d{i % 5}/f{i}.txt").unlink()
    for i in range(50, 60):  # 10 renames
        (a.folder / f"d{i % 5}/f{i}.txt").rename(a.folder / f"d{(i + 1) % 5}/renamed-{i}.txt")
    for i in range(100):  # 100 new files in a new folder
        write(a.folder / f"new/n{i}.txt", f"new {i}")
    a.sync()
    for i in range(40):  # and 40 files through WebDAV while B is away
        assert api.put(f"/dav/web-{i}.txt", content=f"web {i}".encode()).status_code == 201
    journal = api.get("/api/v1/changes/list", params={"cursor": cursor_before, "limit": 2000}).json()
    assert len(journal["entries"]) >= 200
    caught_up = b.sync()
    assert "listing the account" not in caught_up["log"]  # the cursor was enough
    a.sync()
    converged(a, b, api=api)


def _cursor(c: SyncClient) -> str:
    db = sqlite3.connect(c.folder / ".davsync" / "index.sqlite")
    try:
        return str(db.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()[0])
    finally:
        db.close()


@pytest.mark.slow
def test_a_killed_upload_resumes_without_resending_finished_blocks(
    devices: Devices, api: httpx.Client
) -> None:
    (a,) = devices(1)
    data = os.urandom(200 * MiB)
    write(a.folder / "large.bin", data)
    hashes = _block_hashes(api, data)
    del data
    kill_sync_when(a, lambda: _present(api, hashes) >= len(hashes) // 4)
    present = _present(api, hashes)
    assert present < len(hashes), "the upload finished before it could be interrupted"
    assert api.get("/api/v1/files/metadata", params={"path": "large.bin"}).status_code == 404
    again = a.sync()
    assert again["blocks_sent"] <= len(hashes) - present
    converged(a, api=api)


@pytest.mark.slow
def test_a_killed_download_resumes_where_it_stopped(devices: Devices, api: httpx.Client) -> None:
    a, b = devices(2)
    write(a.folder / "large.bin", os.urandom(200 * MiB))
    a.sync()
    kill_sync_when(b, lambda: _partial_size(b.folder) >= 80 * MiB)
    assert not (b.folder / "large.bin").exists()
    again = b.sync()
    blocks = len(api.get("/api/v1/files/manifest", params={"path": "large.bin"}).json()["blocks"])
    assert again["blocks_received"] < blocks * 3 // 4
    assert again["bytes_received"] < 150 * MiB
    converged(a, b, api=api)
    assert not list(b.folder.glob(".~davsync-*"))


def kill_sync_when(c: SyncClient, ready: Callable[[], bool]) -> None:
    """Run ``sync --once`` and SIGKILL it as soon as ``ready()`` holds."""
    cmd = command("--home", str(c.home), "sync", str(c.folder), "--once", "--no-progress")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=c.env())
    try:
        assert wait_until(ready, timeout=120)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _partial_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob(".~davsync-*"))


def _block_hashes(api: httpx.Client, data: bytes) -> list[str]:
    c = api.get("/api/v1/config").json()["chunker"]
    params = ChunkerParams(c["min_size"], c["avg_size"], c["max_size"], c["normalization"])
    return [sha(block) for block in Chunker(params, c["seed"]).split_bytes(data)]


def _present(api: httpx.Client, hashes: list[str]) -> int:
    missing = api.post("/api/v1/blocks/missing", json={"hashes": hashes}).json()["missing"]
    return len(hashes) - len(missing)


# -- continuous ---------------------------------------------------------------------------


def test_continuous_sync_follows_both_sides_through_the_long_poll(
    devices: Devices, api: httpx.Client
) -> None:
    a, b = devices(2)
    procs = [a.start("--interval", "1"), b.start("--interval", "1")]
    try:
        write(a.folder / "hello.txt", "from A")
        assert wait_until(lambda: (b.folder / "hello.txt").exists(), timeout=30)
        assert api.put("/dav/web.txt", content=b"from the web").status_code == 201
        assert wait_until(lambda: (a.folder / "web.txt").exists() and (b.folder / "web.txt").exists(), 30)
        (b.folder / "hello.txt").unlink()
        assert wait_until(lambda: not (a.folder / "hello.txt").exists(), timeout=30)
        assert wait_until(lambda: server_tree(api) == local_tree(a.folder) == local_tree(b.folder), 30)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=30)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "Traceback" not in "".join(outs)
