"""``memory://``: objects in a dict, for tests and throw-away volumes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

from storage.backends.base import ObjectInfo, check_name, slice_bytes
from storage.errors import NotFound


class MemoryBackend:
    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes, *, sync: bool = True) -> None:
        check_name(name)
        with self._lock:
            self._objects[name] = (bytes(data), time.time())

    def sync(self, names: Iterable[str]) -> None:
        pass

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            try:
                data, _ = self._objects[name]
            except KeyError:
                raise NotFound(name) from None
        return slice_bytes(data, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        with self._lock:
            try:
                data, mtime = self._objects[name]
            except KeyError:
                raise NotFound(name) from None
        return ObjectInfo(name, len(data), mtime)

    def delete(self, name: str) -> None:
        with self._lock:
            self._objects.pop(name, None)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            items = [ObjectInfo(n, len(d), m) for n, (d, m) in self._objects.items() if n.startswith(prefix)]
        yield from sorted(items, key=lambda i: i.name)

    def close(self) -> None:
        pass
