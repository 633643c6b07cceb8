"""The client's memory, one SQLite file in the state folder.

Three views of every path, which together make sync a three-way comparison:

* ``remote`` mirrors the server's tree as the change feed last described it;
* ``synced`` is what both sides agreed on after the last successful transfer
  (the server's revision, and the local size, mtime and inode it was written
  with), the common ancestor that tells *who* changed a path;
* ``local_blocks`` says where each block of a synced file sits on disk, so a
  download takes blocks from local files before asking the server.

``downloads`` remembers partial downloads (temp file, revision, how far), so an
interrupted transfer continues where it stopped. Paths are relative, ``/``
separated and NFC-normalised, the form the server compares names in.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS remote (
    path TEXT PRIMARY KEY, is_dir INTEGER NOT NULL, rev INTEGER, size INTEGER,
    sha256 TEXT, mtime REAL
);
CREATE TABLE IF NOT EXISTS synced (
    path TEXT PRIMARY KEY, is_dir INTEGER NOT NULL, rev INTEGER, size INTEGER, sha256 TEXT,
    mtime_ns INTEGER, inode INTEGER
);
CREATE TABLE IF NOT EXISTS local_blocks (
    sha256 TEXT NOT NULL, path TEXT NOT NULL, offset INTEGER NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (path, offset)
);
CREATE INDEX IF NOT EXISTS local_blocks_by_hash ON local_blocks (sha256);
CREATE TABLE IF NOT EXISTS downloads (
    path TEXT PRIMARY KEY, rev INTEGER NOT NULL, tmp TEXT NOT NULL, done_bytes INTEGER NOT NULL,
    done_blocks INTEGER NOT NULL
);
"""
FORMAT = "1"


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    path: str
    is_dir: bool
    rev: int | None = None
    size: int | None = None
    sha256: str | None = None
    mtime: float | None = None

    @classmethod
    def from_api(cls, doc: dict[str, Any]) -> RemoteEntry:
        is_dir = bool(doc["is_dir"]) if "is_dir" in doc else doc.get("kind") == "folder"
        return cls(
            relative(doc["path"]),
            is_dir,
            None if is_dir else doc.get("rev"),
            None if is_dir else doc.get("size"),
            None if is_dir else doc.get("content_sha256"),
            doc.get("mtime"),
        )


@dataclass(frozen=True, slots=True)
class Synced:
    path: str
    is_dir: bool
    rev: int | None = None
    size: int | None = None
    sha256: str | None = None
    mtime_ns: int | None = None
    inode: int | None = None


@dataclass(frozen=True, slots=True)
class Download:
    path: str
    rev: int
    tmp: str
    done_bytes: int
    done_blocks: int


def relative(api_path: str) -> str:
    return api_path.strip("/")


def subtree(column: str) -> str:
    """SQL for "``column`` is ``:p`` or below it" (``'/' < '0'`` in byte order)."""
    return f"({column} = :p OR ({column} > :p || '/' AND {column} < :p || '0'))"


P = ParamSpec("P")
R = TypeVar("R")


