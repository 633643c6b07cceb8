"""gvfs (Debian's gvfs-backends), the WebDAV client behind GNOME Files, driven with ``gio``.

Each session runs under ``dbus-run-session``: a private session bus on which gvfsd starts on
demand, so nothing of a desktop session is needed or touched (HOME is a temporary folder).
The password goes in at gio's prompt, on standard input.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from tests.e2e.harness import DavServer, member_names, propfind, require_tool

LIBEXEC = ("/usr/libexec", "/usr/lib/gvfs")


class Gio:
    def __init__(self, server: DavServer, home: Path) -> None:
        self.session = require_tool("dbus-run-session", "dbus")
        require_tool("gio", "libglib2.0-bin")
        require_tool("gvfsd-dav", "gvfs-backends", where=LIBEXEC)
        u = urlsplit(server.url)
        self.root = f"dav://{u.hostname}:{u.port}/dav"
        self.password = server.accounts["alice"]
        home.mkdir(exist_ok=True)
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}

    def run(self, script: str) -> str:
        """A shell script in one gio session: mounted as alice first, unmounted after."""
        body = (
            "set -eu\n"
            f'U="{self.root}"\n'
            'printf "alice\\n%s\\n" "$DAV_PASSWORD" | gio mount "$U/" >/dev/null\n'
            f"{script}\n"
            'gio mount -u "$U/"\n'
        )
        result = subprocess.run(
            [self.session, "--", "bash", "-c", body],
            env={**self.env, "DAV_PASSWORD": self.password},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"gio script -> {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result.stdout


@pytest.fixture
def gio(dav_server: DavServer, tmp_path: Path) -> Gio:
    return Gio(dav_server, tmp_path / "home")


def _names(dav_server: DavServer, folder: str) -> set[str]:
    with dav_server.client("alice") as c:
        return member_names(propfind(c, "/dav/" + quote(folder) + "/"), f"/dav/{folder}/")


def test_files_and_folders_through_gvfs(gio: Gio, dav_server: DavServer, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(3_000_000)
    (src / "big.bin").write_bytes(big)
    (src / "note.txt").write_bytes(b"a note\n")
    shared = os.urandom(200_000)
    with dav_server.client("alice") as c:
        assert c.request("MKCOL", "/dav/" + quote("gvfs dir") + "/").status_code == 201
        assert c.put("/dav/" + quote("gvfs dir/from server.bin"), content=shared).status_code == 201
    back = tmp_path / "back.bin"
    out = gio.run(
        f"""
D="$U/gvfs dir"
gio copy {src}/note.txt "$D/note ü.txt"
gio rename "$D/note ü.txt" "renamed note.txt"
gio copy {src}/big.bin "$D/big.bin"
gio mkdir "$D/sub"
gio move "$D/big.bin" "$D/sub/big.bin"
gio copy {src}/note.txt "$D/gone.txt"
gio remove "$D/gone.txt"
gio copy "$D/from server.bin" {back}
echo "== list"
gio list "$D/"
echo "== info"
gio info -a standard::size "$D/sub/big.bin"
"""
    )
    listing = out.split("== list\n", 1)[1].split("== info\n", 1)[0].splitlines()
    assert sorted(listing) == ["from server.bin", "renamed note.txt", "sub"], out
    assert "standard::size: 3000000" in out
    assert back.read_bytes() == shared  # a GET through gvfs
    assert _names(dav_server, "gvfs dir") == {"from server.bin", "renamed note.txt", "sub"}
    assert _names(dav_server, "gvfs dir/sub") == {"big.bin"}
    with dav_server.client("alice") as c:
        assert c.get("/dav/" + quote("gvfs dir/sub/big.bin")).content == big
        assert c.get("/dav/" + quote("gvfs dir/renamed note.txt")).content == b"a note\n"


def test_gvfs_overwrites_a_file_in_place(gio: Gio, dav_server: DavServer, tmp_path: Path) -> None:
    """gio save (what an editor saving through GNOME Files does): the new content replaces the old."""
    with dav_server.client("alice") as c:
        assert c.request("MKCOL", "/dav/gvfs-save/").status_code == 201
        assert c.put("/dav/gvfs-save/doc.txt", content=b"first version\n").status_code == 201
    new = tmp_path / "new.txt"
    new.write_bytes(b"second version, longer than the first\n")
    gio.run(f'gio save "$U/gvfs-save/doc.txt" < {new}')
    with dav_server.client("alice") as c:
        assert c.get("/dav/gvfs-save/doc.txt").content == new.read_bytes()
        r = c.get("/api/v1/files/list_revisions", params={"path": "/gvfs-save/doc.txt"})
        assert r.status_code == 200, r.text
        assert len(r.json()["revisions"]) == 2  # the first version is kept as a revision
