"""Reading one version: seek by binary search on block offsets, verify, prefetch.

:class:`VersionReader` is a seekable binary file object (what WsgiDAV's GET
expects) and also offers :meth:`iter_range` for faces that stream ranges
themselves. Every block is authenticated (AES-GCM tag and size; the SHA-256
re-hash too when configured, see BlockStore.fetch) before a byte of it is
returned; a block that fails raises :class:`IntegrityError` instead of returning
bad or short data, so a face can abort the response rather than send it as
whole. While block *i* is consumed, the next :data:`PREFETCH` blocks are
fetched (read, decrypted, decompressed, verified) on the shared pool.
"""

from __future__ import annotations

import bisect
import io
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from storage.blockstore import BlockStore
from storage.keys import AccountKeys
from storage.model import Entry

#: Blocks fetched ahead of the reader: enough to keep the pool's workers busy
#: while the caller sends the current one.
PREFETCH = 3


@dataclass(frozen=True, slots=True)
class BlockLocation:
    offset: int
    size: int
    name: str
    sha256: bytes
    #: The sealed object, for a block kept in its metadata row (storage.blockstore).
    inline: bytes | None = None


class VersionReader(io.RawIOBase):
    def __init__(
        self,
        entry: Entry,
        blocks: list[BlockLocation],
        store: BlockStore,
        keys: AccountKeys,
        executor: ThreadPoolExecutor | None,
    ) -> None:
        super().__init__()
        self.entry = entry
        self.size = entry.size
        self._blocks = blocks
        self._offsets = [b.offset for b in blocks]
        self._store = store
        self._keys = keys
        self._executor = executor
        self._pos = 0
        self._cached_index = -1
        self._cached: bytes = b""
        self._ahead: deque[tuple[int, Future[bytes]]] = deque()

    # -- file object protocol ------------------------------------------------------

    @property
    def locations(self) -> list[BlockLocation]:
        """The version's blocks in order (its manifest)."""
        return list(self._blocks)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        n = len(data)
        memoryview(buffer)[:n] = data
        return n

    def read(self, size: int | None = -1) -> bytes:
        if self._pos >= self.size:
            return b""
        if size is None or size < 0:
            size = self.size - self._pos
        end = min(self.size, self._pos + size)
        parts = list(self.iter_range(self._pos, end))
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos += len(data)
        return data

    def read1(self, size: int = -1) -> bytes:
        """At most ``size`` bytes and never past the end of the current block (no joining).

        For streaming callers that accept short reads, such as a GET loop.
        """
        if self._pos >= self.size:
            return b""
        if size is None or size < 0:
            size = self.size - self._pos
        index = bisect.bisect_right(self._offsets, self._pos) - 1
        block = self._blocks[index]
        end = min(self.size, self._pos + size, block.offset + block.size)
        data = next(self.iter_range(self._pos, end))
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        self._cancel_ahead()
        self._cached = b""
        super().close()

    # -- ranges --------------------------------------------------------------------

    def iter_range(self, start: int, end: int) -> Iterator[bytes]:
        """Yield the bytes ``[start, end)`` block by block (no copies of whole blocks)."""
        end = min(end, self.size)
        if start >= end:
            return
        index = bisect.bisect_right(self._offsets, start) - 1
        pos = start
        while pos < end:
            block = self._blocks[index]
            data = self._block(index)
            lo = pos - block.offset
            hi = min(block.size, end - block.offset)
            yield data if lo == 0 and hi == block.size else data[lo:hi]
            pos = block.offset + hi
            index += 1

    def _block(self, index: int) -> bytes:
        if index == self._cached_index:
            return self._cached
        while self._ahead and self._ahead[0][0] < index:
            self._ahead.popleft()[1].cancel()
        if self._ahead and self._ahead[0][0] == index:
            data = self._ahead.popleft()[1].result()
        else:
            self._cancel_ahead()
            data = self._fetch(index)
        if self._executor is not None:
            following = self._ahead[-1][0] + 1 if self._ahead else index + 1
            while len(self._ahead) < PREFETCH and following < len(self._blocks):
                self._ahead.append((following, self._executor.submit(self._fetch, following)))
                following += 1
        self._cached_index, self._cached = index, data
        return data

    def _cancel_ahead(self) -> None:
        while self._ahead:
            self._ahead.popleft()[1].cancel()

    def _fetch(self, index: int) -> bytes:
        b = self._blocks[index]
        return self._store.fetch(self._keys, b.name, b.sha256, b.size, inline=b.inline)
