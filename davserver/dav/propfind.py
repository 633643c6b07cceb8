"""PROPFIND Depth 0/1 answered from one listing, with the XML written as text.

WsgiDAV builds the multistatus element by element and serialises the tree; on
a folder of 2000 entries that dominates the request. Here the common live
properties are formatted directly; dead properties are stored as serialised
XML elements (self-contained, namespaces declared) and are copied in as they
are; anything else (lock discovery of a locked resource, quota, unknown
names) goes through the resource's own ``get_property_value``, so the answer
is the one WsgiDAV would give. ``tests/davserver/test_propfind.py`` compares
both answers property by property.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from wsgidav import util, xml_tools
from wsgidav.dav_error import HTTP_BAD_REQUEST, HTTP_NOT_FOUND, DAVError, get_http_status_string

from davserver.dav.resources import XML_DECL, FileResource, FolderResource
from davserver.wsgi import http_date
from webcommon.numbers import digits

StartResponse = Callable[..., Any]
Resource = FileResource | FolderResource

D = "{DAV:}"
_ALLPROP_FILE = ("resourcetype", "creationdate", "getcontentlength", "getcontenttype", "getlastmodified")
_SUPPORTED_LOCK = (
    "<D:supportedlock><D:lockentry><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/>"
    "</D:locktype></D:lockentry><D:lockentry><D:lockscope><D:shared/></D:lockscope><D:locktype>"
    "<D:write/></D:locktype></D:lockentry></D:supportedlock>"
)


class Fallback(Exception):
    """The request needs WsgiDAV's general handler."""


def read_body(environ: dict[str, Any]) -> bytes:
    """The (already size-capped) request body, put back so WsgiDAV can read it again."""
    length = digits(environ.get("CONTENT_LENGTH", "")) or 0
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def parse_request(environ: dict[str, Any]) -> tuple[str, list[str]]:
    """``("allprop", included names)``, ``("named", names)`` or ``("propname", [])``; raises
    :class:`Fallback` for anything else."""
    if not read_body(environ):
        return "allprop", []
    root = util.parse_xml_body(environ, allow_empty=True)
    environ["wsgi.input"].seek(0)
    if root is None:
        return "allprop", []
    if root.tag != f"{D}propfind":
        raise DAVError(HTTP_BAD_REQUEST, "expected a DAV:propfind body")
    modes = [child.tag for child in root]
    if modes and modes[0] == f"{D}allprop" and set(modes[1:]) <= {f"{D}include"}:
        # RFC 4918 14.8: <include> adds properties to allprop.
        return "allprop", [el.tag for inc in root[1:] for el in inc]
    if modes == [f"{D}prop"]:
        return "named", [el.tag for el in root[0]]
    if modes == [f"{D}propname"]:
        return "propname", []
    raise Fallback


#: RFC 4918's ``<propname/>`` as WsgiDAV 4 spells it (it looks for ``{DAV:}name`` and
#: otherwise answers a propname request with no properties at all).
_WSGIDAV_PROPNAME = b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:name/></D:propfind>'


def spell_for_wsgidav(environ: dict[str, Any]) -> None:
    """Before WsgiDAV's own PROPFIND handler: turn a propname body into the one it understands."""
    try:
        mode, _ = parse_request(environ)
    except (Fallback, DAVError):
        environ["wsgi.input"].seek(0)  # the body read back in memory, for WsgiDAV to parse again
        return  # and answer (or refuse) itself
    if mode == "propname":
        environ["wsgi.input"] = io.BytesIO(_WSGIDAV_PROPNAME)
        environ["CONTENT_LENGTH"] = str(len(_WSGIDAV_PROPNAME))


