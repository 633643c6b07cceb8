"""davfs2 (the Debian package) mounting the server through FUSE: the kernel's file calls
turned into WebDAV by a client we did not write, with its locks, cache and uploads on close.

Mounting needs root and /dev/fuse: where either is missing the tests are skipped and say
why (with ``CI`` set, a missing davfs2 is a failure, as for the other tools; .ci/run
installs it). davfs2 reads its own configuration from the file given here (cache in a
temporary folder, uploads right after close, and ``buf_size 64``, without which davfs2
1.6/1.7 cannot list folders on Linux 6.16 and later: davfs2 issue #22); the password goes
in on standard input, so no secrets file is read or written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.conftest import CAROL_QUOTA
from tests.e2e.harness import DavServer, lock_tokens, member_names, propfind, require_tool, wait_until


def _mount_davfs() -> str:
    found = require_tool("mount.davfs", "davfs2", where=("/usr/sbin", "/sbin"))
    if os.geteuid() != 0:
        pytest.skip("mounting with davfs2 needs root")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse: this kernel cannot mount FUSE file systems")
    return found


@contextlib.contextmanager
def _mounted(dav_server: DavServer, user: str) -> Iterator[Path]:
    """``user``'s /dav/ mounted with davfs2; unmounted (its uploads finished) afterwards."""
    binary = _mount_davfs()
    # Not under pytest's tmp_path: davfs2's daemon runs as the unprivileged "davfs2" user and
    # must reach its cache folder, and pytest's base folder is private to root.
    base = Path(tempfile.mkdtemp(prefix="davfs2-", dir="/tmp"))
    base.chmod(0o755)
    cache, point = base / "cache", base / "mnt"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    point.mkdir()
    conf = base / "davfs2.conf"
    conf.write_text(
        f"cache_dir {cache}\ndelay_upload 0\nbuf_size 64\nuse_locks 1\ndir_refresh 1\nfile_refresh 1\n"
    )
    result = subprocess.run(
        [binary, "-o", f"conf={conf},username={user}", dav_server.dav_url + "/", str(point)],
        input=dav_server.accounts[user] + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"mount.davfs -> {result.returncode}: {result.stdout}{result.stderr}"
    try:
        yield point
    finally:
        unmounted = subprocess.run(
            ["umount", str(point)], capture_output=True, text=True, timeout=120, check=False
        )
        if unmounted.returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30, check=False)
        shutil.rmtree(base, ignore_errors=True)
        assert unmounted.returncode == 0, unmounted.stderr


@pytest.fixture
def mount(dav_server: DavServer) -> Iterator[Path]:
    """alice's /dav/ (no quota) mounted with davfs2."""
    with _mounted(dav_server, "alice") as point:
        yield point


def _names(dav_server: DavServer, folder: str) -> set[str]:
    with dav_server.client("alice") as c:
        return member_names(propfind(c, "/dav/" + quote(folder) + "/"), f"/dav/{folder}/")


def _locked(dav_server: DavServer, path: str) -> bool:
    with dav_server.client("alice") as c:
        return bool(lock_tokens(propfind(c, "/dav/" + quote(path), "0")))


def test_files_written_through_the_mount_reach_the_server(mount: Path, dav_server: DavServer) -> None:
    folder = mount / "mounted dir"
    folder.mkdir()
    big = os.urandom(5_000_000)
    (folder / "big.bin").write_bytes(big)
    (folder / "note ü.txt").write_text("a note\n", encoding="utf-8")
    (folder / "note ü.txt").rename(folder / "renamed note.txt")
    (folder / "gone.txt").write_bytes(b"short-lived")
    (folder / "gone.txt").unlink()
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.txt").write_bytes(b"deep")
    assert sorted(os.listdir(folder)) == ["big.bin", "renamed note.txt", "sub"]

    # davfs2 uploads a file once it is closed (delay_upload 0): wait for the server to have them.
    def arrived() -> bool:
        with dav_server.client("alice") as c:
            r = c.get("/dav/" + quote("mounted dir/big.bin"))
            return r.status_code == 200 and r.content == big

    assert wait_until(arrived, timeout=30)
    assert wait_until(lambda: _names(dav_server, "mounted dir") == {"big.bin", "renamed note.txt", "sub"})
    with dav_server.client("alice") as c:
        assert wait_until(
            lambda: c.get("/dav/" + quote("mounted dir/renamed note.txt")).content == b"a note\n"
        )
        assert c.get("/dav/" + quote("mounted dir/sub/deep.txt")).content == b"deep"
        # Made on the server, read through the mount (davfs2 fetches it with GET).
        shared = os.urandom(300_000)
        assert c.put("/dav/" + quote("mounted dir/from server.bin"), content=shared).status_code == 201
    assert wait_until(lambda: "from server.bin" in os.listdir(folder), timeout=30)
    assert (folder / "from server.bin").read_bytes() == shared


def test_a_file_open_for_writing_is_locked_until_closed(mount: Path, dav_server: DavServer) -> None:
    """davfs2 locks a file while it is open for writing (use_locks): another client's PUT
    gets 423 meanwhile; on close davfs2 uploads the content and releases the lock."""
    (mount / "locking").mkdir()
    path = "locking/held.txt"
    with open(mount / path, "w", encoding="utf-8") as held:
        held.write("written through the mount")
        held.flush()
        assert wait_until(lambda: _locked(dav_server, path), timeout=15)
        with dav_server.client("alice") as c:
            assert c.put("/dav/" + path, content=b"from elsewhere").status_code == 423
    assert wait_until(lambda: not _locked(dav_server, path), timeout=30)
    with dav_server.client("alice") as c:
        assert c.get("/dav/" + path).content == b"written through the mount"
        assert c.put("/dav/" + path, content=b"from elsewhere").status_code == 204


def test_df_on_the_mount_shows_the_accounts_quota(dav_server: DavServer) -> None:
    """davfs2 sizes the file system from RFC 4331 quota-used-bytes and quota-available-bytes."""
    with dav_server.client("carol") as c:
        assert c.put("/dav/df-probe.bin", content=os.urandom(CAROL_QUOTA // 2)).status_code in (201, 204)
        used = int(c.get("/api/v1/account").json()["used_bytes"])
    with _mounted(dav_server, "carol") as point:
        fs = os.statvfs(point)
        total, available = fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize
    # davfs2 counts in its block size (4 KiB here): allow one block of rounding.
    assert abs(total - CAROL_QUOTA) <= fs.f_frsize, (total, CAROL_QUOTA)
    assert abs(available - (CAROL_QUOTA - used)) <= fs.f_frsize, (available, CAROL_QUOTA - used)
