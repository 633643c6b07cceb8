"""The DAV:sync-collection REPORT (RFC 6578) on every collection under /dav/.

WsgiDAV dispatches only the methods it implements (REPORT gets a 405 before the
provider is asked), so this is a middleware placed just before WsgiDAV's request
resolver: it answers REPORT itself and passes everything else on, adding REPORT
to the ``Allow`` header of OPTIONS on collections.

The answer is built from the change journal (:mod:`davserver.dav.sync_members`);
tokens are described in :mod:`davserver.dav.sync_token`. Each member's
DAV:response is written by the fast PROPFIND's own code
(:func:`davserver.dav.propfind.named_response`), so hrefs and property values are
exactly PROPFIND's. Choices where the RFCs leave room:

* ``Depth`` other than 0 is refused with 400 (RFC 6578 section 3.2); a missing or
  unknown DAV:sync-level too (section 3.3 makes it mandatory; the Depth fallback of
  appendix A is not offered). "infinity" is accepted as a spelling of "infinite".
* A REPORT on a file, or of another report than sync-collection, fails the
  DAV:supported-report precondition of RFC 3253 section 3.6 with 403 (RFC 3253
  section 1.6: 403 when repeating cannot help; RFC 6578 section 3.2: the
  request-URI must identify a collection).
* Without DAV:limit an answer holds at most :data:`MAX_RESULTS` members; more are
  truncated as section 3.6 describes (507 for the request-URI, a resumable token),
  so a REPORT, like a bounded PROPFIND, holds a thread for a bounded time.
* An empty DAV:prop still gives changed members one (empty) 200 propstat: section
  3.2 requires at least one.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from wsgidav import util
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_FORBIDDEN,
    HTTP_NOT_FOUND,
    HTTP_PRECONDITION_FAILED,
    DAVError,
)
from wsgidav.mw.base_mw import BaseMiddleware

from davserver.dav import sync_if
from davserver.dav.errors import dav_errors
from davserver.dav.propfind import named_response
from davserver.dav.provider import VolumeProvider
from davserver.dav.resources import FileResource, FolderResource, member_resource, storage_path
from davserver.dav.sync_members import Member, Outcome, collect
from davserver.dav.sync_token import SYNC_COLLECTION, InvalidToken, decode
from storage import errors as e
from storage import paths
from storage.volume import Volume

StartResponse = Callable[..., Any]

#: Members per answer when the client sets no DAV:limit (and the most it may ask for).
MAX_RESULTS = 10_000
D = "{DAV:}"
_DIGITS = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True, slots=True)
class SyncRequest:
    #: The client's DAV:sync-token text; "" for an initial sync.
    token: str
    infinite: bool
    props: list[str]
    limit: int


class SyncCollectionReport(BaseMiddleware):
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        provider = environ.get("wsgidav.provider")
        method = environ["REQUEST_METHOD"]
        if not isinstance(provider, VolumeProvider):
            return self.next_app(environ, start_response)
        if method == "REPORT":
            return report(provider, environ, start_response)
        header = environ.get("HTTP_IF", "")
        if header and sync_if.mentions_sync_token(header):
            verdict = sync_if.evaluate(header, _is_current(provider, environ))
            if verdict is False:
                raise DAVError(HTTP_PRECONDITION_FAILED, "the If header's sync-token is not current")
            if verdict is True:
                del environ["HTTP_IF"]
            elif verdict is not None:
                environ["HTTP_IF"] = verdict
        if method == "OPTIONS":
            res = provider.get_resource_inst(environ["PATH_INFO"], environ)
            if res is not None and res.is_collection:
                return self.next_app(environ, _AllowReport(start_response))
        return self.next_app(environ, start_response)


def _is_current(provider: VolumeProvider, environ: dict[str, Any]) -> Callable[[int, int], bool]:
    """Whether (account, position) is the requesting account's current sync-token position."""

    def check(account_id: int, position: int) -> bool:
        vol = provider.volume(environ)
        with dav_errors():
            return account_id == vol.account.id and position == vol.change_seq()

    return check


