"""Two-way sync of one folder with one account: a three-way comparison per path.

For every path, three states are compared: what was last *synced* (both sides
agreed), what the server has now (the *remote* mirror, kept current by the
change feed) and what the disk has now (a *local* scan). Whoever differs from
the synced state changed; when only one side did, its change is carried over;
when both did, the rules below decide, and none of them drops data:

=======================  ===========================  ==============================
local                    remote                       outcome
=======================  ===========================  ==============================
edited                   edited to other content      local renamed to a conflicted
                                                      copy (then uploaded), remote
                                                      downloaded
edited                   deleted                      local uploaded again
deleted                  edited                       remote downloaded again
file                     folder (or the reverse)      local renamed to a conflicted
                                                      copy, remote fetched
=======================  ===========================  ==============================

Renames travel as renames (the server keeps node ids, revisions and the blocks;
the disk keeps inodes): a remote ``move`` in the change feed is replayed on the
disk when the local copy is unchanged, and a local path that vanished while a
new one with the same inode appeared is moved on the server, conditioned on the
revision, so a rename of a folder of 10,000 files is one request.

Deletes run after creations and updates, children before parents, and a
folder is only removed when everything in it went too; what remains is
re-created instead, so an edit made inside a folder someone else deleted
survives on both sides. The server's deletes go to its trash.

A pass never trusts a stale view: uploads name the revision they replace and
deletes and moves the revision they remove, so a change that lands on the
server meanwhile is a 409, and the next pass (after reading the change feed)
sees both edits and applies the rules above.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from sync_ext.client.index import Index, RemoteEntry, Synced
from sync_ext.client.localfs import Cutter, LocalEntry, conflict_name, ignored, os_path, scan
from sync_ext.client.mirror import Mirror, Move
from sync_ext.client.progress import Reporter
from sync_ext.client.remote import ApiError, Remote
from sync_ext.client.transfer import Changed, Downloaded, Progress, Transfers, Uploaded

T = TypeVar("T")

#: Passes run back to back while they keep finding work (a conflict copy, a 409).
MAX_PASSES = 5


@dataclass
class Summary:
    uploaded: int = 0
    downloaded: int = 0
    deleted_remote: int = 0
    deleted_local: int = 0
    moved_remote: int = 0
    moved_local: int = 0
    folders: int = 0
    conflicts: int = 0
    blocks_sent: int = 0
    blocks_from_local: int = 0
    errors: list[str] = field(default_factory=list)
    #: Paths the server refused because a WebDAV client has them locked (also in ``errors``).
    locked: list[str] = field(default_factory=list)
    #: Something happened that the next pass must look at again.
    again: bool = False

    @property
    def actions(self) -> int:
        return (
            self.uploaded
            + self.downloaded
            + self.deleted_remote
            + self.deleted_local
            + self.moved_remote
            + self.moved_local
            + self.folders
            + self.conflicts
        )

    def add(self, other: Summary) -> None:
        for f in fields(self):
            if f.type == "int":  # the counters (annotations are strings here)
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.errors.extend(other.errors)
        self.locked.extend(other.locked)


class Syncer:
    def __init__(
        self,
        remote: Remote,
        index: Index,
        root: Path,
        state_dir: Path,
        *,
        device: str,
        reporter: Reporter,
        clock: Callable[[], float] = time.time,
        parallel: int = 4,
    ) -> None:
        self.remote = remote
        self.index = index
        self.root = root
        self.state_dir = state_dir
        self.device = device
        self.report = reporter
        self.clock = clock
        self._transfers: Transfers | None = None
        #: Files transferred at once (their bytes; decisions and bookkeeping stay sequential).
        self.parallel = max(1, parallel)
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: list[tuple[str, Future[Any], Callable[[Any], None]]] = []
        self._current = Summary()
        #: The disk as the last complete pass left it; the same scan without remote news
        #: means there is nothing to decide (a pass on a 100,000-file tree costs seconds).
        self._settled: dict[str, LocalEntry] | None = None
        self.mirror = Mirror(remote, index, reporter)
        self.R: dict[str, RemoteEntry] = {}
        self.S: dict[str, Synced] = {}
        self.L: dict[str, LocalEntry] = {}

    @property
    def transfers(self) -> Transfers:
        if self._transfers is None:
            cutter = Cutter(self.remote.config())
            if not cutter.matches_server:
                self.report.warn("this davsync cuts blocks differently from the server: less reuse")
            self._transfers = Transfers(self.remote, self.index, cutter, self.root)
        return self._transfers

    @property
    def cursor(self) -> str | None:
        """The change-feed position the mirror is at (read by the long-poll thread too)."""
        return self.mirror.cursor

    def sync(self, *, pull: bool = True) -> Summary:
        """Passes until one finds nothing left to do (at most MAX_PASSES)."""
        total = Summary()
        for n in range(MAX_PASSES):
            summary = self.sync_pass(pull=pull or n > 0)
            total.add(summary)
            if not summary.again:
                break
        return total

    def sync_pass(self, *, pull: bool = True) -> Summary:
        s = Summary()
        pulled = pull or self.mirror.lags or self.cursor is None
        moves = self.mirror.pull() if pulled else []
        found = scan(self.root, self.state_dir)
        for path, why in found.skipped.items():
            self.report.skip(path, why)
        if not pulled and found.entries == self._settled:
            return s  # nothing new on either side since a pass that left nothing to do
        self._settled = None
        self.R = {p: e for p, e in self.index.remote_all().items() if not ignored(p)}
        self.S = self.index.synced_all()
        self.L = found.entries
        self._forget_stale_downloads()
        self._replay_remote_moves(moves, s)
        self._find_local_moves(s)
        paths = sorted(set(self.R) | set(self.S) | set(self.L))
        self._current = s
        with ThreadPoolExecutor(self.parallel, thread_name_prefix="davsync-transfer") as pool:
            self._pool = pool if self.parallel > 1 else None
            try:
                for path in paths:
                    self._step(path, s, deletes=False)
                    self._collect(s)
            finally:
                self._collect(s, wait_for=ALL_COMPLETED)
                self._pool = None
        self._delete_remote_folders(sorted(set(self.R) | set(self.S) | set(self.L)), s)
        for path in reversed(paths):
            self._step(path, s, deletes=True)
        if not s.again and not s.errors:
            self._settled = dict(self.L)
        return s

    # -- renames ----------------------------------------------------------------------

    def _replay_remote_moves(self, moves: list[Move], s: Summary) -> None:
        for old, new, is_dir in moves:
            base, here = self.S.get(old), self.L.get(old)
            if base is None or here is None or new in self.L or base.is_dir != is_dir or ignored(new):
                continue
            if not is_dir and not _unchanged(base, here):
                continue
            target = os_path(self.root, new)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    continue
                os.rename(here.os_path, target)
            except OSError as exc:
                s.errors.append(f"{old}: could not rename to {new}: {exc.strerror}")
                continue
            self.index.synced_move_tree(old, new)
            self._rekey(self.S, old, new, subtree=is_dir)
            self._rekey(self.L, old, new, subtree=is_dir)
            self.report.moved(old, new, remote_side=False)
            s.moved_local += 1

    def _find_local_moves(self, s: Summary) -> None:
        """Synced paths gone from the disk, matched by inode with paths new on it, shallowest
        first: a folder's move takes its subtree along, and what is then synced under the
        new folder but not on disk (renamed inside it too) is matched in turn."""
        arrived: dict[tuple[int | None, bool], LocalEntry] = {
            (e.inode, e.is_dir): e for p, e in self.L.items() if p not in self.S
        }
        gone = sorted((p for p in self.S if p not in self.L), key=_depth)
        i = 0
        while i < len(gone):
            old, i = gone[i], i + 1
            base = self.S.get(old)
            if base is None or old in self.L:  # went along with a folder moved before it
                continue
            here = arrived.get((base.inode, base.is_dir))
            if here is None or here.path in self.S or not self._move_remote(old, here, s):
                continue
            del arrived[(base.inode, base.is_dir)]
            if base.is_dir:
                below = here.path + "/"
                gone += sorted((p for p in self.S if p.startswith(below) and p not in self.L), key=_depth)

    def _move_remote(self, old: str, here: LocalEntry, s: Summary) -> bool:
        base, new = self.S[old], here.path
        was = self.R.get(old)
        if was is None or new in self.R or was.is_dir != base.is_dir:
            return False
        if not base.is_dir and (not _unchanged(base, here) or was.rev != base.rev):
            return False
        self.mirror.touched()
        try:
            self._ensure_remote_parents(new)
            entry = RemoteEntry.from_api(self.remote.move(old, new, rev=None if base.is_dir else base.rev))
        except ApiError as exc:
            self.report.note(f"{old}: moving it on the server failed ({exc}); sending it again instead")
            return False
        self.index.synced_move_tree(old, new)
        self._rekey(self.R, old, new, subtree=base.is_dir)
        self.R[new] = entry
        self._rekey(self.S, old, new, subtree=base.is_dir)
        self.report.moved(old, new, remote_side=True)
        s.moved_remote += 1
        return True

    def _rekey(self, table: dict[str, Any], old: str, new: str, *, subtree: bool) -> None:
        """``old`` is ``new`` now in ``table`` (R, S or L), with everything below it for a folder
        (a file's move touches one key: no scan of a large tree per rename)."""
        below = [p for p in table if p.startswith(old + "/")] if subtree else []
        for p in [old, *below]:
            item = table.pop(p, None)
            if item is None:
                continue
            q = new + p[len(old) :]
            if isinstance(item, LocalEntry):
                table[q] = dataclasses.replace(item, path=q, os_name=str(os_path(self.root, q)))
            else:
                table[q] = dataclasses.replace(item, path=q)

    # -- one path ---------------------------------------------------------------------

    def _step(self, path: str, s: Summary, *, deletes: bool) -> None:
        with self._guard(path, s):
            self._decide(path, s, deletes)

    @contextlib.contextmanager
    def _guard(self, path: str, s: Summary) -> Iterator[None]:
        """What one path's trouble does to the pass: never more than that path."""
        try:
            yield
        except (Changed, FileNotFoundError):
            s.again = True  # it changed under us: the next pass looks again
        except ApiError as exc:
            if exc.slug == "stale-parent" or exc.status == 409:
                # The server moved on since the last pull: the next pass sees both sides.
                s.again = True
                self.report.note(f"{path}: changed on the server meanwhile; looking again")
            elif exc.status == 423:
                # Open in an editor through the drive: retried every pass, reported once.
                s.errors.append(f"{path}: {exc}")
                s.locked.append(path)
                self.report.locked(path)
            else:
                s.errors.append(f"{path}: {exc}")
                self.report.error(path, str(exc))
        except OSError as exc:
            s.errors.append(f"{path}: {exc.strerror or exc}")
            self.report.error(path, str(exc.strerror or exc))

    def _decide(self, path: str, s: Summary, deletes: bool) -> None:
        base, there, here = self.S.get(path), self.R.get(path), self.L.get(path)
        local_changed = _local_changed(base, here)
        remote_changed = _remote_changed(base, there)
        if not local_changed and not remote_changed:
            return
        if local_changed:
            self.mirror.touched()  # before the server is changed, in case this process dies after
        if local_changed and not remote_changed:
            if here is None:
                if deletes:
                    self._delete_remote(path, base, s)
            elif not deletes:
                self._push(path, base, there, here, s)
            return
        if remote_changed and not local_changed:
            if there is None:
                if deletes:
                    self._delete_local(path, base, here, s)
            elif not deletes:
                self._pull_one(path, there, here, s)
            return
        if not deletes:
            self._both_changed(path, there, here, s)

    def _push(
        self, path: str, base: Synced | None, there: RemoteEntry | None, here: LocalEntry, s: Summary
    ) -> None:
        if base is not None and base.is_dir != here.is_dir and there is not None:
            # A folder became a file (or the reverse) here: clear the server's path first,
            # unless someone changed what is in that folder there: then keep theirs.
            if there.is_dir and self._changed_below(path):
                self._conflict_copy(path, here, s)
                self._pull_one(path, there, None, s)
                return
            self.remote.delete(path, rev=None if there.is_dir else there.rev)
            self._drop_remote(path)
            there = None
        if here.is_dir:
            self._create_remote_folder(path, here, s)
            return
        parent = there.rev if there is not None and not there.is_dir else None
        if base is not None and not base.is_dir and there is not None and base.size == here.size:
            sha, blocks = self.transfers.hash_file(here)
            if sha == base.sha256:  # touched, not edited
                self._record_file(path, here, there.rev, sha, blocks)
                return
        self._upload(path, here, parent, s)

    def _changed_below(self, path: str) -> bool:
        below = [p for p in self.R if p.startswith(path + "/")]
        return any(_remote_changed(self.S.get(p), self.R[p]) for p in below)

    def _pull_one(self, path: str, there: RemoteEntry, here: LocalEntry | None, s: Summary) -> None:
        if here is not None and here.is_dir != there.is_dir:
            self._conflict_copy(path, here, s)
            here = None
        if there.is_dir:
            target = os_path(self.root, path) if here is None else here.os_path
            target.mkdir(parents=True, exist_ok=True)
            self.L[path] = LocalEntry.of(path, target, target.stat())
            self._record_folder(path, self.L[path])
            if here is None:
                s.folders += 1
                self.report.folder(path, remote_side=False)
            return
        self._download(path, here, s)

    def _both_changed(
        self, path: str, there: RemoteEntry | None, here: LocalEntry | None, s: Summary
    ) -> None:
        if there is None and here is None:
            self.index.synced_delete(path)
            self.S.pop(path, None)
        elif there is None:
            assert here is not None
            self._push(path, None, None, here, s)
        elif here is None:
            self._pull_one(path, there, None, s)
        elif there.is_dir and here.is_dir:
            self._record_folder(path, here)
        elif there.is_dir != here.is_dir:
            self._pull_one(path, there, here, s)
        else:
            sha, blocks = self.transfers.hash_file(here)
            if sha == there.sha256:
                self._record_file(path, here, there.rev, sha, blocks)
                return
            self._conflict_copy(path, here, s)
            self._download(path, None, s)

    # -- actions ----------------------------------------------------------------------

    # -- transfers: the bytes move on worker threads, the bookkeeping stays here --------

    def _transfer(
        self, path: str, size: int, up: bool, work: Callable[[Progress], T], then: Callable[[T], None]
    ) -> None:
        def run() -> T:
            with self.report.transfer(path, size, up=up) as progress:
                return work(progress)

        if self._pool is None:
            then(run())
            return
        self._inflight.append((path, self._pool.submit(run), then))
        if len(self._inflight) >= 2 * self.parallel:
            self._collect(self._current, wait_for=FIRST_COMPLETED)

    def _collect(self, s: Summary, *, wait_for: str | None = None) -> None:
        """Apply the results of finished transfers, after waiting as ``wait_for`` says
        (``FIRST_COMPLETED``, ``ALL_COMPLETED``; None: only those already done)."""
        if not self._inflight:
            return
        futures = [f for _, f, _ in self._inflight]
        done = wait(futures, return_when=wait_for).done if wait_for else {f for f in futures if f.done()}
        keep = []
        for path, future, then in self._inflight:
            if future not in done:
                keep.append((path, future, then))
                continue
            with self._guard(path, s):
                then(future.result())
        self._inflight = keep

    def _upload(self, path: str, here: LocalEntry, parent_rev: int | None, s: Summary) -> None:
        self._ensure_remote_parents(path)
        self._transfer(
            path,
            here.size,
            True,
            lambda progress: self.transfers.upload(path, here, parent_rev, progress),
            lambda done: self._uploaded(path, here, done, s),
        )

    def _uploaded(self, path: str, here: LocalEntry, done: Uploaded, s: Summary) -> None:
        entry = RemoteEntry.from_api(done.entry)
        self.R[path] = entry
        self._record_file(path, here, entry.rev, done.sha256, done.blocks)
        s.uploaded += 1
        s.blocks_sent += done.blocks_sent
        self.report.uploaded(path, done.size, done.blocks_sent, len(done.blocks))

    def _download(self, path: str, here: LocalEntry | None, s: Summary) -> None:
        there = self.R[path]
        target = here.os_path if here is not None else os_path(self.root, path)
        self._transfer(
            path,
            there.size or 0,
            False,
            lambda progress: self.transfers.download(path, target, here, progress),
            lambda done: self._downloaded(path, there, target, done, s),
        )

    def _downloaded(self, path: str, there: RemoteEntry, target: Path, done: Downloaded, s: Summary) -> None:
        if done.entry.rev != there.rev:
            self.mirror.touched()  # newer than the mirror: read the feed before trusting it
        synced = Synced(
            path, False, done.entry.rev, done.stat.st_size, done.entry.sha256,
            done.stat.st_mtime_ns, done.stat.st_ino,
        )  # fmt: skip
        self.index.synced_put(synced, done.blocks)
        self.R[path] = done.entry
        self.S[path] = synced
        self.L[path] = LocalEntry.of(path, target, done.stat)
        s.downloaded += 1
        s.blocks_from_local += done.from_local
        self.report.downloaded(path, done.stat.st_size, done.from_local, len(done.blocks))

    def _conflict_copy(self, path: str, here: LocalEntry, s: Summary) -> None:
        """Move the local version aside under a conflicted-copy name; the next pass uploads it."""
        date = time.strftime("%Y-%m-%d", time.localtime(self.clock()))
        taken = set(self.R) | set(self.L) | set(self.S)
        name = conflict_name(path, self.device, date, taken)
        target = os_path(self.root, name)
        if target.exists():
            raise Changed(path)
        os.rename(here.os_path, target)
        self.L.pop(path, None)
        s.conflicts += 1
        s.again = True
        self.report.conflict(path, name)

    def _delete_remote(
        self, path: str, base: Synced | None, s: Summary, *, folder_and_all: bool = False
    ) -> None:
        there = self.R.get(path)
        if there is None:
            self._forget(path)
            return
        if os.path.lexists(os_path(self.root, path)):
            raise Changed(path)  # it is back (or the scan missed it): never delete on a stale view
        self.mirror.touched()
        if there.is_dir and not folder_and_all and any(p.startswith(path + "/") for p in self.R):
            # Something in it was kept (edited on the server): the folder stays, here too.
            self._forget(path)
            s.again = True
            return
        try:
            self.remote.delete(path, rev=None if there.is_dir else there.rev)
        except ApiError as exc:
            if exc.status != 404:
                raise
        self._drop_remote(path)
        for p in [p for p in self.S if p == path or p.startswith(path + "/")]:
            self._forget(p)
        s.deleted_remote += 1
        self.report.deleted(path, remote_side=True)

    def _delete_remote_folders(self, paths: list[str], s: Summary) -> None:
        """Folders deleted here whose whole content is unchanged on the server: one request each."""
        i = 0
        while i < len(paths):
            path = paths[i]
            end = bisect.bisect_left(paths, path + "0", i + 1)
            base, there = self.S.get(path), self.R.get(path)
            whole = (
                base is not None
                and base.is_dir
                and there is not None
                and there.is_dir
                and all(
                    p not in self.L and not _remote_changed(self.S.get(p), self.R.get(p))
                    for p in paths[i:end]
                )
            )
            if not whole:
                i += 1
                continue
            try:
                self._delete_remote(path, base, s, folder_and_all=True)
            except ApiError as exc:
                s.again = True
                self.report.note(f"{path}: deleting it on the server failed ({exc}); looking again")
            i = end

    def _delete_local(self, path: str, base: Synced | None, here: LocalEntry | None, s: Summary) -> None:
        if here is None:
            self._forget(path)
            return
        if here.is_dir:
            try:
                here.os_path.rmdir()
            except OSError:
                # Not empty: something in it is new or edited here; keep it (the next pass sends it).
                self._forget(path)
                s.again = True
                return
        else:
            st = here.os_path.stat()
            if not here.same_stat(st):
                raise Changed(path)
            here.os_path.unlink()
        self._forget(path)
        self.L.pop(path, None)
        s.deleted_local += 1
        self.report.deleted(path, remote_side=False)

    def _create_remote_folder(self, path: str, here: LocalEntry, s: Summary) -> None:
        self._ensure_remote_parents(path)
        try:
            entry = RemoteEntry.from_api(self.remote.create_folder(path))
        except ApiError as exc:
            if exc.status != 409:
                raise
            s.again = True  # someone made it meanwhile; the next pull shows what it is
            return
        self.R[path] = entry
        self._record_folder(path, here)
        s.folders += 1
        self.report.folder(path, remote_side=True)

    def _ensure_remote_parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i])
            known = self.R.get(folder)
            if known is not None and known.is_dir:
                continue
            entry = RemoteEntry.from_api(self.remote.create_folder(folder))
            self.R[folder] = entry
            here = self.L.get(folder)
            if here is not None and here.is_dir:
                self._record_folder(folder, here)

    # -- bookkeeping ------------------------------------------------------------------

    def _record_file(
        self, path: str, here: LocalEntry, rev: int | None, sha: str, blocks: list[tuple[str, int]]
    ) -> None:
        synced = Synced(path, False, rev, here.size, sha, here.mtime_ns, here.inode)
        self.index.synced_put(synced, blocks)
        self.S[path] = synced

    def _record_folder(self, path: str, here: LocalEntry) -> None:
        synced = Synced(path, True, inode=here.inode)
        self.index.synced_put(synced)
        self.S[path] = synced

    def _forget(self, path: str) -> None:
        self.index.synced_delete(path)
        self.S.pop(path, None)

    def _drop_remote(self, path: str) -> None:
        for p in [p for p in self.R if p == path or p.startswith(path + "/")]:
            del self.R[p]

    def _forget_stale_downloads(self) -> None:
        for d in self.index.download_all():
            there = self.R.get(d.path)
            if there is None or there.rev != d.rev:
                with contextlib.suppress(OSError):
                    Path(d.tmp).unlink()
                self.index.download_delete(d.path)


def _unchanged(base: Synced, here: LocalEntry) -> bool:
    return base.size == here.size and base.mtime_ns == here.mtime_ns


def _local_changed(base: Synced | None, here: LocalEntry | None) -> bool:
    if base is None or here is None:
        return (base is None) != (here is None)
    if base.is_dir != here.is_dir:
        return True
    return not base.is_dir and not _unchanged(base, here)


def _remote_changed(base: Synced | None, there: RemoteEntry | None) -> bool:
    if base is None or there is None:
        return (base is None) != (there is None)
    if base.is_dir != there.is_dir:
        return True
    return not base.is_dir and base.rev != there.rev


def _depth(path: str) -> int:
    return path.count("/")
