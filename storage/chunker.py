"""Content-defined chunking (FastCDC 2020, compiled, via ``pyfastcdc``).

Boundaries depend on the content, not on offsets, so inserting one byte near the
start of a file changes the blocks around the edit only. The gear table is seeded
per account (from the account key), so two accounts cut the same file at
different places and block sizes in the store do not match a public table.
This is a mitigation, not a proof: pyfastcdc's seed is a 63-bit value mixed
into a public gear table, and the literature on content-defined chunking
describes attacks that learn such keys from many observed boundaries; block
contents and ids stay protected by AES-GCM and the keyed MAC regardless.

The parameters are stored in the metadata (table ``chunkers``) and referenced by
every version: a revision can always be re-cut identically, and clients that do
delta sync fetch them to cut where the server cuts. ``pyfastcdc``'s effective
average is ``avg + min`` (cut-point skipping), about 1.25 MiB with the defaults.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import pyfastcdc

ALGORITHM = "fastcdc2020"
IMPLEMENTATION = f"pyfastcdc-{pyfastcdc.__version__.rsplit('.', 1)[0]}"


#: Largest single read from the stream into the chunker's buffer.
READ_SIZE = 1 << 20


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class ReadableInto(Protocol):
    def readinto(self, buffer: memoryview, /) -> int: ...


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    min_size: int = 256 << 10
    avg_size: int = 1 << 20
    max_size: int = 4 << 20
    normalization: int = 1
    algorithm: str = ALGORITHM
    implementation: str = IMPLEMENTATION

    def __post_init__(self) -> None:
        # pyfastcdc's own limits; an odd minimum is rounded down by it, so refuse it.
        if not (64 <= self.min_size <= 1 << 20 and 256 <= self.avg_size <= 4 << 20):
            raise ValueError("chunker needs 64 <= min <= 1 MiB and 256 <= avg <= 4 MiB")
        if not (1024 <= self.max_size <= 16 << 20):
            raise ValueError("chunker needs 1 KiB <= max <= 16 MiB")
        if not (self.min_size <= self.avg_size <= self.max_size):
            raise ValueError("chunker sizes must satisfy min <= avg <= max")
        if self.min_size % 2:
            raise ValueError("chunker min size must be even")
        if self.normalization not in (0, 1, 2, 3):
            raise ValueError("normalization must be 0..3")


class Chunker:
    """Cuts a byte stream into blocks; one instance per account seed."""

    def __init__(self, params: ChunkerParams, seed: int) -> None:
        self.params = params
        self._cdc = pyfastcdc.FastCDC(
            params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=params.normalization,  # type: ignore[arg-type]
            seed=seed,
        )

    def split(self, stream: Readable | ReadableInto, buffers: BufferPool | None = None) -> Iterator[bytes]:
        """Yield the blocks of ``stream`` as independent ``bytes`` objects (see :meth:`split_marked`)."""
        for block, _ in self.split_marked(stream, buffers):
            yield block

    def split_marked(
        self, stream: Readable | ReadableInto, buffers: BufferPool | None = None
    ) -> Iterator[tuple[bytes, bool]]:
        """Yield the blocks of ``stream`` as independent ``bytes`` objects, each with whether
        it ends the stream (known as it is yielded: nothing waits for the next block).

        A block is cut as soon as its end is certain: once ``max_size`` bytes past its
        start have arrived (FastCDC never looks further) or the stream has ended. The
        first block is also cut as soon as its cut shows in what has arrived (looked for
        from ``avg_size`` on, then once per ``READ_SIZE`` more): the pipeline gets work
        after about one block, not ``max_size``, which each append of a resumable upload
        would wait for again. Later blocks have earlier ones in flight, and each look
        costs a scan. The cuts are those of :meth:`split_bytes` over the whole stream,
        however the reads fall. The stream is read in pieces of at most ``READ_SIZE``, so
        the first blocks go to the pipeline while the rest of a body is still arriving. ``buffers`` lends
        the working buffer (a fresh one per write costs a page fault per 4 KiB).
        """
        p = self.params
        # A stream shorter than the minimum block is one block: no working buffer.
        head = _read_up_to(stream, p.min_size)
        if len(head) < p.min_size:
            if head:
                yield head, True
            return
        size = 2 * p.max_size + READ_SIZE
        buf = buffers.take(size) if buffers is not None else bytearray(size)
        try:
            with memoryview(buf) as view:
                view[: len(head)] = head
                start, end, eof = 0, len(head), False
                del head
                # The first block is cut as soon as its cut shows (see above).
                early: int | None = p.avg_size
                while True:
                    cut = 0
                    while not eof and end - start < p.max_size:
                        if early is not None and end - start >= early:
                            cut = self._first_cut(view[start:end])
                            if cut < end - start:
                                break
                            cut, early = 0, end - start + READ_SIZE
                        if len(view) - end < READ_SIZE:
                            # Less than max_size is left here: move it to the front.
                            view[: end - start] = view[start:end]
                            start, end = 0, end - start
                        n = _readinto(stream, view[end : end + READ_SIZE])
                        if n:
                            end += n
                        else:
                            eof = True
                    if start == end:
                        return
                    early = None
                    cut = cut or self._first_cut(view[start:end])
                    yield bytes(view[start : start + cut]), eof and start + cut == end
                    start += cut
        finally:
            if buffers is not None:
                buffers.give(buf)

    def _first_cut(self, data: memoryview) -> int:
        """The length of the first block of ``data``; if it is all of ``data``, that block's end
        is certain only at the stream's end or at ``max_size`` (a cut short of the end is
        certain at once: FastCDC looks at no byte past it)."""
        return int(next(self._cdc.cut_buf(data)).length)

    def split_bytes(self, data: bytes) -> Iterator[bytes]:
        for chunk in self._cdc.cut_buf(data):
            yield bytes(chunk.data)


class BufferPool:
    """Working buffers for the chunker, kept between writes (at most ``keep`` of them).

    A new multi-MiB ``bytearray`` is fresh memory from the kernel each time: about
    2,000 page faults for 8 MiB, paid again by every PATCH of a resumable upload.
    """

    def __init__(self, keep: int = 4) -> None:
        self._keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) == size:
                    return self._free.pop(i)
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buf)


def _readinto(stream: Readable | ReadableInto, buffer: memoryview) -> int:
    if hasattr(stream, "readinto"):
        return int(stream.readinto(buffer))
    data = stream.read(len(buffer))
    buffer[: len(data)] = data
    return len(data)


def _read_up_to(stream: Readable | ReadableInto, n: int) -> bytes:
    buf = bytearray(n)
    with memoryview(buf) as view:
        got = 0
        while got < n and (k := _readinto(stream, view[got:])):
            got += k
    return bytes(buf[:got])


class Prefixed:
    """``readinto`` that serves ``head`` first, then the rest of ``stream``."""

    def __init__(self, head: bytes, stream: Readable | ReadableInto) -> None:
        self._head = memoryview(head)
        self._stream = stream

    def readinto(self, buffer: memoryview) -> int:
        if not self._head:
            return _readinto(self._stream, buffer)
        n = min(len(buffer), len(self._head))
        buffer[:n] = self._head[:n]
        self._head = self._head[n:]
        return n
