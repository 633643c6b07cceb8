"""tus 1.0.0 at ``/api/v1/uploads/``: core plus creation, creation-with-upload,
creation-defer-length, expiration, checksum, termination and concatenation.

A thin translation onto :class:`storage.uploads.Uploads`. ``Upload-Metadata``
keys understood: ``path`` (or ``filename``, stored in the home folder) for the
target, ``mtime`` (seconds since the epoch). Every response, errors included,
carries ``Tus-Resumable``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from email.utils import formatdate
from functools import wraps
from urllib.parse import urlsplit

from storage import errors as e
from storage.model import UploadSession
from storage.uploads import Checksum
from sync_ext.api.routing import Request, Response, optional_mtime
from webcommon import problems
from webcommon.numbers import digits
from webcommon.problems import Problem, bad_request

VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
)
CHECKSUM_ALGORITHMS = ("sha1", "sha256", "md5")
OFFSET_OCTET_STREAM = "application/offset+octet-stream"


def tus(fn: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """Checks Tus-Resumable on requests and adds it to every answer, problems included."""

    @wraps(fn)
    def handler(req: Request) -> Response:
        try:
            if req.environ.get("REQUEST_METHOD") != "OPTIONS":
                sent = req.header("Tus-Resumable")
                if sent is None:
                    raise bad_request("the Tus-Resumable header is required")
                if sent.strip() != VERSION:
                    problem = Problem(
                        412, "tus-version", "Unsupported tus version", f"this server speaks {VERSION}"
                    )
                    problem.headers.append(("Tus-Version", VERSION))
                    raise problem
            response = fn(req)
        except e.StorageError as exc:
            problem = problems.from_storage_error(exc)
            problem.headers.append(("Tus-Resumable", VERSION))
            raise problem from exc
        except Problem as problem:
            problem.headers.append(("Tus-Resumable", VERSION))
            raise
        response.headers.append(("Tus-Resumable", VERSION))
        return response

    return handler


def make_handlers(prefix: str, max_size: int) -> dict[str, Callable[[Request], Response]]:
    collection = prefix + "/uploads/"

    def location(session_id: str) -> str:
        return collection + session_id

    @tus
    def options(req: Request) -> Response:
        return Response(
            204,
            [
                ("Tus-Version", VERSION),
                ("Tus-Extension", ",".join(EXTENSIONS)),
                ("Tus-Max-Size", str(max_size)),
                ("Tus-Checksum-Algorithm", ",".join(CHECKSUM_ALGORITHMS)),
            ],
        )

    @tus
    def create(req: Request) -> Response:
        uploads = req.volume.uploads
        meta_raw = req.header("Upload-Metadata")
        meta = parse_metadata(meta_raw)
        concat = (req.header("Upload-Concat") or "").strip()
        if concat.startswith("final"):
            ids = [_session_id(url, collection) for url in concat.partition(";")[2].split()]
            req.check_unlocked(_target(meta), parent=None)
            session = uploads.concat(
                _target(meta), ids, mtime=_mtime(meta), device=req.device(), meta=meta_raw
            )
            return Response(201, [("Location", location(session.id)), *_expiry(session)])
        length = _length(req)
        if length is not None and length > max_size:
            raise Problem(413, "too-large", "Too large", f"uploads are limited to {max_size} bytes")
        partial = concat == "partial"
        if concat and not partial:
            raise bad_request("Upload-Concat must be 'partial' or 'final;<urls>'")
        if not partial:
            req.check_unlocked(_target(meta), parent=None)
        session = uploads.create(
            kind="partial" if partial else "tus",
            path=None if partial else _target(meta),
            length=length,
            mtime=_mtime(meta),
            if_match=req.if_match(),
            device=req.device(),
            meta=meta_raw,
        )
        headers = [("Location", location(session.id))]
        if _has_body(req):
            if (req.header("Content-Type") or "").split(";")[0].strip() != OFFSET_OCTET_STREAM:
                raise Problem(
                    415, "unsupported-media-type", "Unsupported media type", f"send {OFFSET_OCTET_STREAM}"
                )
            session = uploads.append(session.id, 0, req.body(), checksum=_checksum(req))
            headers.append(("Upload-Offset", str(session.offset)))
        return Response(201, headers + _expiry(session))

    @tus
    def head(req: Request) -> Response:
        session = req.volume.uploads.get(req.path_params["upload_id"])
        headers = [("Upload-Offset", str(session.offset)), ("Cache-Control", "no-store"), *_expiry(session)]
        if session.length is not None:
            headers.append(("Upload-Length", str(session.length)))
        else:
            headers.append(("Upload-Defer-Length", "1"))
        if session.meta:
            headers.append(("Upload-Metadata", session.meta))
        if session.kind == "partial":
            headers.append(("Upload-Concat", "partial"))
        elif session.kind == "final":
            headers.append(("Upload-Concat", "final"))
        return Response(200, headers)

    @tus
    def patch(req: Request) -> Response:
        if (req.header("Content-Type") or "").split(";")[0].strip() != OFFSET_OCTET_STREAM:
            raise Problem(
                415, "unsupported-media-type", "Unsupported media type", f"send {OFFSET_OCTET_STREAM}"
            )
        offset = digits(req.header("Upload-Offset") or "")
        if offset is None:
            raise bad_request("Upload-Offset (a byte count) is required")
        uploads = req.volume.uploads
        session_id = req.path_params["upload_id"]
        current = uploads.get(session_id, settle=False)  # kind and length only: no waiting
        if current.kind == "final":
            raise Problem(403, "final-upload", "Forbidden", "a final (concatenated) upload takes no data")
        length = _length(req, deferred_ok=False)
        if length is not None and current.length is None:
            uploads.declare_length(session_id, length)
        elif length is not None and length != current.length:
            raise bad_request(f"Upload-Length was set to {current.length}; it cannot change")
        sent = req.content_length()
        total = length if length is not None else current.length
        req.check_unlocked_if_last(current.path, total, None if sent is None else offset + sent)
        session = uploads.append(session_id, offset, req.body(), checksum=_checksum(req))
        return Response(204, [("Upload-Offset", str(session.offset)), *_expiry(session)])

    @tus
    def terminate(req: Request) -> Response:
        req.volume.uploads.delete(req.path_params["upload_id"])
        return Response(204)

    return {"options": options, "create": create, "head": head, "patch": patch, "terminate": terminate}


def parse_metadata(raw: str | None) -> dict[str, str]:
    """``key base64value,key2,key3 base64``: values decoded as UTF-8 (a key alone means empty)."""
    meta: dict[str, str] = {}
    if not raw:
        return meta
    for pair in raw.split(","):
        key, _, value = pair.strip().partition(" ")
        if not key:
            raise bad_request("Upload-Metadata has an empty key")
        try:
            meta[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8") if value else ""
        except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII text
            raise bad_request(f"Upload-Metadata value of {key!r} is not base64 of UTF-8") from None
    return meta


def _target(meta: dict[str, str]) -> str:
    path = meta.get("path") or meta.get("filename")
    if not path:
        raise bad_request("Upload-Metadata must name the target: 'path' (or 'filename')")
    return path


def _mtime(meta: dict[str, str]) -> float | None:
    return optional_mtime(meta.get("mtime"), "the mtime metadata")


def _length(req: Request, *, deferred_ok: bool = True) -> int | None:
    raw = req.header("Upload-Length")
    if raw is not None:
        length = digits(raw)  # past the largest file: 413, by the caller
        if length is None:
            raise bad_request("Upload-Length must be a byte count")
        return length
    if not deferred_ok:
        return None
    if (req.header("Upload-Defer-Length") or "").strip() == "1":
        return None
    raise bad_request("Upload-Length (or Upload-Defer-Length: 1) is required")


def _checksum(req: Request) -> Checksum | None:
    raw = req.header("Upload-Checksum")
    if raw is None:
        return None
    algorithm, _, value = raw.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise bad_request(
            f"checksum algorithm {algorithm!r} is not supported ({', '.join(CHECKSUM_ALGORITHMS)})"
        )
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise bad_request("Upload-Checksum value is not base64") from None
    if not digest:
        raise bad_request("Upload-Checksum has no value")
    return Checksum(algorithm, digest)


def _has_body(req: Request) -> bool:
    length = req.content_length()
    return (length is not None and length > 0) or "chunked" in (req.header("Transfer-Encoding") or "").lower()


def _session_id(url: str, collection: str) -> str:
    try:
        path = urlsplit(url).path
    except ValueError:
        raise bad_request(f"{url!r} is not a URL") from None
    rest = path[len(collection) :] if path.startswith(collection) else ""
    if not rest or "/" in rest:
        raise bad_request(f"{url!r} is not an upload of this server")
    return rest


def _expiry(session: UploadSession) -> list[tuple[str, str]]:
    return [("Upload-Expires", formatdate(session.expires_at, usegmt=True))]
