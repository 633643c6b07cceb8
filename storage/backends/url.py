"""Backends are chosen by URL and wrapped, never flagged.

* ``memory://``                                   objects in a dict (tests)
* ``file:///srv/blocks``                          a local folder
* ``s3://bucket/prefix?endpoint=URL&region=R``    an S3-compatible store (boto3)

Every backend but memory is wrapped in :class:`RetryingBackend`.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from storage.backends.base import Backend
from storage.backends.memory import MemoryBackend
from storage.backends.retry import RetryingBackend


def open_backend(url: str, *, durable: bool = True) -> Backend:
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return MemoryBackend()
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URLs must be local: {url!r}")
        from storage.backends.local import LocalBackend

        return RetryingBackend(LocalBackend(unquote(parts.path), durable=durable))
    if parts.scheme == "s3":
        from storage.backends.s3 import S3Backend

        return RetryingBackend(S3Backend.from_url(url))
    raise ValueError(f"unsupported block store URL scheme {parts.scheme!r} in {url!r}")