def _locked(method: Callable[Concatenate[Index, P], R]) -> Callable[Concatenate[Index, P], R]:
    @functools.wraps(method)
    def wrapper(self: Index, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class Index:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        #: One connection, shared by the sync thread and the transfer threads, one at a time.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        found = self.get_meta("format")
        if found is None:
            self.set_meta("format", FORMAT)
        elif found != FORMAT:
            raise RuntimeError(f"{path} has index format {found}; this davsync reads {FORMAT}")

    @_locked
    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- meta -------------------------------------------------------------------------

    @_locked
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @_locked
    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- the remote mirror ------------------------------------------------------------

    @_locked
    def remote_all(self) -> dict[str, RemoteEntry]:
        rows = self._db.execute("SELECT path, is_dir, rev, size, sha256, mtime FROM remote")
        return {r[0]: RemoteEntry(r[0], bool(r[1]), r[2], r[3], r[4], r[5]) for r in rows}

    @_locked
    def remote_get(self, path: str) -> RemoteEntry | None:
        r = self._db.execute(
            "SELECT path, is_dir, rev, size, sha256, mtime FROM remote WHERE path = ?", (path,)
        ).fetchone()
        return None if r is None else RemoteEntry(r[0], bool(r[1]), r[2], r[3], r[4], r[5])

    @_locked
    def remote_put(self, e: RemoteEntry) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO remote VALUES (?, ?, ?, ?, ?, ?)",
            (e.path, int(e.is_dir), e.rev, e.size, e.sha256, e.mtime),
        )

    @_locked
    def remote_clear(self) -> None:
        self._db.execute("DELETE FROM remote")

    @_locked
    def remote_delete_tree(self, path: str) -> None:
        self._db.execute(f"DELETE FROM remote WHERE {subtree('path')}", {"p": path})  # noqa: S608

    @_locked
    def remote_move_tree(self, src: str, dst: str) -> None:
        self._move("remote", src, dst)

    # -- the synced base --------------------------------------------------------------

    @_locked
    def synced_all(self) -> dict[str, Synced]:
        rows = self._db.execute("SELECT path, is_dir, rev, size, sha256, mtime_ns, inode FROM synced")
        return {r[0]: Synced(r[0], bool(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in rows}

    @_locked
    def synced_put(self, s: Synced, blocks: list[tuple[str, int]] | None = None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO synced VALUES (?, ?, ?, ?, ?, ?, ?)",
            (s.path, int(s.is_dir), s.rev, s.size, s.sha256, s.mtime_ns, s.inode),
        )
        if blocks is not None:
            self._db.execute("DELETE FROM local_blocks WHERE path = ?", (s.path,))
            offset = 0
            rows = []
            for sha, size in blocks:
                rows.append((sha, s.path, offset, size))
                offset += size
            self._db.executemany("INSERT INTO local_blocks VALUES (?, ?, ?, ?)", rows)

    @_locked
    def synced_delete(self, path: str) -> None:
        self._db.execute("DELETE FROM synced WHERE path = ?", (path,))
        self._db.execute("DELETE FROM local_blocks WHERE path = ?", (path,))

    @_locked
    def synced_move_tree(self, src: str, dst: str) -> None:
        self._move("synced", src, dst)
        self._move("local_blocks", src, dst)

    @_locked
    def where_block(self, sha256: str) -> list[tuple[str, int, int]]:
        """Synced local files that held block ``sha256``: (path, offset, size)."""
        rows = self._db.execute(
            "SELECT path, offset, size FROM local_blocks WHERE sha256 = ? LIMIT 4", (sha256,)
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def _move(self, table: str, src: str, dst: str) -> None:
        # Anything already at the destination is replaced (the server's MOVE did the same).
        self._db.execute(f"DELETE FROM {table} WHERE {subtree('path')}", {"p": dst})  # noqa: S608
        self._db.execute(
            f"UPDATE {table} SET path = :d || substr(path, length(:p) + 1) WHERE {subtree('path')}",  # noqa: S608
            {"p": src, "d": dst},
        )

    # -- partial downloads ------------------------------------------------------------

    @_locked
    def download_get(self, path: str) -> Download | None:
        r = self._db.execute(
            "SELECT path, rev, tmp, done_bytes, done_blocks FROM downloads WHERE path = ?", (path,)
        ).fetchone()
        return None if r is None else Download(r[0], r[1], r[2], r[3], r[4])

    @_locked
    def download_all(self) -> list[Download]:
        rows = self._db.execute("SELECT path, rev, tmp, done_bytes, done_blocks FROM downloads")
        return [Download(*r) for r in rows]

    @_locked
    def download_put(self, d: Download) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO downloads VALUES (?, ?, ?, ?, ?)",
            (d.path, d.rev, d.tmp, d.done_bytes, d.done_blocks),
        )

    @_locked
    def download_delete(self, path: str) -> None:
        self._db.execute("DELETE FROM downloads WHERE path = ?", (path,))