def report(provider: VolumeProvider, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    res = provider.get_resource_inst(environ["PATH_INFO"], environ)
    if res is None:
        raise DAVError(HTTP_NOT_FOUND)
    root = util.parse_xml_body(environ)  # defusedxml: entity declarations are a 400
    if root.tag != SYNC_COLLECTION or not res.is_collection:
        # RFC 3253 3.6 precondition DAV:supported-report, 403 as repeating cannot help (RFC 3253
        # 1.6); RFC 6578 3.2: the request-URI of a sync-collection must identify a collection.
        raise DAVError(
            HTTP_FORBIDDEN,
            "only DAV:sync-collection, on collections, is supported",
            err_condition=f"{D}supported-report",
        )
    if environ.get("HTTP_DEPTH", "0").strip() != "0":  # RFC 6578 3.2; absent means 0 (RFC 3253 3.6)
        raise DAVError(HTTP_BAD_REQUEST, "sync-collection is defined for Depth: 0 only")
    request = parse_sync_collection(root)
    vol = provider.volume(environ)
    try:
        token = decode(request.token) if request.token else None
        with dav_errors():
            outcome = collect(
                vol, storage_path(res.path), infinite=request.infinite, token=token, limit=request.limit
            )
    except InvalidToken as exc:
        raise DAVError(HTTP_FORBIDDEN, str(exc), err_condition=f"{D}valid-sync-token") from exc
    with provider.lock_snapshot(environ):
        body = _multistatus(provider, environ, vol, res, outcome, request.props)
    start_response(
        "207 Multi-Status",
        [("Content-Type", "application/xml; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


def parse_sync_collection(root: Any) -> SyncRequest:
    """RFC 6578 section 6.1: one sync-token, one sync-level, one prop, at most one limit."""
    token, level, prop = (_one(root, name) for name in ("sync-token", "sync-level", "prop"))
    limits = root.findall(f"{D}limit")
    if token is None or level is None or prop is None or len(limits) > 1:
        raise DAVError(HTTP_BAD_REQUEST, "sync-collection needs one sync-token, sync-level and prop")
    level_text = (level.text or "").strip()
    if level_text not in ("1", "infinite", "infinity"):
        raise DAVError(HTTP_BAD_REQUEST, 'DAV:sync-level must be "1" or "infinite"')
    limit = MAX_RESULTS
    if limits:
        nresults = limits[0].findall(f"{D}nresults")
        text = (nresults[0].text or "").strip() if len(nresults) == 1 else ""
        if not _DIGITS.fullmatch(text) or int(text) < 1:
            raise DAVError(HTTP_BAD_REQUEST, "DAV:limit needs one DAV:nresults, a positive number")
        limit = min(limit, int(text))
    return SyncRequest((token.text or "").strip(), level_text != "1", [el.tag for el in prop], limit)


def _one(root: Any, name: str) -> Any:
    found = root.findall(f"{D}{name}")
    return found[0] if len(found) == 1 else None


def _multistatus(
    provider: VolumeProvider,
    environ: dict[str, Any],
    vol: Volume,
    collection: FileResource | FolderResource,
    outcome: Outcome,
    props: list[str],
) -> bytes:
    dead = _dead_properties(vol, outcome.members, props)
    out = ['<?xml version="1.0" encoding="utf-8" ?>\n<D:multistatus xmlns:D="DAV:">']
    for member in outcome.members:
        if member.entry is None:
            out.append(_removed(environ, vol, member))
            continue
        res = member_resource("/" + member.path, environ, vol, member.entry, dead=dead(member))
        if props:
            out.append(named_response(res, props, provider.lock_manager))
        else:
            out.append(
                f"<D:response><D:href>{escape(res.get_href())}</D:href><D:propstat><D:prop/>"
                "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
            )
    if outcome.truncated:
        out.append(
            f"<D:response><D:href>{escape(collection.get_href())}</D:href>"
            "<D:status>HTTP/1.1 507 Insufficient Storage</D:status>"
            "<D:error><D:number-of-matches-within-limits/></D:error></D:response>"
        )
    out.append(f"<D:sync-token>{escape(outcome.token.encode())}</D:sync-token></D:multistatus>")
    return "".join(out).encode("utf-8")


def _removed(environ: dict[str, Any], vol: Volume, member: Member) -> str:
    # A resource object for the gone path, only for its href: encoded as PROPFIND
    # encoded it while the member existed (a folder's with its trailing slash).
    gone = FileResource("/" + member.path + ("/" if member.is_dir else ""), environ, vol, None)
    return (
        f"<D:response><D:href>{escape(gone.get_href())}</D:href>"
        "<D:status>HTTP/1.1 404 Not Found</D:status></D:response>"
    )


def _dead_properties(
    vol: Volume, members: list[Member], props: list[str]
) -> Callable[[Member], dict[str, str] | None]:
    """Dead properties of the answer's members: one query per folder, none if only DAV: ones are asked.

    Dead properties never have DAV: names (WsgiDAV refuses to store those), so
    when only DAV: properties are asked for, each member gets an empty set.
    """
    if all(name.startswith(D) for name in props):
        return lambda member: {}
    by_folder: dict[str, dict[int, dict[str, str]]] = {}
    for folder in {paths.parent_of(m.path) for m in members if m.entry is not None}:
        # A folder gone since the listing: its members look their own properties up.
        with contextlib.suppress(e.StorageError):
            by_folder[folder] = vol.child_properties(folder)

    def lookup(member: Member) -> dict[str, str] | None:
        assert member.entry is not None
        found = by_folder.get(paths.parent_of(member.path))
        return None if found is None else found.get(member.entry.node_id, {})

    return lookup


class _AllowReport:
    """Adds REPORT to the Allow header WsgiDAV writes for a collection's OPTIONS."""

    def __init__(self, start_response: StartResponse) -> None:
        self._start_response = start_response

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        headers = [(k, f"{v}, REPORT") if k.lower() == "allow" else (k, v) for k, v in headers]
        return self._start_response(status, headers, exc_info)
