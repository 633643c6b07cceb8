"""The one exception tree of the storage layer.

Faces translate these to protocol statuses in one table each; nothing else
should escape from storage on a path a client can trigger::

    StorageError
    ├── NotFound                 no such file, folder, revision, account or object
    ├── AlreadyExists            the target exists and overwriting was not allowed
    ├── Conflict                 the tree forbids it: parent missing, not a folder, ...
    │   └── OffsetMismatch       an upload resumed from another offset than the server's
    ├── InvalidName              a path or name that cannot be stored (NUL, '\\', ...)
    ├── InvalidBlockList         a block-level commit whose blocks are missing or mis-sized
    ├── PreconditionFailed       If-Match / parent revision did not hold
    ├── Locked                   a lock held by someone else
    ├── QuotaExceeded            the account has no room for it
    ├── TooLarge                 over the per-file limit (10 GB by default)
    ├── AuthenticationFailed     wrong password or token, unknown account
    ├── ChecksumMismatch         uploaded data does not match the checksum sent with it
    ├── IntegrityError           stored data failed authentication or hashing
    │   └── UnsupportedFormat    a stored block of a format version we do not read
    ├── CursorExpired            a change-feed position older than the kept journal (or unknown)
    ├── SchemaMismatch           the metadata database is at an unknown or newer revision
    └── BackendUnavailable       the block store or database cannot be reached now
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error the storage layer raises on purpose."""


class NotFound(StorageError):
    pass


class AlreadyExists(StorageError):
    pass


class InvalidBlockList(StorageError):
    """A commit of a block list that does not hold: a block not uploaded, sizes that disagree."""


class CursorExpired(StorageError):
    """The journal no longer reaches back to this position: re-list everything."""


class Conflict(StorageError):
    pass


class OffsetMismatch(Conflict):
    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        #: The offset the server holds, when known.
        self.offset = offset


class ChecksumMismatch(StorageError):
    pass


class InvalidName(StorageError):
    pass


class PreconditionFailed(StorageError):
    pass


class Locked(StorageError):
    pass


class QuotaExceeded(StorageError):
    pass


class TooLarge(StorageError):
    pass


class AuthenticationFailed(StorageError):
    pass


class IntegrityError(StorageError):
    pass


class UnsupportedFormat(IntegrityError):
    pass


class SchemaMismatch(StorageError):
    pass


class BackendUnavailable(StorageError):
    """Transient: the caller may retry later (HTTP 503 with Retry-After)."""

    #: What the faces tell clients to wait before retrying (both tables use it).
    retry_after_seconds = 5
