"""rclone (the Debian binary) syncing a tricky tree to the server and checking it byte for byte.

rclone percent-encodes every name itself and trusts PROPFIND for listings, so
this catches URL-decoding, listing and name-normalisation mistakes with a
client we did not write. The remote is configured through environment
variables only; no rclone.conf is read or written.
"""

from __future__ import annotations

import os
import subprocess
import unicodedata
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.harness import DavServer, require_tool

#: One name per awkward character class; the NFD one is decomposed on disk.
CAFE_NFD = unicodedata.normalize("NFD", "café.txt")
CAFE_NFC = unicodedata.normalize("NFC", "café.txt")
TREE: dict[str, bytes | int] = {
    "empty": b"",
    "one byte": b"x",
    "big/twenty MiB.bin": 20 << 20,  # random bytes of this size
    "names/with space/hash#tag.txt": b"hash",
    "names/100% sure.txt": b"percent",
    "names/what?.txt": b"question",
    "names/this & that + more.txt": b"amp plus",
    "names/emoji \U0001f389/party \U0001f680.txt": b"emoji",
    f"names/accents/{CAFE_NFD}": b"decomposed accent",
    "deep/a/b/c/d/leaf.txt": b"leaf",
}


def _nfc(rel: str) -> str:
    return unicodedata.normalize("NFC", rel)


def _write_tree(root: Path) -> None:
    for rel, content in TREE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(content) if isinstance(content, int) else content)


def _local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class Rclone:
    """Runs rclone against one remote named ``dav`` defined by environment variables."""

    def __init__(self, binary: str, server: DavServer, folder: str, vendor: str, workdir: Path) -> None:
        password = subprocess.run(
            [binary, "obscure", server.accounts["alice"]], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.binary = binary
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        self.env.update(
            {
                "RCLONE_CONFIG_DAV_TYPE": "webdav",
                "RCLONE_CONFIG_DAV_URL": f"{server.dav_url}/{folder}",
                "RCLONE_CONFIG_DAV_VENDOR": vendor,
                "RCLONE_CONFIG_DAV_USER": "alice",
                "RCLONE_CONFIG_DAV_PASS": password,
                "TZ": "UTC",  # lsl prints local time
            }
        )
        # A config path that never exists: nothing from the user's rclone.conf leaks in.
        self.config = workdir / "absent-rclone.conf"

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "--config", str(self.config), "--retries", "1", "--low-level-retries", "2"]
        result = subprocess.run(
            [*cmd, *args], env=self.env, capture_output=True, text=True, timeout=300, check=False
        )
        if ok:
            assert result.returncode == 0, f"rclone {' '.join(args)} -> {result.returncode}\n{result.stderr}"
        return result

    def remote_files(self) -> list[str]:
        out = self.run("lsf", "-R", "--files-only", "dav:").stdout
        return sorted(line for line in out.splitlines() if line)


@pytest.mark.parametrize("vendor", ["other", "owncloud"])
def test_copy_sync_check(dav_server: DavServer, tmp_path: Path, vendor: str) -> None:
    binary = require_tool("rclone")
    folder = f"rclone-{vendor}"
    with dav_server.client("alice") as c:
        # rclone assumes the remote root exists and never MKCOLs it (a PUT below it would get 409).
        assert c.request("MKCOL", f"/dav/{folder}/").status_code == 201
    src = tmp_path / "src"
    _write_tree(src)
    rc = Rclone(binary, dav_server, folder, vendor, tmp_path)

    rc.run("copy", str(src), "dav:")
    _assert_same(rc, src, dav_server, folder)

    # Round two. With vendor "other" rclone has neither hashes nor modification times for the
    # remote (Precision: none), so `sync` compares sizes only: every edit below changes the size.
    # With "owncloud" rclone sends X-OC-Mtime and reads getlastmodified back, so a same-size
    # edit with a new mtime must be detected too.
    (src / "one byte").write_bytes(b"two")
    (src / "big/twenty MiB.bin").write_bytes(os.urandom((20 << 20) - 1))
    (src / "names" / "accents" / CAFE_NFD).write_bytes(b"decomposed accent, edited")
    (src / "names/what?.txt").unlink()
    (src / "names/new + added #1.txt").write_bytes(b"added")
    if vendor == "owncloud":
        leaf = src / "deep/a/b/c/d/leaf.txt"
        leaf.write_bytes(b"LEAF")
        os.utime(leaf, (1_600_000_000, 1_600_000_000))
    rc.run("sync", str(src), "dav:")
    _assert_same(rc, src, dav_server, folder)
    assert "names/what?.txt" not in rc.remote_files()

    if vendor == "owncloud":
        # X-OC-Mtime was honoured: the server reports the mtime rclone set.
        listing = rc.run("lsl", "dav:deep/a/b/c/d/leaf.txt").stdout
        assert "2020-09-13 12:26:40" in listing, listing


def _assert_same(rc: Rclone, src: Path, server: DavServer, folder: str) -> None:
    local = _local_files(src)
    # `rclone check --download` compares every byte. The NFD name matches the server's NFC
    # name because rclone normalises names to NFC when pairing the two listings (unless
    # --no-unicode-normalization), the same policy the server applies on the way in.
    result = rc.run("check", "--download", str(src), "dav:", ok=False)
    assert result.returncode == 0, f"rclone check found differences:\n{result.stderr}"
    # check matches per directory listing; also assert the whole tree, names and count,
    # so a file missing on both sides of a pairing bug cannot slip through.
    remote = rc.remote_files()
    assert remote == sorted(_nfc(rel) for rel in local), (remote, sorted(local))
    assert len(remote) == len(local)
    # The server stores NFC, whatever rclone sent.
    assert f"names/accents/{CAFE_NFC}" in remote and f"names/accents/{CAFE_NFD}" not in remote

    # Independently of rclone: exact bytes over plain GET, for NFC and NFD spellings of a name.
    by_nfc = {_nfc(rel): data for rel, data in local.items()}
    with server.client("alice") as c:
        for rel in (
            "names/with space/hash#tag.txt",
            "names/100% sure.txt",
            "names/emoji \U0001f389/party \U0001f680.txt",
            f"names/accents/{CAFE_NFC}",
            f"names/accents/{CAFE_NFD}",
            "big/twenty MiB.bin",
        ):
            r = c.get(f"/dav/{folder}/" + quote(rel))
            assert r.status_code == 200, (rel, r.status_code)
            assert r.content == by_nfc[_nfc(rel)], rel
