"""Errors of the extension API as RFC 9457 problem details (``application/problem+json``).

One table maps storage errors to a status and a problem type; handlers raise
:class:`Problem` for what they check themselves (a missing parameter, a bad
range). Problem types are URNs (``urn:davserver:problem:<slug>``), stable names
clients can switch on; ``detail`` is for humans.
"""

from __future__ import annotations

import json
from typing import Any

from storage import errors as e

PROBLEM_TYPE_PREFIX = "urn:davserver:problem:"
CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    def __init__(self, status: int, slug: str, title: str, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or title)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.extra = extra
        self.headers: list[tuple[str, str]] = []

    def body(self) -> bytes:
        doc: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.slug,
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            doc["detail"] = self.detail
        doc.update(self.extra)
        return json.dumps(doc).encode()


#: storage error class -> (status, problem slug, title). Looked up along the class's MRO.
STORAGE_PROBLEMS: dict[type[e.StorageError], tuple[int, str, str]] = {
    e.NotFound: (404, "not-found", "Not found"),
    e.CursorExpired: (410, "cursor-reset", "Cursor reset: list everything again"),
    e.OffsetMismatch: (409, "offset-mismatch", "Offset mismatch"),
    e.ChecksumMismatch: (460, "checksum-mismatch", "Checksum mismatch"),
    e.AlreadyExists: (409, "already-exists", "Already exists"),
    e.Conflict: (409, "conflict", "Conflict with the current tree"),
    e.InvalidName: (400, "invalid-name", "Invalid name"),
    e.InvalidBlockList: (400, "invalid-block-list", "Invalid block list"),
    e.PreconditionFailed: (412, "precondition-failed", "Precondition failed"),
    e.Locked: (423, "locked", "Locked"),
    e.QuotaExceeded: (507, "quota-exceeded", "Quota exceeded"),
    e.TooLarge: (413, "too-large", "Too large"),
    e.AuthenticationFailed: (403, "forbidden", "Forbidden"),
    e.IntegrityError: (500, "integrity-error", "Stored data failed verification"),
    e.SchemaMismatch: (503, "unavailable", "Service unavailable"),
    e.BackendUnavailable: (503, "unavailable", "Service unavailable"),
}


def from_storage_error(exc: e.StorageError) -> Problem:
    for cls in type(exc).__mro__:
        if cls in STORAGE_PROBLEMS:
            status, slug, title = STORAGE_PROBLEMS[cls]
            problem = Problem(status, slug, title, str(exc) or None)
            if isinstance(exc, e.OffsetMismatch) and exc.offset is not None:
                problem.extra["offset"] = exc.offset
            if status == 503:
                problem.headers.append(("Retry-After", str(e.BackendUnavailable.retry_after_seconds)))
            return problem
    return Problem(500, "internal-error", "Internal server error")


def bad_request(detail: str) -> Problem:
    return Problem(400, "bad-request", "Bad request", detail)
