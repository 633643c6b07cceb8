"""A wrapper that retries transient backend failures with capped exponential backoff.

Only :class:`storage.errors.BackendUnavailable` is retried; ``NotFound`` and
programming errors pass straight through. Every method of the protocol is
idempotent (``put`` replaces), so a retry can never duplicate an effect.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from storage.backends.base import Backend, ObjectInfo
from storage.errors import BackendUnavailable

T = TypeVar("T")


class RetryingBackend:
    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = 4,
        base_delay: float = 0.05,
        max_delay: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep

    def _call(self, fn: Callable[[], T]) -> T:
        for attempt in range(self.attempts):
            try:
                return fn()
            except BackendUnavailable:
                if attempt == self.attempts - 1:
                    raise
                delay = min(self.max_delay, self.base_delay * 2**attempt)
                self._sleep(delay * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")

    def put(self, name: str, data: bytes, *, sync: bool = True) -> None:
        self._call(lambda: self.inner.put(name, data, sync=sync))

    def sync(self, names: Iterable[str]) -> None:
        names = list(names)
        self._call(lambda: self.inner.sync(names))

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(lambda: self.inner.get(name, offset, length))

    def stat(self, name: str) -> ObjectInfo:
        return self._call(lambda: self.inner.stat(name))

    def delete(self, name: str) -> None:
        self._call(lambda: self.inner.delete(name))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._call(lambda: list(self.inner.list(prefix))))

    def close(self) -> None:
        self.inner.close()
