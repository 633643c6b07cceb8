"""A request body as a reader the storage engine can consume."""

from __future__ import annotations

from typing import Any

#: Largest single read from the server's input: cheroot's (pure-Python) buffered reader
#: joins and slices what it receives, holding about three copies of each read at once.
READ_MAX = 1 << 20


class MalformedBody(ValueError):
    """The request body breaks HTTP's framing (a chunk size that is no number): the
    client's error, answered 400, never 500. The server's input raises it."""


class RequestBody:
    """At most ``length`` bytes of ``stream`` (all of it when None: a chunked body).

    The WSGI server already stops at Content-Length and decodes chunked bodies; a
    client that disconnects early gives a short read, which the caller checks
    against the declared length.
    """

    def __init__(self, stream: Any, length: int | None) -> None:
        self._stream = stream
        self._left = length
        self.received = 0
        #: The server's input may receive straight into a buffer (davserver.server does).
        self._readinto = getattr(stream, "readinto", None)

    def readinto(self, buffer: memoryview | bytearray) -> int:
        view = memoryview(buffer)[:READ_MAX]
        if self._left is not None:
            if self._left <= 0:
                return 0
            view = view[: self._left]
        if self._readinto is not None:
            n: int = self._readinto(view)
        else:
            data = self._stream.read(len(view))
            n = len(data)
            view[:n] = data
        self._count(n)
        return n

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (at most READ_MAX per call; b"" only at the end); -1: all of it."""
        if size is None or size < 0:
            parts = []
            while chunk := self.read(READ_MAX):
                parts.append(chunk)
            return b"".join(parts)
        size = min(size, READ_MAX)
        if self._left is not None:
            size = min(size, self._left)
            if size <= 0:
                return b""
        data: bytes = self._stream.read(size)
        self._count(len(data))
        return data

    def read_up_to(self, size: int) -> bytes:
        """``size`` bytes, or fewer only when the body ends first (read() may return less)."""
        parts = []
        while size > 0 and (chunk := self.read(size)):
            parts.append(chunk)
            size -= len(chunk)
        return b"".join(parts)

    def _count(self, n: int) -> None:
        self.received += n
        if self._left is not None:
            self._left -= n
