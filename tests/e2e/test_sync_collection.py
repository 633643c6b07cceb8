"""The sync-collection REPORT (RFC 6578) over real HTTP: an initial sync, then an incremental one."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import quote

import httpx

from tests.e2e.harness import DavServer

D = "{DAV:}"


def report(c: httpx.Client, path: str, token: str) -> tuple[dict[str, str | None], set[str], str]:
    """(changed href -> getetag, removed hrefs, new token) of a sync-level infinite REPORT."""
    body = (
        '<?xml version="1.0" encoding="utf-8"?><D:sync-collection xmlns:D="DAV:">'
        f"<D:sync-token>{token}</D:sync-token><D:sync-level>infinite</D:sync-level>"
        "<D:prop><D:getetag/></D:prop></D:sync-collection>"
    )
    r = c.request("REPORT", path, headers={"Depth": "0", "Content-Type": "application/xml"}, content=body)
    assert r.status_code == 207, r.text
    root = ET.fromstring(r.content)
    changed: dict[str, str | None] = {}
    removed: set[str] = set()
    for resp in root.findall(f"{D}response"):
        href = resp.findtext(f"{D}href") or ""
        if resp.findtext(f"{D}status") == "HTTP/1.1 404 Not Found":
            removed.add(href)
        else:
            changed[href] = resp.findtext(f"{D}propstat/{D}prop/{D}getetag")
    return changed, removed, root.findtext(f"{D}sync-token") or ""


def test_initial_then_incremental_sync(c: httpx.Client, base: str, dav_server: DavServer) -> None:
    odd = quote("ünï b.txt")
    assert c.put(f"{base}/a.txt", content=b"a").status_code == 201
    assert c.request("MKCOL", f"{base}/d").status_code == 201
    assert c.put(f"{base}/d/{odd}", content=b"odd").status_code == 201
    changed, removed, token = report(c, f"{base}/", "")
    assert set(changed) == {f"{base}/a.txt", f"{base}/d/", f"{base}/d/{odd}"} and not removed
    assert changed[f"{base}/a.txt"] == c.get(f"{base}/a.txt").headers["ETag"]

    assert c.put(f"{base}/a.txt", content=b"a, again").status_code == 204
    assert c.delete(f"{base}/d/{odd}").status_code == 204
    assert c.request("MOVE", f"{base}/d/", headers={"Destination": f"{base}/e/"}).status_code == 201
    changed, removed, second = report(c, f"{base}/", token)
    assert (set(changed), removed) == ({f"{base}/a.txt", f"{base}/e/"}, {f"{base}/d/"})
    assert changed[f"{base}/a.txt"] == c.get(f"{base}/a.txt").headers["ETag"]
    assert report(c, f"{base}/", second)[:2] == ({}, set())

    with dav_server.client("bob") as bob:
        r = bob.request(
            "REPORT",
            "/dav/",
            content=f'<D:sync-collection xmlns:D="DAV:"><D:sync-token>{second}'
            "</D:sync-token><D:sync-level>1</D:sync-level><D:prop/></D:sync-collection>",
        )
        assert r.status_code == 403 and b"valid-sync-token" in r.content
