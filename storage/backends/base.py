"""The block backend protocol.

A backend stores opaque named objects and nothing else: no paths, revisions or
crypto (restic's ``backend.Backend`` and borgstore's backends are the model).
Names are ``/``-separated ASCII strings chosen by the block layer; a backend may
map them to folders or keys as it likes.

Contract every implementation passes (``tests/storage/test_backends.py``):

* ``put`` is atomic (a reader sees the old object, or the whole new one, never a
  part) and idempotent (putting the same name again replaces it);
* after ``put`` returns the object survives a crash or power cut, except with
  ``sync=False``: then it does so once ``sync([name, ...])`` has returned. That lets
  a writer store many objects and wait for the disk once per batch, not once per
  object; a backend whose every put is durable anyway ignores both;
* ``get(name, offset, length)`` returns exactly the requested slice, shorter only
  where the object ends; a missing object raises :class:`storage.errors.NotFound`;
* ``stat`` returns size and modification time, ``delete`` of a missing object is
  not an error, ``list(prefix)`` yields every object whose name starts with it;
* transient failures (network, 5xx, timeouts) raise
  :class:`storage.errors.BackendUnavailable`, which the retry wrapper retries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    name: str
    size: int
    mtime: float


@runtime_checkable
class Backend(Protocol):
    def put(self, name: str, data: bytes, *, sync: bool = True) -> None: ...

    def sync(self, names: Iterable[str]) -> None: ...

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def stat(self, name: str) -> ObjectInfo: ...

    def delete(self, name: str) -> None: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def close(self) -> None: ...


def check_name(name: str) -> None:
    """Refuse names that could escape a folder or confuse a key space."""
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
        or not name.isascii()
    ):
        raise ValueError(f"invalid object name {name!r}")


def slice_bytes(data: bytes, offset: int, length: int | None) -> bytes:
    if offset < 0 or (length is not None and length < 0):
        raise ValueError("offset and length must not be negative")
    end = None if length is None else offset + length
    return data[offset:end]
