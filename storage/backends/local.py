"""``file:///path``: objects as files under a folder.

Durability: ``put`` writes a temporary file in the target folder, fsyncs it,
renames it over the name and fsyncs the folder, so after ``put`` returns the
object survives a power cut (unless ``durable=False``, the documented relaxed
mode that leaves flushing to the page cache like plain WsgiDAV does). Readers
never see a partial object because rename is atomic.

``put(sync=False)`` skips both fsyncs and only asks the kernel to start writing
the file back (``POSIX_FADV_DONTNEED`` does that on Linux for dirty pages, and
drops none of them); ``sync(names)`` later fsyncs the files and their folders.
By then most of the data is on its way, so a large upload waits for the disk
once per batch instead of twice per block on the threads that seal blocks
(1 GiB in ~1.25 MiB files from 3 threads here: 364-405 MB/s one by one,
446-494 MB/s written back early and synced every 64 MiB).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from storage.backends.base import ObjectInfo, check_name
from storage.errors import BackendUnavailable, NotFound

_TMP_PREFIX = ".tmp-"
#: Starts writeback of a file's dirty pages without waiting (Linux; elsewhere a no-op).
_FADVISE = hasattr(os, "posix_fadvise") and sys.platform.startswith("linux")


class LocalBackend:
    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        self.root.mkdir(parents=True, exist_ok=True)
        self._root = str(self.root)
        self._known_dirs: set[Path] = set()

    def _path(self, name: str) -> Path:
        check_name(name)
        return self.root / name

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._known_dirs:
            return
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        if created and self.durable:
            _fsync_dir(folder.parent)
        self._known_dirs.add(folder)

    def put(self, name: str, data: bytes, *, sync: bool = True) -> None:
        path = self._path(name)
        sync_now = self.durable and sync
        try:
            self._ensure_dir(path.parent)
            # A random name opened exclusively (mkstemp does the same, at twice the cost).
            tmp = os.path.join(path.parent, _TMP_PREFIX + secrets.token_hex(8))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                try:
                    with memoryview(data) as view:
                        written = 0
                        while written < len(view):
                            written += os.write(fd, view[written:])
                    if sync_now:
                        os.fdatasync(fd)
                    elif self.durable and _FADVISE:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            if sync_now:
                _fsync_dir(path.parent)
        except OSError as exc:
            raise BackendUnavailable(f"cannot write block object: {exc.strerror}") from exc

    def sync(self, names: Iterable[str]) -> None:
        if not self.durable:
            return
        folders: set[Path] = set()
        try:
            for name in names:
                path = self._path(name)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
                folders.add(path.parent)
            for folder in folders:
                _fsync_dir(folder)
        except FileNotFoundError as exc:
            # Only a bug or a hand in the folder removes an object before its row exists.
            raise BackendUnavailable(f"block object {exc.filename} vanished before it was synced") from exc
        except OSError as exc:
            raise BackendUnavailable(f"cannot sync block objects: {exc.strerror}") from exc

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        check_name(name)
        try:
            # os.open + pread + close, where open() adds fstat, ioctl and lseeks (each also a
            # GIL hand-off when other request threads are waiting). With ``length`` given
            # (the block store passes the largest size a block can have) there is no fstat.
            fd = os.open(os.path.join(self._root, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if length is None:
                    length = max(0, os.fstat(fd).st_size - offset)
                return _pread_up_to(fd, length, offset)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise NotFound(name) from None
        except OSError as exc:
            raise BackendUnavailable(f"cannot read block object: {exc.strerror}") from exc

    def stat(self, name: str) -> ObjectInfo:
        try:
            st = self._path(name).stat()
        except FileNotFoundError:
            raise NotFound(name) from None
        return ObjectInfo(name, st.st_size, st.st_mtime)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``prefix``, in name order.

        Entries of a folder are visited in the order of their names with a
        trailing ``/`` for folders, which is exactly the order of full names.
        """
        yield from self._scan(self.root, "", prefix)

    def _scan(self, folder: Path, base: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return
        keyed = sorted((e.name + "/" if e.is_dir() else e.name, e) for e in entries)
        for key, entry in keyed:
            name = base + key
            if key.endswith("/"):
                if prefix.startswith(name) or name.startswith(prefix):
                    yield from self._scan(Path(entry.path), name, prefix)
                continue
            if entry.name.startswith(_TMP_PREFIX) or not name.startswith(prefix):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            yield ObjectInfo(name, st.st_size, st.st_mtime)

    def close(self) -> None:
        pass


def _pread_up_to(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes from ``offset``: fewer only at the end of the file.

    A read of a regular file returns less than asked only at its end, so a short read
    ends the loop without another call; the loop is for reads over Linux's 2 GiB cap.
    """
    parts = []
    while length > 0:
        ask = min(length, 1 << 30)
        data = os.pread(fd, ask, offset)
        parts.append(data)
        if len(data) < ask:
            break
        offset += ask
        length -= ask
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
