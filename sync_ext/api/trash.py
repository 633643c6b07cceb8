"""``/trash``: what was deleted (through WebDAV or the API), restored or purged; and ``/files/delete``
(conditional on a file's revision with ``rev``, as ``/files/move`` is: :mod:`sync_ext.api.tree`)."""

from __future__ import annotations

from typing import Any

from storage import errors as e
from storage.model import TrashItem
from sync_ext.api.blocks import stale_parent
from sync_ext.api.files import entry_json
from sync_ext.api.routing import Request, Response
from sync_ext.api.tree import optional_rev
from webcommon.numbers import digits, json_int
from webcommon.problems import bad_request

MAX_PAGE = 1000


def item_json(item: TrashItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "path": "/" + item.path,
        "is_dir": item.is_dir,
        "size": item.size,
        "deleted_at": item.deleted_at,
    }


def delete(req: Request) -> Response:
    doc = req.json()
    path = doc.get("path")
    if not isinstance(path, str) or not path:
        raise bad_request("'path' (a string) is required")
    rev = optional_rev(doc.get("rev"))
    req.check_unlocked(path, members=True, parent=True)
    try:
        item_id = req.volume.delete(path, if_rev=rev)
    except e.PreconditionFailed as exc:
        raise stale_parent(req, path, str(exc)) from None
    return Response.json(
        200, {"trash_id": item_id, **entry_json(req.volume.lookup(path, include_deleted=True))}
    )


def listing(req: Request) -> Response:
    limit = req.int_param("limit", default=MAX_PAGE, minimum=1)
    assert limit is not None
    items = req.volume.trash(limit=min(limit, MAX_PAGE))
    return Response.json(200, {"items": [item_json(i) for i in items]})


def restore(req: Request) -> Response:
    doc = req.json()
    item_id, path = doc.get("id"), doc.get("path")
    if not json_int(item_id):
        raise bad_request("'id' (a trash item id) is required")
    if path is not None and (not isinstance(path, str) or not path):
        raise bad_request("'path', when given, must be a non-empty string")
    req.check_unlocked(path if path is not None else req.volume.trash_item_path(item_id), parent=True)
    return Response.json(200, entry_json(req.volume.restore_from_trash(item_id, path)))


def purge(req: Request) -> Response:
    item_id = digits(req.path_params["item_id"])
    if item_id is None:
        raise bad_request("a trash item id is a number")
    req.volume.purge_trash_item(item_id)
    return Response(204)
