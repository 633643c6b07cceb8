"""Content-defined chunking (FastCDC 2020, compiled, via ``pyfastcdc``).

Boundaries depend on the content, not on offsets, so inserting one byte near the
start of a file changes the blocks around the edit only. The gear table is seeded
per account (from the account key), so boundaries reveal nothing about content
to whoever reads the block store, and two accounts never share boundaries.

The parameters are stored in the metadata (table ``chunkers``) and referenced by
every version: a revision can always be re-cut identically, and clients that do
delta sync fetch them to cut where the server cuts. ``pyfastcdc``'s effective
average is ``avg + min`` (cut-point skipping), about 1.25 MiB with the defaults.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import pyfastcdc

ALGORITHM = "fastcdc2020"
IMPLEMENTATION = f"pyfastcdc-{pyfastcdc.__version__.rsplit('.', 1)[0]}"


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
        if not (64 <= self.min_size <= self.avg_size <= self.max_size):
            raise ValueError("chunker sizes must satisfy 64 <= min <= avg <= max")
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

    def split(self, stream: Readable | ReadableInto) -> Iterator[bytes]:
        """Yield the blocks of ``stream`` as independent ``bytes`` objects.

        ``pyfastcdc`` reuses its buffer, so each block is copied once; that copy
        is what the pipeline hands to worker threads.
        """
        for chunk in self._cdc.cut_stream(stream):
            yield bytes(chunk.data)

    def split_bytes(self, data: bytes) -> Iterator[bytes]:
        for chunk in self._cdc.cut_buf(data):
            yield bytes(chunk.data)
