"""Block-level sync: ``/config``, ``/blocks/*``, ``/files/commit``, ``/files/manifest``.

The HTTP side of :mod:`storage.delta`. Hashes travel as lowercase hex SHA-256 of
the plaintext block. A commit's ``parent_rev`` is required: ``null`` for a file
the client believes new, else the revision it edited; when that no longer holds
the answer is 409 with the file's current revision, so the client can fetch it
and resolve the conflict instead of overwriting someone's work.
"""

from __future__ import annotations

import re
from typing import Any

from storage import errors as e
from sync_ext.api.files import entry_json
from sync_ext.api.routing import Request, Response, optional_mtime
from webcommon.numbers import json_int
from webcommon.problems import Problem, bad_request

_HEX = re.compile(r"[0-9a-f]{64}")
#: Hashes one /blocks/missing request may ask about.
MAX_HASHES = 10_000
#: A commit's body: a block list of MAX_BLOCKS entries, about 100 bytes each, with room.
MAX_COMMIT_BODY = 8 << 20


def _hash(text: object, what: str) -> bytes:
    if not isinstance(text, str) or not _HEX.fullmatch(text):
        raise bad_request(f"{what} must be a SHA-256 in lowercase hex")
    return bytes.fromhex(text)


def config(req: Request) -> Response:
    return Response.json(200, req.volume.block_sync.config())


def missing(req: Request) -> Response:
    hashes = req.json().get("hashes")
    if not isinstance(hashes, list) or len(hashes) > MAX_HASHES:
        raise bad_request(f"'hashes' must be a list of at most {MAX_HASHES} hashes")
    wanted = [_hash(h, "each hash") for h in hashes]
    return Response.json(200, {"missing": [h.hex() for h in req.volume.block_sync.missing(wanted)]})


def put_block(req: Request) -> Response:
    sha = _hash(req.path_params["sha256"], "the block name")
    sync = req.volume.block_sync
    limit = int(sync.config()["max_block_size"])
    length = req.content_length()
    if length is not None and length > limit:
        raise Problem(413, "too-large", "Too large", f"a block holds at most {limit} bytes")
    data = req.body().read_up_to(limit + 1)
    created = sync.put(sha, data)
    return Response.json(201 if created else 200, {"hash": sha.hex(), "size": len(data), "created": created})


def get_block(req: Request) -> Response:
    data = req.volume.block_sync.get(_hash(req.path_params["sha256"], "the block name"))
    headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data)))]
    # A block is named by its content: it never changes.
    headers.append(("Cache-Control", "private, max-age=31536000, immutable"))
    return Response(200, headers, [data])


def commit(req: Request) -> Response:
    doc = req.json(MAX_COMMIT_BODY)
    path, size, blocks = doc.get("path"), doc.get("size"), doc.get("blocks")
    if not isinstance(path, str) or not path:
        raise bad_request("'path' (a string) is required")
    if not json_int(size) or size < 0:
        raise bad_request("'size' (bytes, an integer) is required")
    if "parent_rev" not in doc or not (doc["parent_rev"] is None or json_int(doc["parent_rev"])):
        raise bad_request("'parent_rev' is required: the revision edited, or null for a new file")
    if not isinstance(blocks, list):
        raise bad_request("'blocks' (a list of {hash, size}) is required")
    listed: list[tuple[bytes, int]] = []
    for item in blocks:
        if not isinstance(item, dict) or not json_int(item.get("size")) or item["size"] <= 0:
            raise bad_request("each block is {hash, size} with a positive size")
        listed.append((_hash(item.get("hash"), "each block's hash"), int(item["size"])))
    mtime = optional_mtime(doc.get("mtime"), "mtime")
    req.check_unlocked(path, parent=None)
    vol = req.volume
    try:
        entry, created = vol.block_sync.commit(
            path, listed, size=size, parent_rev=doc["parent_rev"], mtime=mtime, device=req.device()
        )
    except e.PreconditionFailed as exc:
        raise stale_parent(req, path, str(exc)) from None
    return Response.json(201 if created else 200, entry_json(entry))


def stale_parent(req: Request, path: str, detail: str) -> Problem:
    """409 stale-parent: the file is not at the revision the client acted on; `current_rev` says
    which it is (null: it is gone), so the client can fetch it and resolve the conflict."""
    try:
        current: Any = req.volume.stat(path).version_id
    except e.NotFound:
        current = None
    return Problem(409, "stale-parent", "The file changed", detail, current_rev=current)


def manifest(req: Request) -> Response:
    entry, blocks = req.volume.block_sync.manifest(req.param("path"), req.int_param("rev", minimum=1))
    return Response.json(
        200,
        {
            **entry_json(entry),
            "blocks": [{"hash": b.sha256.hex(), "size": b.size, "offset": b.offset} for b in blocks],
        },
    )
