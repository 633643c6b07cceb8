"""The local side: scanning the folder, cutting files into blocks, naming conflicts.

A scan is ``stat`` only (no reads): a file counts as changed when its size or
mtime differs from what was synced, and only then is it read and hashed. Names
are keyed NFC-normalised (the server's form), while the entry keeps the name as
it is on disk, so a macOS folder with NFD names is not seen as renamed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.chunker import Chunker, ChunkerParams

#: Never synced: the client's own files and what operating systems litter folders with.
IGNORED_NAMES = frozenset({".davsync", ".DS_Store", "Thumbs.db", "desktop.ini"})
#: Temp files (ours, Office's and LibreOffice's lock files).
IGNORED_PREFIXES = (".~davsync-", "~$", ".~lock.")
TEMP_PREFIX = ".~davsync-"
#: Characters the server refuses in names (and Windows clients read as separators).
_REFUSED = frozenset("\\") | frozenset(chr(c) for c in range(32)) | {"\x7f"}


def ignored(path: str) -> bool:
    return any(part in IGNORED_NAMES or part.startswith(IGNORED_PREFIXES) for part in path.split("/"))


@dataclass(frozen=True, slots=True)
class LocalEntry:
    path: str
    #: The name on disk (kept as a string: a scan of 100,000 files builds no Path objects).
    os_name: str
    is_dir: bool
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str, os_path: str | Path, st: os.stat_result) -> LocalEntry:
        is_dir = stat.S_ISDIR(st.st_mode)
        return cls(path, str(os_path), is_dir, 0 if is_dir else st.st_size, st.st_mtime_ns, st.st_ino)

    @property
    def os_path(self) -> Path:
        return Path(self.os_name)

    def same_stat(self, st: os.stat_result) -> bool:
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns


@dataclass
class Scan:
    entries: dict[str, LocalEntry]
    #: Paths left out, with the reason (symlinks, special files, names the server refuses).
    skipped: dict[str, str]


def scan(root: Path, state_dir: Path) -> Scan:
    entries: dict[str, LocalEntry] = {}
    skipped: dict[str, str] = {}
    state = str(state_dir.resolve())
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            listing = list(os.scandir(folder))
        except OSError as exc:
            skipped[prefix or "."] = f"cannot list: {exc.strerror}"
            continue
        for item in listing:
            name = unicodedata.normalize("NFC", item.name)
            path = f"{prefix}/{name}" if prefix else name
            if ignored(name):
                continue
            if _REFUSED & set(name):
                skipped[path] = "the name holds a backslash or a control character"
                continue
            if path in entries:
                skipped[path] = "another name differs only in its Unicode normalisation"
                continue
            try:
                if item.is_symlink():
                    skipped[path] = "symbolic links are not synced"
                    continue
                st = item.stat(follow_symlinks=False)
            except OSError as exc:
                skipped[path] = f"cannot stat: {exc.strerror}"
                continue
            if stat.S_ISDIR(st.st_mode):
                if item.path == state:  # (root is resolved and links are not followed)
                    continue
                stack.append((Path(item.path), path))
            elif not stat.S_ISREG(st.st_mode):
                skipped[path] = "not a regular file"
                continue
            entries[path] = LocalEntry.of(path, item.path, st)
    return Scan(entries, skipped)


def os_path(root: Path, path: str) -> Path:
    return root.joinpath(*path.split("/"))


class Cutter:
    """Cuts files where the server does (its chunker, parameters and seed from ``/config``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        c = config["chunker"]
        params = ChunkerParams(
            min_size=c["min_size"],
            avg_size=c["avg_size"],
            max_size=c["max_size"],
            normalization=c["normalization"],
        )
        #: When the implementations differ, cuts may differ: sync still works, with less reuse.
        self.matches_server = (
            c["algorithm"] == params.algorithm and c["implementation"] == params.implementation
        )
        self._chunker = Chunker(params, int(c["seed"]))

    def blocks(self, path: Path) -> Iterator[tuple[str, bytes]]:
        """(SHA-256 hex, bytes) of each block of the file, read once, in order."""
        with path.open("rb") as f:
            for data in self._chunker.split(f):
                yield hashlib.sha256(data).hexdigest(), data


def conflict_name(path: str, device: str, date: str, taken: set[str]) -> str:
    """``dir/name (conflicted copy, DEVICE, DATE).ext``, numbered when that is taken too."""
    folder, _, name = path.rpartition("/")
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    device = "".join(ch if ch not in "/\\" and ch.isprintable() else "_" for ch in device) or "device"
    n = 1
    while True:
        suffix = "" if n == 1 else f" {n}"
        candidate = f"{stem} (conflicted copy, {device}, {date}{suffix}){ext}"
        full = f"{folder}/{candidate}" if folder else candidate
        if full not in taken:
            return full
        n += 1


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
