"""The fast PROPFIND gives the answer WsgiDAV's own handler gives, property by property."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import httpx
import pytest

from davserver.app import AppSettings, create_app
from storage.engine import Engine
from tests.storage.conftest import EngineFactory

D = "{DAV:}"
LOCKINFO = (
    '<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
    "<D:locktype><D:write/></D:locktype><D:owner><D:href>mailto:a@example.com</D:href></D:owner></D:lockinfo>"
)
PATCH = (
    '<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:z="urn:z"><D:set><D:prop>'
    "<z:color>blue &amp; green</z:color><z:nested><z:a x='1'>t</z:a></z:nested></D:prop></D:set>"
    "</D:propertyupdate>"
)


def _body(inner: str) -> str:
    return f'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:z="urn:z">{inner}</D:propfind>'


BODIES = {
    "empty": None,
    "allprop": _body("<D:allprop/>"),
    "allprop-include": _body("<D:allprop/><D:include><D:quota-used-bytes/></D:include>"),
    "named": _body(
        "<D:prop><D:getcontentlength/><D:getetag/><D:resourcetype/><D:displayname/><z:color/><z:nested/>"
        "<z:missing/><D:quota-available-bytes/><D:quota-used-bytes/><D:lockdiscovery/><D:getlastmodified/>"
        "<D:creationdate/><D:getcontenttype/><D:supportedlock/></D:prop>"
    ),
    "propname": _body("<D:propname/>"),
}


@pytest.fixture
def clients(make_engine: EngineFactory, database_url: str) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    engine: Engine = make_engine(database_url)
    engine.accounts.create("alice", "alice-password", 10 << 20)
    vol = engine.volume("alice")
    vol.mkdir("folder")
    vol.mkdir("folder/sub")
    vol.write("folder/a & b <c>.txt", io.BytesIO(b"hello"))
    vol.write("folder/ünï😀.bin", io.BytesIO(b"\x00" * 1000))
    vol.write("folder/plain-prop", io.BytesIO(b""))
    vol.set_properties("folder/plain-prop", {"{urn:z}color": "set as text <by> another face"})
    auth = ("alice", "alice-password")
    fast = httpx.Client(
        transport=httpx.WSGITransport(app=create_app(engine, AppSettings())),
        base_url="http://127.0.0.1",
        auth=auth,
    )
    slow_app = create_app(engine, AppSettings(fast_propfind=False))
    slow = httpx.Client(transport=httpx.WSGITransport(app=slow_app), base_url="http://127.0.0.1", auth=auth)
    assert (
        fast.request("PROPPATCH", "/dav/folder/a%20%26%20b%20%3Cc%3E.txt", content=PATCH).status_code == 207
    )
    assert fast.request("PROPPATCH", "/dav/folder/sub", content=PATCH).status_code == 207
    r = fast.request(
        "LOCK", "/dav/folder/sub", content=LOCKINFO, headers={"Timeout": "Second-3600", "Depth": "0"}
    )
    assert r.status_code == 200
    yield fast, slow
    fast.close()
    slow.close()


def canonical(xml: bytes) -> dict[str, dict[str, dict[str, str]]]:
    """href -> status -> property -> canonical text of its value."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    for resp in ET.fromstring(xml).iter(f"{D}response"):
        href = resp.findtext(f"{D}href") or ""
        statuses: dict[str, dict[str, str]] = {}
        for ps in resp.iter(f"{D}propstat"):
            status = (ps.findtext(f"{D}status") or "").split(" ")[1]
            prop = ps.find(f"{D}prop")
            assert prop is not None
            for el in prop:
                value = ET.tostring(el, encoding="unicode")
                value = re.sub(r"xmlns:\w+=\"[^\"]*\"", "", value)  # prefixes differ, names must not
                value = re.sub(r"<(/?)\w+:", r"<\1", value)
                value = re.sub(r"Second-\d+", "Second-N", value)
                statuses.setdefault(status, {})[el.tag] = re.sub(r"\s+", " ", value)
        out[href] = statuses
    return out


@pytest.mark.parametrize("body", list(BODIES), ids=list(BODIES))
@pytest.mark.parametrize(
    "path", ["/dav/", "/dav/folder/", "/dav/folder/sub/", "/dav/folder/a%20%26%20b%20%3Cc%3E.txt"]
)
@pytest.mark.parametrize("depth", ["0", "1"])
def test_fast_propfind_matches_wsgidav(
    clients: tuple[httpx.Client, httpx.Client], body: str, path: str, depth: str
) -> None:
    fast, slow = clients
    content = BODIES[body]
    a = fast.request("PROPFIND", path, headers={"Depth": depth}, content=content)
    b = slow.request("PROPFIND", path, headers={"Depth": depth}, content=content)
    assert a.status_code == b.status_code == 207, (a.text, b.text)
    ca, cb = canonical(a.content), canonical(b.content)
    if body == "propname":
        # RFC 4918 9.1: every resource names its properties (WsgiDAV 4 alone names none).
        assert ca and all(f"{D}resourcetype" in statuses.get("200", {}) for statuses in ca.values()), ca
    if body == "allprop-include":
        # WsgiDAV ignores <include>; RFC 4918 14.8 adds the named properties to allprop.
        quota = _body("<D:prop><D:quota-used-bytes/></D:prop>")
        extra = slow.request("PROPFIND", path, headers={"Depth": depth}, content=quota)
        for href, statuses in canonical(extra.content).items():
            for status, props in statuses.items():
                cb.setdefault(href, {}).setdefault(status, {}).update(props)
    for href in sorted(set(ca) | set(cb)):
        for status in sorted(set(ca.get(href, {})) | set(cb.get(href, {}))):
            pa, pb = ca.get(href, {}).get(status, {}), cb.get(href, {}).get(status, {})
            diff = {k: (pa.get(k), pb.get(k)) for k in set(pa) | set(pb) if pa.get(k) != pb.get(k)}
            assert not diff, (href, status, diff)


def test_missing_resource_and_bad_bodies(clients: tuple[httpx.Client, httpx.Client]) -> None:
    fast, slow = clients
    for client in (fast, slow):
        assert client.request("PROPFIND", "/dav/nope", headers={"Depth": "0"}).status_code == 404
        r = client.request("PROPFIND", "/dav/", headers={"Depth": "1"}, content=b"<x/>")
        assert r.status_code == 400
        broken = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop>'
        r = client.request("PROPFIND", "/dav/", headers={"Depth": "1"}, content=broken)
        assert r.status_code == 400, "malformed XML is refused, not read as an empty body (allprop)"
