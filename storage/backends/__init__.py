"""Block backends: a six-method protocol and its implementations, chosen by URL."""

from storage.backends.base import Backend, ObjectInfo
from storage.backends.url import open_backend

__all__ = ["Backend", "ObjectInfo", "open_backend"]
