"""cadaver (the Debian binary) driving the server: a WebDAV client built on neon, the HTTP
library davfs2 is built on too, so its LOCK, If and UNLOCK requests are the ones a davfs2
mount sends.

cadaver reads its commands from standard input and its credentials from ``~/.netrc``:
every run gets a temporary HOME holding only that file, so nothing of the user's is read
or written.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from tests.e2e.harness import DavServer, lock_tokens, member_names, propfind, require_tool

#: What cadaver prints when a command ends: "succeeded." or "failed:" and the status line.
_OUTCOME = re.compile(r"(succeeded)\.|failed:\s*(\d{3}[^\n]*)")


class Cadaver:
    def __init__(self, server: DavServer, home: Path) -> None:
        self.binary = require_tool("cadaver")
        self.url = server.dav_url + "/"
        host = urlsplit(server.url).hostname
        home.mkdir(exist_ok=True)
        netrc = home / ".netrc"
        netrc.write_text(f"machine {host}\nlogin alice\npassword {server.accounts['alice']}\n")
        netrc.chmod(0o600)
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}

    def run(self, *commands: str, editor: Path | None = None) -> str:
        """One cadaver session: the commands, then quit. Returns what it printed."""
        env = dict(self.env, EDITOR=str(editor)) if editor else self.env
        result = subprocess.run(
            [self.binary, self.url],
            input="\n".join([*commands, "quit"]) + "\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        transcript = result.stdout + result.stderr
        assert result.returncode == 0, transcript
        return transcript


def outcomes(transcript: str) -> list[str]:
    """Each finished command's result in order: "ok" or the failure's status line."""
    return ["ok" if ok else status.strip() for ok, status in _OUTCOME.findall(transcript)]


@pytest.fixture
def cadaver(dav_server: DavServer, tmp_path: Path) -> Cadaver:
    return Cadaver(dav_server, tmp_path / "home")


def _folder(name: str) -> str:
    return "/dav/" + quote(name) + "/"


def _lock_tokens(dav_server: DavServer, path: str) -> list[str]:
    with dav_server.client("alice") as c:
        return lock_tokens(propfind(c, path, "0"))


def test_files_and_folders_round_trip(cadaver: Cadaver, dav_server: DavServer, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3_000_000))
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello from cadaver\n")
    back, moved = tmp_path / "back.bin", tmp_path / "moved.bin"
    out = cadaver.run(
        'mkcol "cad trip"',
        'cd "cad trip"',
        f'put {small} "a b.txt"',
        f'put {big} "big ü.bin"',
        'copy "big ü.bin" "copy.bin"',
        'move "copy.bin" "moved #1 & 100%.bin"',
        'propset "a b.txt" colour blue',
        'propget "a b.txt" colour',
        f'get "big ü.bin" {back}',
        f'get "moved #1 & 100%.bin" {moved}',
        'rm "a b.txt"',
        "ls",
    )
    # mkcol, 2 puts, copy, move, propset, 2 gets, rm, ls
    assert outcomes(out) == ["ok"] * 10, out
    assert "Value of colour is: blue" in out
    assert back.read_bytes() == moved.read_bytes() == big.read_bytes()
    listing = out.rsplit("Listing collection", 1)[1]
    assert re.search(r"big ü\.bin\s+3000000", listing) and re.search(
        r"moved #1 & 100%\.bin\s+3000000", listing
    )
    assert "a b.txt" not in listing and "copy.bin" not in listing

    # What another client sees of it.
    with dav_server.client("alice") as c:
        names = member_names(propfind(c, _folder("cad trip")), "/dav/cad trip/")
        assert names == {"big ü.bin", "moved #1 & 100%.bin"}
        assert c.get(_folder("cad trip") + quote("moved #1 & 100%.bin")).content == big.read_bytes()


def test_a_lock_taken_by_cadaver_holds_until_its_token_unlocks_it(
    cadaver: Cadaver, dav_server: DavServer, tmp_path: Path
) -> None:
    """davfs2's pattern: lock a file, write it with the token in If, leave the lock for later."""
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_bytes(b"first\n")
    second.write_bytes(b"second, written under the lock\n")
    out = cadaver.run(
        'mkcol "cad locks"', 'cd "cad locks"', f"put {first} doc.txt", "lock doc.txt", f"put {second} doc.txt"
    )
    assert outcomes(out) == ["ok"] * 4, out  # the PUT under the lock sent its token
    doc = _folder("cad locks") + "doc.txt"
    tokens = _lock_tokens(dav_server, doc)
    assert len(tokens) == 1 and tokens[0].startswith("opaquelocktoken:")
    with dav_server.client("alice") as c:
        # The lock outlives the session that took it: a write without its token is refused.
        assert c.put(doc, content=b"no token").status_code == 423
        assert c.delete(doc).status_code == 423
        assert c.get(doc).content == second.read_bytes()

    # Another cadaver session cannot lock it too, nor move it.
    out = cadaver.run('cd "cad locks"', "lock doc.txt", "move doc.txt other.txt")
    assert outcomes(out) == ["423 Locked", "423 Locked"], out

    # UNLOCK with the token (cadaver asks for it when the session does not own the lock).
    out = cadaver.run('cd "cad locks"', "unlock doc.txt", tokens[0])
    assert outcomes(out) == ["ok"], out
    assert _lock_tokens(dav_server, doc) == []
    with dav_server.client("alice") as c:
        assert c.put(doc, content=b"free again").status_code == 204


def test_edit_locks_downloads_uploads_and_unlocks(
    cadaver: Cadaver, dav_server: DavServer, tmp_path: Path
) -> None:
    editor = tmp_path / "editor.sh"
    # Appends to the file and moves its mtime on (cadaver uploads only a file whose mtime changed).
    editor.write_text('#!/bin/sh\nprintf " and edited" >> "$1"\ntouch -d "@$(( $(date +%s) + 5 ))" "$1"\n')
    editor.chmod(0o755)
    source = tmp_path / "notes.txt"
    source.write_bytes(b"notes")
    out = cadaver.run(
        'mkcol "cad edit"', 'cd "cad edit"', f"put {source} notes.txt", "edit notes.txt", editor=editor
    )
    assert "Changes were made." in out, out
    assert outcomes(out) == ["ok"] * 4, out  # mkcol, put, the edit's download and upload
    notes = _folder("cad edit") + "notes.txt"
    assert _lock_tokens(dav_server, notes) == []  # the edit's lock is gone
    with dav_server.client("alice") as c:
        assert c.get(notes).content == b"notes and edited"
        assert c.put(notes, content=b"after").status_code == 204