def respond(
    provider: Any, environ: dict[str, Any], start_response: StartResponse, depth: str
) -> Iterable[bytes]:
    """Answer a PROPFIND with Depth 0 or 1; raises :class:`Fallback` if it cannot."""
    mode, names = parse_request(environ)
    res = provider.get_resource_inst(environ["PATH_INFO"], environ)
    if res is None:
        raise DAVError(HTTP_NOT_FOUND)
    members: list[Resource] = [res]
    if depth == "1" and res.is_collection:
        members += res.get_member_list()
    out = ['<?xml version="1.0" encoding="utf-8" ?>\n<D:multistatus xmlns:D="DAV:">']
    lock_manager = provider.lock_manager
    for member in members:
        out.append(_response(member, mode, names, lock_manager))
    out.append("</D:multistatus>")
    body = "".join(out).encode("utf-8")
    start_response(
        "207 Multi-Status",
        [("Content-Type", "application/xml; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


def named_response(res: Resource, names: list[str], lock_manager: Any) -> str:
    """One DAV:response with the named properties, as PROPFIND writes it (the sync REPORT's too)."""
    return _response(res, "named", names, lock_manager)


def _response(res: Resource, mode: str, names: list[str], lock_manager: Any) -> str:
    entry = res.entry
    if entry is None:
        raise Fallback
    if mode == "propname":
        empty = "".join(_element(name, None) for name in res.get_property_names(is_allprop=False))
        return (
            f"<D:response><D:href>{escape(res.get_href())}</D:href><D:propstat><D:prop>{empty}</D:prop>"
            "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
        )
    locked = bool(lock_manager and lock_manager.get_url_lock_list(res.get_ref_url()))
    dead = res._dead_properties()
    if mode == "allprop" and not names and not locked and lock_manager is not None:
        return _allprop_response(res, dead)
    found: list[str] = []
    missing: dict[int, list[str]] = {}
    if mode == "allprop":
        wanted = _allprop_names(res, dead)
        wanted += [n for n in names if n not in wanted]
    else:
        wanted = names
    for name in wanted:
        text = _live(res, name, locked, lock_manager is not None)
        if text is None:
            stored = dead.get(name)
            if stored is not None:
                text = _dead_xml(name, stored)
        if text is None:
            try:
                text = _serialise(name, res.get_property_value(name))
            except DAVError as exc:
                missing.setdefault(exc.value, []).append(_element(name, None))
                continue
        found.append(text)
    parts = [f"<D:response><D:href>{escape(res.get_href())}</D:href>"]
    if found:
        parts.append(
            f"<D:propstat><D:prop>{''.join(found)}</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>"
        )
    for status, els in missing.items():
        parts.append(
            f"<D:propstat><D:prop>{''.join(els)}</D:prop>"
            f"<D:status>HTTP/1.1 {get_http_status_string(status)}</D:status></D:propstat>"
        )
    parts.append("</D:response>")
    return "".join(parts)


def _allprop_response(res: Resource, dead: dict[str, str]) -> str:
    """The usual case, one template: what the general path below yields for allprop."""
    entry = res.entry
    assert entry is not None
    extra = "".join(_dead_xml(name, value) for name, value in dead.items())
    head = (
        f"<D:response><D:href>{escape(res.get_href())}</D:href><D:propstat><D:prop>"
        f"<D:resourcetype>{'<D:collection/>' if res.is_collection else ''}</D:resourcetype>"
        f"<D:creationdate>{util.get_rfc3339_time(entry.created_at)}</D:creationdate>"
    )
    if res.is_collection:
        middle = ""
    else:
        middle = (
            f"<D:getcontentlength>{entry.size}</D:getcontentlength>"
            f"<D:getcontenttype>{escape(res.get_content_type())}</D:getcontenttype>"
        )
    tail = (
        f"<D:getlastmodified>{http_date(entry.mtime)}</D:getlastmodified>"
        f"<D:displayname>{escape(res.get_display_name())}</D:displayname>"
    )
    if not res.is_collection:
        etag = res.get_etag()
        tail += f"<D:getetag>{escape(quoted(etag))}</D:getetag>" if etag else ""
    return (
        f"{head}{middle}{tail}<D:lockdiscovery/>{_SUPPORTED_LOCK}{extra}</D:prop>"
        "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
    )


def quoted(etag: str) -> str:
    """RFC 4918 15.6: DAV:getetag is an entity-tag, quotes included, equal to the ETag header."""
    return f'"{etag}"'


def _allprop_names(res: Resource, dead: dict[str, str]) -> list[str]:
    names = [f"{D}resourcetype", f"{D}creationdate"]
    if not res.is_collection:
        names += [f"{D}getcontentlength", f"{D}getcontenttype"]
    names += [f"{D}getlastmodified", f"{D}displayname"]
    if not res.is_collection:
        names.append(f"{D}getetag")
    names += [f"{D}lockdiscovery", f"{D}supportedlock"]
    return names + list(dead)


def _live(res: Resource, name: str, locked: bool, locking: bool) -> str | None:
    """The common live properties, formatted as WsgiDAV would; None: not handled here."""
    if not name.startswith(D):
        return None
    local = name[len(D) :]
    entry = res.entry
    assert entry is not None
    if local == "resourcetype":
        return (
            "<D:resourcetype><D:collection/></D:resourcetype>" if res.is_collection else "<D:resourcetype/>"
        )
    if local == "creationdate":
        return f"<D:creationdate>{util.get_rfc3339_time(entry.created_at)}</D:creationdate>"
    if local == "getlastmodified":
        return f"<D:getlastmodified>{http_date(entry.mtime)}</D:getlastmodified>"
    if local == "displayname":
        return f"<D:displayname>{escape(res.get_display_name())}</D:displayname>"
    if local == "lockdiscovery" and locking and not locked:
        return "<D:lockdiscovery/>"
    if local == "supportedlock" and locking:
        return _SUPPORTED_LOCK
    if res.is_collection:
        return None
    if local == "getcontentlength":
        return f"<D:getcontentlength>{entry.size}</D:getcontentlength>"
    if local == "getcontenttype":
        return f"<D:getcontenttype>{escape(res.get_content_type())}</D:getcontenttype>"
    if local == "getetag":
        etag = res.get_etag()
        return None if etag is None else f"<D:getetag>{escape(quoted(etag))}</D:getetag>"
    return None


def _dead_xml(name: str, stored: str) -> str:
    """A dead property as stored by PROPPATCH (a self-contained element), or text set by another face."""
    return stored if stored.startswith("<") else _element(name, escape(stored))


def _serialise(name: str, value: Any) -> str:
    if value is None:
        return _element(name, None)
    if isinstance(value, str | int | float):
        return _element(name, escape(str(value)))
    text = str(util.to_str(xml_tools.xml_to_bytes(value, pretty=False)))
    return XML_DECL.sub("", text, count=1)


def _element(name: str, inner: str | None) -> str:
    """``{ns}local`` as an element with its namespace declared; ``inner`` already escaped."""
    ns, _, local = name[1:].partition("}") if name.startswith("{") else ("", "", name)
    if ns == "DAV:":
        tag, decl = f"D:{local}", ""
    elif ns:
        tag, decl = f"x:{local}", f" xmlns:x={quoteattr(ns)}"
    else:
        tag, decl = local, ""
    return f"<{tag}{decl}/>" if inner is None else f"<{tag}{decl}>{inner}</{tag}>"
