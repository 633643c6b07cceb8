"""``/files/*``: metadata, revisions, restore, download and simple upload."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from storage import errors as e
from storage.model import Entry, Revision, UploadSession
from storage.reader import VersionReader
from sync_ext.api.routing import PREFIX, Request, Response, optional_mtime
from webcommon.numbers import clamp_numbers, digits, json_int
from webcommon.problems import Problem, bad_request

#: list_revisions pages at most this many revisions.
MAX_REVISIONS_PAGE = 1000


def entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "path": "/" + entry.path,
        "name": entry.name,
        "is_dir": entry.is_dir,
        "size": entry.size,
        "mtime": entry.mtime,
        "rev": entry.version_id,
        "content_sha256": entry.sha256.hex() if entry.sha256 is not None else None,
        "etag": entry.etag,
        "is_deleted": entry.deleted_at is not None,
        "deleted_at": entry.deleted_at,
    }


def revision_json(rev: Revision) -> dict[str, Any]:
    return {
        "rev": rev.version_id,
        "size": rev.size,
        "content_sha256": rev.sha256.hex(),
        "mtime": rev.mtime,
        "created_at": rev.created_at,
        "device": rev.device,
        "pinned": rev.pinned,
        "is_current": rev.is_current,
    }


def metadata(req: Request) -> Response:
    entry = req.volume.lookup(req.param("path"), include_deleted=True)
    return Response.json(200, entry_json(entry))


def list_revisions(req: Request) -> Response:
    path = req.param("path")
    limit = req.int_param("limit", default=100, minimum=1)
    assert limit is not None
    before = req.int_param("before_rev")
    revs = req.volume.revisions(
        path, include_deleted=True, limit=min(limit, MAX_REVISIONS_PAGE) + 1, before=before
    )
    page = revs[: min(limit, MAX_REVISIONS_PAGE)]
    return Response.json(
        200,
        {
            "path": "/" + req.volume.lookup(path, include_deleted=True).path,
            "revisions": [revision_json(r) for r in page],
            "has_more": len(revs) > len(page),
        },
    )


def restore(req: Request) -> Response:
    doc = req.json()
    path, rev = doc.get("path"), doc.get("rev")
    if not isinstance(path, str) or not path:
        raise bad_request("'path' (a string) is required")
    if not json_int(rev) or rev <= 0:
        raise bad_request("'rev' (a revision id, an integer) is required")
    req.check_unlocked(path, parent=None)  # a trashed file comes back
    entry = req.volume.restore(path, rev, device=req.device())
    return Response.json(200, entry_json(entry))


def pin_revision(req: Request) -> Response:
    doc = req.json()
    path, rev, pinned = doc.get("path"), doc.get("rev"), doc.get("pinned", True)
    if not isinstance(path, str) or not path:
        raise bad_request("'path' (a string) is required")
    if not json_int(rev) or rev <= 0:
        raise bad_request("'rev' (a revision id, an integer) is required")
    if not isinstance(pinned, bool):
        raise bad_request("'pinned' must be true or false")
    return Response.json(200, revision_json(req.volume.pin_revision(path, rev, pinned=pinned)))


def upload(req: Request) -> Response:
    kind = req.param("uploadType")
    if kind == "resumable":
        return _start_resumable(req)
    if kind != "media":
        raise bad_request(f"uploadType must be 'media' or 'resumable', not {kind!r}")
    path = req.param("path")
    mtime = _mtime(req)
    length = req.content_length()
    req.check_unlocked(path, parent=None)
    pending = req.volume.begin_write(
        path,
        size_hint=length,
        if_match=req.if_match(),
        if_none_match="*" if (req.header("If-None-Match") or "").strip() == "*" else None,
        mtime=mtime,
        device=req.device(),
    )
    with pending:
        body = req.body()
        pending.feed(body)
        if length is not None and body.received != length:
            raise bad_request(f"body ended after {body.received} of {length} bytes")
        entry = pending.commit()
    return Response.json(201 if pending.created else 200, entry_json(entry), [("ETag", entry.etag or "")])


# -- the resumable protocol: POST starts a session, PUTs with Content-Range fill it -----------

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


def _start_resumable(req: Request) -> Response:
    raw = (req.header("X-Upload-Content-Length") or "").strip()
    declared = digits(raw) if raw else None
    if raw and declared is None:
        raise bad_request("X-Upload-Content-Length must be a byte count")
    req.check_unlocked(req.param("path"), parent=None)
    session = req.volume.uploads.create(
        kind="resumable",
        path=req.param("path"),
        length=declared,
        mtime=_mtime(req),
        if_match=req.if_match(),
        device=req.device(),
    )
    location = f"{req.environ.get('SCRIPT_NAME', '')}{PREFIX}/files/upload?upload_id={session.id}"
    if session.completed is not None:
        return Response.json(201 if session.created else 200, entry_json(session.completed))
    return Response.json(200, {"upload_id": session.id, "location": location}, [("Location", location)])


def resume(req: Request) -> Response:
    """``PUT ...?upload_id=``: data with ``Content-Range: bytes a-b/total``, or a status query
    (``bytes */total``, no body). 308 with ``Range: bytes=0-N`` until the file is complete."""
    session_id = req.param("upload_id")
    uploads = req.volume.uploads
    raw = req.header("Content-Range")
    length = req.content_length() or 0
    if raw is None:
        if length == 0:
            return _resumable_state(uploads.get(session_id))
        raw = f"bytes 0-{length - 1}/{length}"
    m = _CONTENT_RANGE.match(clamp_numbers(raw))
    if m is None:
        raise bad_request(
            "Content-Range must be 'bytes a-b/total', 'bytes */total' or with '*' for an unknown total"
        )
    first, last, total = m.groups()
    # A status query reports the durable offset; data is checked against the offset as
    # answered, which an earlier chunk still committing has moved (storage.uploads).
    session = uploads.get(session_id, settle=first is None)
    if total != "*" and session.length is None and session.completed is None:
        session = uploads.declare_length(session_id, int(total))
    elif total != "*" and session.length is not None and int(total) != session.length:
        raise bad_request(f"the upload's total is {session.length} bytes, not {total}")
    if first is None:
        return _resumable_state(session)
    start, end = int(first), int(last) + 1
    if end <= start or (length and end - start != length):
        raise bad_request("Content-Range does not match the body's length")
    if session.completed is not None or start != session.offset:
        # The client is out of step: tell it where the server is; its body is not read.
        response = _resumable_state(session)
        response.headers.append(("Connection", "close"))
        return response
    req.check_unlocked_if_last(session.path, session.length, end)
    body = req.body()
    try:
        session = uploads.append(session_id, start, body)
    except e.OffsetMismatch:
        # Another request (say, the client's previous one, dropped but still finishing)
        # moved the offset meanwhile: answer the state, the client resumes from there.
        response = _resumable_state(uploads.get(session_id))
        response.headers.append(("Connection", "close"))
        return response
    if body.received != end - start:
        raise bad_request(f"the body ended after {body.received} of {end - start} bytes")
    return _resumable_state(session)


def _resumable_state(session: UploadSession) -> Response:
    if session.completed is not None:
        return Response.json(201 if session.created else 200, entry_json(session.completed))
    headers = [("Content-Length", "0")]
    if session.offset > 0:
        headers.append(("Range", f"bytes=0-{session.offset - 1}"))
    return Response(308, headers)


def download(req: Request) -> Response:
    path = req.param("path")
    rev = req.int_param("rev", minimum=1)
    reader = req.volume.open(path, version_id=rev, include_deleted=rev is not None)
    try:
        return _send(req, reader)
    except BaseException:
        reader.close()
        raise


def _send(req: Request, reader: VersionReader) -> Response:
    entry = reader.entry
    etag = entry.etag or ""
    headers = [("ETag", etag), ("Accept-Ranges", "bytes"), ("Content-Type", "application/octet-stream")]
    inm = req.header("If-None-Match")
    if inm is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
        reader.close()
        return Response(304, headers)
    start, end = 0, entry.size
    status = 200
    spec = req.header("Range")
    if_range = req.header("If-Range")
    if spec is not None and (if_range is None or if_range.strip() == etag):
        chosen = parse_range(spec, entry.size)
        if chosen is not None:
            start, end = chosen
            status = 206
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{entry.size}"))
    headers.append(("Content-Length", str(end - start)))
    return Response(status, headers, _Stream(reader, start, end))


_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def parse_range(spec: str, size: int) -> tuple[int, int] | None:
    """One byte range as [start, end); None to serve the whole file (a header that does not parse,
    or several ranges); :class:`Problem` 416 when nothing of the file is selected."""
    m = _RANGE.match(clamp_numbers(spec))
    if m is None:
        return None
    first, last = m.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - suffix), size
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if last != "" and int(last) < start:
        return None  # syntactically invalid: ignored (RFC 9110 14.2)
    if start >= size:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> Problem:
    problem = Problem(416, "range-not-satisfiable", "Range not satisfiable", f"the file has {size} bytes")
    problem.headers.append(("Content-Range", f"bytes */{size}"))
    return problem


class _Stream:
    """A range of a revision as the response body.

    The first piece is read here, before the status line is decided, so a
    block store that is down answers 503 (with Retry-After) instead of a 200 whose
    body breaks off after the headers.
    """

    def __init__(self, reader: VersionReader, start: int, end: int) -> None:
        self._reader = reader
        self._rest = reader.iter_range(start, end)
        self._first = next(self._rest, None)

    def __iter__(self) -> Iterator[bytes]:
        if self._first is not None:
            yield self._first
        yield from self._rest

    def close(self) -> None:
        self._reader.close()


def _mtime(req: Request) -> float | None:
    return optional_mtime(req.query.get("mtime"), "mtime")
