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

A batch of :data:`SYNCFS_MIN_OBJECTS` or more is synced with one ``syncfs(2)`` of the
folder's file system instead of an ``fdatasync`` per file and an ``fsync`` per folder:
each of those ends in its own disk cache flush, ``syncfs`` in one. Measured here: a
durable 1 GiB PUT into a new data folder made the disk flush 1,803-1,895 times (186-545
ms flushing) before, 278-282 times (29-41 ms) after; a 512 MiB PUT once its folders
exist, 849 times before, 50 after (the rest were new folders' entries); syncing 64
files of 1 MiB took 18.9 ms one by one, 2.1 ms with syncfs. This VM's disk flushes
cheaply and the syncs run beside the pipeline, so PUT throughput did not move (8
alternating rounds: 300 vs 297 MiB/s); on a disk where a flush costs milliseconds,
1,800 flushes per GiB are seconds. It is used only where it reports write-back errors
(Linux 5.8 on) and while every folder written to is on the root's file system.

Errors: the file system's write-back errors are read through one descriptor opened
once, so every error after it is seen, whoever else looked first; an error fails that
sync and every later one (the disk lost data someone was told was safe: the operator
has to look, as after PostgreSQL's fsync failures). Syncs run one at a time, and one
that started after a caller's objects were written covers that caller too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal

from storage.backends.base import ObjectInfo, check_name
from storage.errors import BackendUnavailable, NotFound

_TMP_PREFIX = ".tmp-"
#: Starts writeback of a file's dirty pages without waiting (Linux; elsewhere a no-op).
_FADVISE = hasattr(os, "posix_fadvise") and sys.platform.startswith("linux")
#: Batches of at least this many objects are synced with one syncfs (see the module's text).
SYNCFS_MIN_OBJECTS = 4

SyncFs = Callable[[int], None]


def platform_syncfs() -> SyncFs | None:
    """``syncfs(fd)`` raising OSError, where it reports write-back errors (Linux >= 5.8)."""
    if not sys.platform.startswith("linux"):
        return None
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    if m is None or (int(m.group(1)), int(m.group(2))) < (5, 8):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int]

    def syncfs(fd: int) -> None:
        if call(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return syncfs


class LocalBackend:
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        durable: bool = True,
        syncfs: SyncFs | Literal["platform"] | None = "platform",
    ) -> None:
        """``syncfs``: how batches are synced in one call (None: file by file)."""
        self.root = Path(root)
        self.durable = durable
        self.root.mkdir(parents=True, exist_ok=True)
        self._root = str(self.root)
        self._known_dirs: set[Path] = set()
        self._syncfs = platform_syncfs() if syncfs == "platform" else syncfs
        self._device = self.root.stat().st_dev
        #: The descriptor syncfs runs on and reads write-back errors through (opened on first use).
        self._fs_fd: int | None = None
        self._fs_lock = threading.Lock()
        self._fs_syncs_started = 0
        self._fs_error: str | None = None

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
        if self._syncfs is not None and folder.stat().st_dev != self._device:
            self._syncfs = None  # another file system mounted inside: syncfs of ours misses it
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
        names = list(names)
        syncfs = self._syncfs  # read once: a put may turn it off meanwhile
        if len(names) >= SYNCFS_MIN_OBJECTS and syncfs is not None:
            objects = [self._path(name) for name in names]
            if all(path.parent in self._known_dirs for path in objects):
                for name, path in zip(names, objects, strict=True):
                    if not os.path.lexists(path):
                        raise BackendUnavailable(f"block object {name} vanished before it was synced")
                self._sync_file_system(syncfs)
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

    def _sync_file_system(self, syncfs: SyncFs) -> None:
        """One syncfs for every object written before the call (see the module's text)."""
        entered = self._fs_syncs_started
        with self._fs_lock:
            if self._fs_error is None and self._fs_syncs_started == entered:
                # No syncfs has started since this caller's objects were written: run one.
                self._fs_syncs_started += 1
                try:
                    if self._fs_fd is None:
                        self._fs_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    syncfs(self._fs_fd)
                except OSError as exc:
                    self._fs_error = exc.strerror or str(exc)
            if self._fs_error is not None:
                raise BackendUnavailable(
                    f"the block folder's file system reported a write error ({self._fs_error}); "
                    "no write is made durable until the disk is checked and the server restarted"
                )

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
        with self._fs_lock:
            if self._fs_fd is not None:
                os.close(self._fs_fd)
                self._fs_fd = None


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
