"""Two stores seen as one: the hot store, and an archive that cold objects move to.

Reads try the hot store first and fall through to the archive, so a reader never
needs to know where an object lives, and an object being moved (copied to the
archive, then deleted from the hot store) is readable at every moment. Writes go
to the hot store. ``delete`` removes the name from both and ``list`` shows both,
so garbage collection and fsck see one store. The move itself is
:func:`storage.tiering.move_cold_blocks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from storage.backends.base import Backend, ObjectInfo
from storage.errors import NotFound


class TieredBackend:
    def __init__(self, hot: Backend, archive: Backend) -> None:
        self.hot = hot
        self.archive = archive

    def put(self, name: str, data: bytes, *, sync: bool = True) -> None:
        self.hot.put(name, data, sync=sync)

    def sync(self, names: Iterable[str]) -> None:
        self.hot.sync(names)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            return self.hot.get(name, offset, length)
        except NotFound:
            return self.archive.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        try:
            return self.hot.stat(name)
        except NotFound:
            return self.archive.stat(name)

    def delete(self, name: str) -> None:
        self.hot.delete(name)
        self.archive.delete(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        seen: set[str] = set()
        for info in self.hot.list(prefix):
            seen.add(info.name)
            yield info
        for info in self.archive.list(prefix):
            if info.name not in seen:
                yield info

    def close(self) -> None:
        self.hot.close()
        self.archive.close()
