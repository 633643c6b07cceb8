"""Request sequences real file managers send, replayed over HTTP (no such clients run here)."""

from __future__ import annotations

import os

import httpx

LOCKINFO = (
    '<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
    "</D:lockscope><D:locktype><D:write/></D:locktype><D:owner><D:href>WORKGROUP\\user</D:href></D:owner>"
    "</D:lockinfo>"
)
WIN32_PROPS = (
    '<?xml version="1.0" encoding="utf-8" ?><D:propertyupdate xmlns:D="DAV:" '
    'xmlns:Z="urn:schemas-microsoft-com:"><D:set><D:prop>'
    "<Z:Win32CreationTime>Wed, 01 Jan 2020 10:00:00 GMT</Z:Win32CreationTime>"
    "<Z:Win32LastAccessTime>Thu, 02 Jan 2020 10:00:00 GMT</Z:Win32LastAccessTime>"
    "<Z:Win32LastModifiedTime>Fri, 03 Jan 2020 10:00:00 GMT</Z:Win32LastModifiedTime>"
    "<Z:Win32FileAttributes>00000020</Z:Win32FileAttributes>"
    "</D:prop></D:set></D:propertyupdate>"
)


def test_windows_explorer_copy(c: httpx.Client, base: str) -> None:
    """Mini-Redirector: PUT 0 bytes, LOCK, PUT content with the token, PROPPATCH Win32 times, UNLOCK."""
    data = os.urandom(300_000)
    url = f"{base}/report.docx"
    assert c.put(url, content=b"").status_code == 201
    r = c.request("LOCK", url, content=LOCKINFO, headers={"Timeout": "Second-3600", "Depth": "0"})
    assert r.status_code == 200
    token = r.headers["Lock-Token"]
    if_header = {"If": f"({token})"}
    assert c.put(url, content=data, headers=if_header).status_code == 204
    r = c.request("PROPPATCH", url, content=WIN32_PROPS, headers=if_header)
    assert r.status_code == 207
    assert "200 OK" in r.text and "424" not in r.text
    # Windows sends the token without angle brackets on UNLOCK.
    assert c.request("UNLOCK", url, headers={"Lock-Token": token.strip("<>")}).status_code == 204
    assert c.get(url).content == data
    listing = c.request("PROPFIND", url, headers={"Depth": "0"}).text
    assert "Fri, 03 Jan 2020 10:00:00 GMT" in listing


def test_gvfs_put_empty_then_content(c: httpx.Client, base: str) -> None:
    url = f"{base}/notes.txt"
    assert c.put(url, content=b"").status_code == 201
    assert c.put(url, content=b"the content").status_code == 204
    assert c.get(url).content == b"the content"


def test_davfs2_lock_refresh(c: httpx.Client, base: str) -> None:
    """davfs2 locks what it opens and refreshes the lock (LOCK with If, no body) every minute."""
    url = f"{base}/doc.odt"
    c.put(url, content=b"v1")
    r = c.request("LOCK", url, content=LOCKINFO, headers={"Timeout": "Second-60"})
    token = r.headers["Lock-Token"]
    refreshed = c.request("LOCK", url, headers={"If": f"({token})", "Timeout": "Second-120"})
    assert refreshed.status_code == 200
    assert "Second-1" in refreshed.text  # the new timeout (Second-119 or Second-120)
    assert c.put(url, content=b"v2").status_code == 423
    assert c.put(url, content=b"v2", headers={"If": f"({token})"}).status_code == 204
    assert c.request("UNLOCK", url, headers={"Lock-Token": token}).status_code == 204


def test_finder_probes_are_cheap_404s(c: httpx.Client, base: str) -> None:
    """Finder asks for metadata files that never exist; each is a plain 404, not an error."""
    for name in ("._report.docx", ".DS_Store", ".Spotlight-V100", ".metadata_never_index", ".hidden"):
        r = c.request("PROPFIND", f"{base}/{name}", headers={"Depth": "0"})
        assert r.status_code == 404, name
