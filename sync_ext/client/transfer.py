"""Moving file contents: upload only the blocks the server lacks, download only the
blocks no local file holds.

An upload reads the file once: blocks are cut and hashed, asked about in batches
(``/blocks/missing``), and only the missing ones are sent; then the file is
committed as its block list with the revision it was based on. An interrupted
upload therefore resumes by itself: the blocks that made it are no longer
missing. (The server keeps uncommitted blocks for its gc grace period.)

A download writes a temp file next to the target, taking each block from a
synced local file when one holds it (checked against its hash) and from the
server otherwise, and records its progress, so a killed client continues where
it stopped. The whole file's SHA-256 is checked against the revision's before
the temp file replaces the target, so a half-written or stale temp file can
never become the synced content.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sync_ext.client.index import Download, Index, RemoteEntry
from sync_ext.client.localfs import TEMP_PREFIX, Cutter, LocalEntry, fsync_dir
from sync_ext.client.remote import Remote

#: Blocks held in memory while their presence on the server is asked about.
BATCH_BYTES = 32 << 20
#: Download progress is recorded at least this often.
CHECKPOINT_BYTES = 16 << 20
#: A file this small is sent without asking first: asking costs a round trip, sending it
#: again when the server has it costs at most this many bytes (it keeps one copy either way).
ASK_FROM = 64 << 10

Progress = Callable[[int], None]


class Changed(Exception):
    """The local file changed while it was being read or replaced; the next pass sees it again."""


@dataclass
class Uploaded:
    entry: dict[str, Any]
    blocks: list[tuple[str, int]]
    sha256: str
    size: int
    blocks_sent: int


@dataclass
class Downloaded:
    entry: RemoteEntry
    blocks: list[tuple[str, int]]
    stat: os.stat_result
    from_local: int


class Transfers:
    def __init__(self, remote: Remote, index: Index, cutter: Cutter, root: Path) -> None:
        self.remote = remote
        self.index = index
        self.cutter = cutter
        self.root = root

    # -- up ---------------------------------------------------------------------------

    def upload(self, path: str, local: LocalEntry, parent_rev: int | None, progress: Progress) -> Uploaded:
        ask = local.size >= ASK_FROM  # (uploads run on several threads: no state on self)
        blocks: list[tuple[str, int]] = []
        whole = hashlib.sha256()
        batch: list[tuple[str, bytes]] = []
        held = 0
        sent = 0
        for sha, data in self.cutter.blocks(local.os_path):
            whole.update(data)
            blocks.append((sha, len(data)))
            batch.append((sha, data))
            held += len(data)
            progress(len(data))
            if held >= BATCH_BYTES:
                sent += self._send_missing(batch, ask=ask)
                batch, held = [], 0
        sent += self._send_missing(batch, ask=ask)
        if not local.same_stat(local.os_path.stat()):
            raise Changed(path)
        size = sum(s for _, s in blocks)
        entry = self.remote.commit(path, blocks, size=size, mtime=local.mtime_ns / 1e9, parent_rev=parent_rev)
        return Uploaded(entry, blocks, whole.hexdigest(), size, sent)

    def _send_missing(self, batch: list[tuple[str, bytes]], *, ask: bool) -> int:
        if not batch:
            return 0
        if not ask:
            for sha, data in dict(batch).items():
                self.remote.put_block(sha, data)
            return len(dict(batch))
        missing = self.remote.missing(list(dict.fromkeys(sha for sha, _ in batch)))
        sent = 0
        for sha, data in batch:
            if sha in missing:
                self.remote.put_block(sha, data)
                missing.discard(sha)
                sent += 1
        return sent

    def hash_file(self, local: LocalEntry) -> tuple[str, list[tuple[str, int]]]:
        whole = hashlib.sha256()
        blocks = []
        for sha, data in self.cutter.blocks(local.os_path):
            whole.update(data)
            blocks.append((sha, len(data)))
        return whole.hexdigest(), blocks

    # -- down -------------------------------------------------------------------------

    def download(self, path: str, target: Path, expect: LocalEntry | None, progress: Progress) -> Downloaded:
        """Fetch the file's current revision into ``target``, which must still be as ``expect`` says."""
        man = self.remote.manifest(path)
        entry = RemoteEntry.from_api(man)
        blocks = [(b["hash"], int(b["size"])) for b in man["blocks"]]
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp, start_block, start_byte = self._resume(path, entry, target)
        whole = hashlib.sha256()
        seen: dict[str, int] = {}
        from_local = 0
        with open(tmp, "r+b" if start_byte else "wb") as out:
            offset = 0
            for sha, size in blocks[:start_block]:
                whole.update(_read_at(out, offset, size))
                seen.setdefault(sha, offset)
                offset += size
            out.seek(start_byte)
            out.truncate()
            progress(start_byte)
            since = 0
            for i in range(start_block, len(blocks)):
                sha, size = blocks[i]
                data = self._block_from(out, seen.get(sha), size, sha)
                if data is None:
                    data = self._local_block(sha, size)
                    if data is None:
                        data = self.remote.get_block(sha)
                        if hashlib.sha256(data).hexdigest() != sha or len(data) != size:
                            raise OSError(f"block {sha} of {path} arrived damaged")
                    else:
                        from_local += 1
                out.seek(offset)
                out.write(data)
                whole.update(data)
                seen.setdefault(sha, offset)
                offset += size
                since += size
                progress(size)
                if since >= CHECKPOINT_BYTES:
                    out.flush()
                    self.index.download_put(Download(path, entry.rev or 0, str(tmp), offset, i + 1))
                    since = 0
            out.flush()
            os.fsync(out.fileno())
        if whole.hexdigest() != entry.sha256:
            self._forget(path, tmp)
            raise OSError(f"{path}: the downloaded content does not match revision {entry.rev}")
        if entry.mtime is not None:
            os.utime(tmp, (entry.mtime, entry.mtime))
        self._check_untouched(path, target, expect)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        self.index.download_delete(path)
        return Downloaded(entry, blocks, target.stat(), from_local)

    def _resume(self, path: str, entry: RemoteEntry, target: Path) -> tuple[Path, int, int]:
        prior = self.index.download_get(path)
        if prior is not None:
            tmp = Path(prior.tmp)
            try:
                have = tmp.stat().st_size
            except OSError:
                have = -1
            if prior.rev == entry.rev and have >= prior.done_bytes and tmp.parent == target.parent:
                return tmp, prior.done_blocks, prior.done_bytes
            self._forget(path, tmp)
        tmp = target.parent / f"{TEMP_PREFIX}{secrets.token_hex(6)}.tmp"
        self.index.download_put(Download(path, entry.rev or 0, str(tmp), 0, 0))
        return tmp, 0, 0

    def _forget(self, path: str, tmp: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        self.index.download_delete(path)

    def _block_from(self, out: Any, offset: int | None, size: int, sha: str) -> bytes | None:
        if offset is None:
            return None
        data = _read_at(out, offset, size)
        return data if hashlib.sha256(data).hexdigest() == sha else None

    def _local_block(self, sha: str, size: int) -> bytes | None:
        for path, offset, length in self.index.where_block(sha):
            if length != size:
                continue
            try:
                with open(self.root.joinpath(*path.split("/")), "rb") as f:
                    data = _read_at(f, offset, size)
            except OSError:
                continue
            if hashlib.sha256(data).hexdigest() == sha:
                return data
        return None

    @staticmethod
    def _check_untouched(path: str, target: Path, expect: LocalEntry | None) -> None:
        try:
            st = target.stat()
        except FileNotFoundError:
            if expect is None:
                return
            raise Changed(path) from None
        if expect is None or expect.is_dir or not expect.same_stat(st):
            raise Changed(path)


def _read_at(f: Any, offset: int, size: int) -> bytes:
    f.seek(offset)
    data: bytes = f.read(size)
    return data
