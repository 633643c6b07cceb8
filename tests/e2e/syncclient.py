"""``davsync`` as a user runs it: a real process per command, against a real server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.harness import DavServer

Tree = dict[str, str]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sync_ext.client.cli", *args]


@dataclass
class SyncClient:
    """One device: its own credentials home and its own synced folder."""

    server: DavServer
    home: Path
    folder: Path
    device: str

    def login(self, account: str = "alice") -> subprocess.CompletedProcess[str]:
        done = self.run(
            "login", self.server.url, "--user", account, "--password-stdin", "--device", self.device,
            stdin=self.server.accounts[account] + "\n",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command("--home", str(self.home), *args),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAVSYNC_")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def sync(self, *extra: str) -> dict[str, Any]:
        """One ``sync --once``; returns the traffic figures it wrote."""
        stats = self.home / "stats.json"
        done = self.run("sync", str(self.folder), "--once", "--stats", str(stats), *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        doc: dict[str, Any] = json.loads(stats.read_text())
        doc["log"] = done.stderr
        return doc

    def start(self, *extra: str) -> subprocess.Popen[str]:
        """The continuous mode, in the background."""
        return subprocess.Popen(
            command("--home", str(self.home), "sync", str(self.folder), "--interval", "0.5", *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env(),
        )

    def tree(self) -> Tree:
        return local_tree(self.folder)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def local_tree(root: Path) -> Tree:
    """path -> "dir" or "<size>:<sha256>", without the client's own state."""
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".davsync"]
        rel = Path(dirpath).relative_to(root).as_posix()
        for d in dirnames:
            out[f"{rel}/{d}".removeprefix("./")] = "dir"
        for f in filenames:
            p = Path(dirpath) / f
            out[f"{rel}/{f}".removeprefix("./")] = f"{p.stat().st_size}:{file_sha(p)}"
    return out


def server_tree(client: httpx.Client) -> Tree:
    """The account's tree through the API (content SHA-256 as the server computed it)."""
    out: Tree = {}
    after = None
    while True:
        params: dict[str, Any] = {"path": "", "recursive": "true", "limit": 1000}
        if after:
            params["after"] = after
        page = client.get("/api/v1/files/list_folder", params=params).json()
        for e in page["entries"]:
            out[e["path"].lstrip("/")] = "dir" if e["is_dir"] else f"{e['size']}:{e['content_sha256']}"
        if not page["has_more"]:
            return out
        after = page["next_after"]
