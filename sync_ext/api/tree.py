"""The tree: ``/files/list_folder``, ``/files/create_folder``, ``/files/move``.

A listing is paged by path, not by offset: ``after`` is the last path of the
previous page (``next_after``), so a page costs one indexed range query however
deep into the folder it is, and concurrent changes never shift entries between
pages. Each page carries a change-feed cursor read before its query; a client
keeps the first page's and replays ``/changes/list`` from it once the listing
is done, which covers whatever changed while it paged.

A move or delete with ``rev`` is conditional, like a commit's ``parent_rev``:
the storage checks it in the transaction that would act, and a file edited
meanwhile answers 409 ``stale-parent`` with ``current_rev``.
"""

from __future__ import annotations

from storage import errors as e
from sync_ext.api.blocks import stale_parent
from sync_ext.api.changes import Cursor
from sync_ext.api.files import entry_json
from sync_ext.api.routing import Request, Response, optional_mtime
from webcommon.numbers import json_int
from webcommon.problems import bad_request

DEFAULT_PAGE, MAX_PAGE = 2000, 10_000


def optional_rev(raw: object) -> int | None:
    """The optional ``rev`` of a conditional request: a revision id, or absent (or null)."""
    if raw is None:
        return None
    if not json_int(raw) or raw <= 0:
        raise bad_request("'rev', when given, must be a revision id (a positive integer)")
    return raw


def list_folder(req: Request) -> Response:
    recursive = req.query.get("recursive", "false")
    if recursive not in ("true", "false"):
        raise bad_request("recursive must be true or false")
    limit = req.int_param("limit", default=DEFAULT_PAGE, minimum=1)
    assert limit is not None
    after = req.query.get("after") or None
    page = req.volume.walk_page(
        req.query.get("path", ""), after=after, limit=min(limit, MAX_PAGE), recursive=recursive == "true"
    )
    entries = [entry_json(entry) for entry in page.entries]
    return Response.json(
        200,
        {
            "entries": entries,
            "cursor": Cursor(req.volume.account.id, page.position).encode(),
            "has_more": page.has_more,
            "next_after": entries[-1]["path"] if page.has_more else None,
        },
    )


def create_folder(req: Request) -> Response:
    doc = req.json()
    path = doc.get("path")
    if not isinstance(path, str) or not path:
        raise bad_request("'path' (a string) is required")
    req.check_unlocked(path, parent=True)
    entry = req.volume.mkdir(path, mtime=optional_mtime(doc.get("mtime"), "mtime"))
    return Response.json(201, entry_json(entry))


def move(req: Request) -> Response:
    doc = req.json()
    src, dst = doc.get("from_path"), doc.get("to_path")
    if not isinstance(src, str) or not src or not isinstance(dst, str) or not dst:
        raise bad_request("'from_path' and 'to_path' (strings) are required")
    rev = optional_rev(doc.get("rev"))
    req.check_unlocked(src, members=True, parent=True)
    req.check_unlocked(dst, parent=True)
    try:
        entry = req.volume.move(src, dst, overwrite=False, if_rev=rev)
    except e.PreconditionFailed as exc:
        raise stale_parent(req, src, str(exc)) from None
    return Response.json(200, entry_json(entry))
