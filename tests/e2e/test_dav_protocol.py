"""WebDAV behaviour over real HTTP: what file managers and sync tools rely on."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import os
import socket
import threading
import unicodedata
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest

from tests.e2e.conftest import CAROL_QUOTA, PASSWORDS
from tests.e2e.harness import DavServer, member_names, propfind

D = "{DAV:}"


def responses(tree: ET.Element) -> dict[str, ET.Element]:
    return {r.findtext(f"{D}href") or "": r for r in tree.iter(f"{D}response")}


def prop(resp: ET.Element, name: str) -> str | None:
    for ps in resp.iter(f"{D}propstat"):
        if "200" in (ps.findtext(f"{D}status") or ""):
            el = ps.find(f"{D}prop/{name}")
            if el is not None:
                return el.text or ""
    return None


# --- discovery ---------------------------------------------------------------------


def test_options_advertise_class_1_2_3(c: httpx.Client) -> None:
    r = c.options("/dav/")
    assert r.status_code == 200
    assert r.headers["DAV"] == "1, 2, 3"
    assert r.headers["MS-Author-Via"] == "DAV"
    assert "LOCK" in r.headers["Allow"] and "PROPFIND" in r.headers["Allow"]


def test_root_options_answers_windows_probe_without_credentials(dav_server: DavServer) -> None:
    r = httpx.options(dav_server.url + "/")
    assert r.status_code == 200
    assert r.headers["DAV"] == "1, 2, 3"


def test_healthz_needs_no_credentials(dav_server: DavServer) -> None:
    assert httpx.get(dav_server.url + "/healthz").text == "ok\n"


# --- PUT / GET ---------------------------------------------------------------------


def test_put_get_roundtrip_with_strong_etag(c: httpx.Client, base: str) -> None:
    data = os.urandom(3 << 20) + b"tail"
    r = c.put(f"{base}/a.bin", content=data)
    assert r.status_code == 201
    etag = r.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    g = c.get(f"{base}/a.bin")
    assert g.status_code == 200
    assert g.content == data
    assert g.headers["ETag"] == etag
    assert int(g.headers["Content-Length"]) == len(data)
    r2 = c.put(f"{base}/a.bin", content=b"new")
    assert r2.status_code == 204
    assert r2.headers["ETag"] != etag
    assert c.get(f"{base}/a.bin").content == b"new"


def test_if_match_and_if_none_match(c: httpx.Client, base: str) -> None:
    etag = c.put(f"{base}/f", content=b"one").headers["ETag"]
    assert c.put(f"{base}/f", content=b"x", headers={"If-Match": '"nope"'}).status_code == 412
    assert c.put(f"{base}/f", content=b"x", headers={"If-None-Match": "*"}).status_code == 412
    assert c.get(f"{base}/f").content == b"one"
    r = c.put(f"{base}/f", content=b"two", headers={"If-Match": etag})
    assert r.status_code == 204
    assert c.get(f"{base}/f", headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
    assert c.put(f"{base}/new", content=b"n", headers={"If-None-Match": "*"}).status_code == 201


def test_put_into_missing_folder_is_409(c: httpx.Client, base: str) -> None:
    assert c.put(f"{base}/nope/f", content=b"x").status_code == 409


def test_range_requests_seek_into_blocks(c: httpx.Client, base: str) -> None:
    data = os.urandom(5 << 20)
    c.put(f"{base}/r.bin", content=data)
    for start, end in [(0, 0), (100, 199), ((1 << 20) - 5, (1 << 20) + 5), (len(data) - 10, len(data) - 1)]:
        r = c.get(f"{base}/r.bin", headers={"Range": f"bytes={start}-{end}"})
        assert r.status_code == 206
        assert r.content == data[start : end + 1]
        assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
    tail = c.get(f"{base}/r.bin", headers={"Range": "bytes=-7"})
    assert tail.status_code == 206 and tail.content == data[-7:]


def test_unsatisfiable_range_is_416(c: httpx.Client, base: str) -> None:
    c.put(f"{base}/s", content=b"short")
    assert c.get(f"{base}/s", headers={"Range": "bytes=100-200"}).status_code == 416
    assert c.get(f"{base}/s", headers={"Range": "bytes=-0"}).status_code == 416


def test_readers_never_see_a_torn_file_during_overwrites(
    c: httpx.Client, base: str, dav_server: DavServer
) -> None:
    """8 clients read while one overwrites: every read is one whole committed version."""
    versions = [bytes([i]) * (1 << 20) + os.urandom(300_000) for i in range(6)]
    digests = {hashlib.sha256(v).digest() for v in versions}
    c.put(f"{base}/hot.bin", content=versions[0])
    stop = threading.Event()
    bad: list[str] = []

    def reader() -> None:
        with dav_server.client("alice") as rc:
            while not stop.is_set():
                r = rc.get(f"{base}/hot.bin")
                if r.status_code != 200 or hashlib.sha256(r.content).digest() not in digests:
                    bad.append(f"{r.status_code} {len(r.content)}")

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for v in versions[1:] * 2:
            assert c.put(f"{base}/hot.bin", content=v).status_code == 204
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert bad == []


def test_chunked_put_with_expected_entity_length(c: httpx.Client, base: str) -> None:
    """macOS Finder streams uploads chunked and declares the size in X-Expected-Entity-Length."""
    parts = [os.urandom(100_000) for _ in range(7)]

    def body() -> Iterator[bytes]:
        yield from parts

    r = c.put(
        f"{base}/finder.bin",
        content=body(),
        headers={"X-Expected-Entity-Length": str(sum(map(len, parts)))},
    )
    assert r.status_code == 201
    assert c.get(f"{base}/finder.bin").content == b"".join(parts)


def test_large_declared_length_is_413_before_any_data(
    c: httpx.Client, base: str, dav_server: DavServer
) -> None:
    r = c.put(
        f"{base}/huge",
        content=iter([b"x" * 10]),
        headers={"X-Expected-Entity-Length": str(11 << 30)},
    )
    assert r.status_code == 413
    assert c.request("PROPFIND", f"{base}/huge", headers={"Depth": "0"}).status_code == 404
    assert dav_server.healthy()


# --- properties ----------------------------------------------------------------------


def test_propfind_depth1_lists_members_with_sizes(c: httpx.Client, base: str) -> None:
    c.request("MKCOL", f"{base}/sub")
    for i in range(5):
        c.put(f"{base}/f{i}.txt", content=b"x" * i)
    tree = responses(propfind(c, base + "/"))
    hrefs = sorted(tree)
    assert len(hrefs) == 7
    for i in range(5):
        assert prop(tree[f"{base}/f{i}.txt"], f"{D}getcontentlength") == str(i)
    sub = tree[f"{base}/sub/"]
    assert sub.find(f".//{D}resourcetype/{D}collection") is not None


def test_propfind_depth_infinity_is_refused(c: httpx.Client, base: str) -> None:
    r = c.request("PROPFIND", base, headers={"Depth": "infinity"})
    assert r.status_code == 403
    assert b"propfind-finite-depth" in r.content


def test_quota_properties(dav_server: DavServer) -> None:
    body = (
        '<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop>'
        "<d:quota-available-bytes/><d:quota-used-bytes/></d:prop></d:propfind>"
    )
    with dav_server.client("carol") as c:
        c.put("/dav/q.bin", content=b"z" * 1000)
        resp = responses(propfind(c, "/dav/", depth="0", body=body))["/dav/"]
        used = int(prop(resp, f"{D}quota-used-bytes") or -1)
        avail = int(prop(resp, f"{D}quota-available-bytes") or -1)
        assert used >= 1000
        assert used + avail == CAROL_QUOTA
        c.delete("/dav/q.bin")


def test_without_a_quota_the_available_bytes_are_absent_not_zero(dav_server: DavServer) -> None:
    """RFC 4331: no limit, no quota-available-bytes (404). Sent empty, davfs2 read it as 0 bytes
    free and the mounted drive showed as full."""
    body = (
        '<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop>'
        "<d:quota-available-bytes/><d:quota-used-bytes/></d:prop></d:propfind>"
    )
    with dav_server.client("alice") as c:  # alice has no quota
        resp = responses(propfind(c, "/dav/", depth="0", body=body))["/dav/"]
        probe = "/dav/quota-probe.txt"
        c.put(probe, content=b"q")
        file_resp = responses(propfind(c, probe, depth="0", body=body))[probe]
        c.delete(probe)
    assert prop(resp, f"{D}quota-used-bytes") is not None
    assert prop(resp, f"{D}quota-available-bytes") is None
    not_found = [ps for ps in resp.iter(f"{D}propstat") if "404" in (ps.findtext(f"{D}status") or "")]
    assert [ps.find(f"{D}prop/{D}quota-available-bytes") is not None for ps in not_found] == [True]
    # A file has no quota of its own: both are absent, not empty.
    assert prop(file_resp, f"{D}quota-used-bytes") is None
    assert prop(file_resp, f"{D}quota-available-bytes") is None


def test_over_quota_is_507_and_leaves_old_content(dav_server: DavServer) -> None:
    with dav_server.client("carol") as c:
        assert c.put("/dav/keep.bin", content=b"old").status_code == 201
        r = c.put("/dav/keep.bin", content=os.urandom(CAROL_QUOTA + 1))
        assert r.status_code == 507
        assert c.get("/dav/keep.bin").content == b"old"
        # Chunked, no declared size: the limit is hit while streaming.
        r = c.put("/dav/big.bin", content=iter([os.urandom(1 << 20) for _ in range(3)]))
        assert r.status_code == 507
        assert c.get("/dav/big.bin").status_code == 404
        c.delete("/dav/keep.bin")


def test_dead_properties_roundtrip_and_follow_move(c: httpx.Client, base: str) -> None:
    c.put(f"{base}/p.txt", content=b"p")
    patch = (
        '<?xml version="1.0"?><d:propertyupdate xmlns:d="DAV:" xmlns:z="urn:example:z">'
        "<d:set><d:prop><z:color>blue</z:color><z:tag>a&amp;b</z:tag></d:prop></d:set></d:propertyupdate>"
    )
    r = c.request("PROPPATCH", f"{base}/p.txt", content=patch)
    assert r.status_code == 207
    assert c.request("MOVE", f"{base}/p.txt", headers={"Destination": f"{base}/q.txt"}).status_code == 201
    body = (
        '<?xml version="1.0"?><d:propfind xmlns:d="DAV:" xmlns:z="urn:example:z">'
        "<d:prop><z:color/><z:tag/></d:prop></d:propfind>"
    )
    resp = responses(propfind(c, f"{base}/q.txt", depth="0", body=body))[f"{base}/q.txt"]
    assert prop(resp, "{urn:example:z}color") == "blue"
    assert prop(resp, "{urn:example:z}tag") == "a&b"


def test_set_last_modified_win32_and_oc_mtime(c: httpx.Client, base: str) -> None:
    c.put(f"{base}/m.txt", content=b"m", headers={"X-OC-Mtime": "1500000000"})
    resp = responses(propfind(c, f"{base}/m.txt", depth="0"))[f"{base}/m.txt"]
    assert prop(resp, f"{D}getlastmodified") == "Fri, 14 Jul 2017 02:40:00 GMT"
    patch = (
        '<?xml version="1.0"?><d:propertyupdate xmlns:d="DAV:" xmlns:z="urn:schemas-microsoft-com:">'
        "<d:set><d:prop><z:Win32LastModifiedTime>Wed, 01 Jan 2020 10:00:00 GMT</z:Win32LastModifiedTime>"
        "</d:prop></d:set></d:propertyupdate>"
    )
    assert c.request("PROPPATCH", f"{base}/m.txt", content=patch).status_code == 207
    resp = responses(propfind(c, f"{base}/m.txt", depth="0"))[f"{base}/m.txt"]
    assert prop(resp, f"{D}getlastmodified") == "Wed, 01 Jan 2020 10:00:00 GMT"


# --- namespace operations ------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e400", "1e20", "-5", "nan", "Fri, 01 Jan 1960 00:00:00 GMT"])
def test_a_modification_time_out_of_range_is_refused(c: httpx.Client, base: str, value: str) -> None:
    # Stored, 1e400 turned every later GET, PROPFIND and DELETE of the file (and of its folder's
    # listing) into a 500.
    c.put(f"{base}/t.txt", content=b"t")
    for prop in (
        "<d:getlastmodified>{}</d:getlastmodified>",
        "<z:Win32LastModifiedTime>{}</z:Win32LastModifiedTime>",
    ):
        body = (
            '<?xml version="1.0"?><d:propertyupdate xmlns:d="DAV:" xmlns:z="urn:schemas-microsoft-com:">'
            f"<d:set><d:prop>{prop.format(value)}</d:prop></d:set></d:propertyupdate>"
        )
        r = c.request("PROPPATCH", f"{base}/t.txt", content=body)
        assert r.status_code == 207 and "200 OK" not in r.text, r.text
    assert c.get(f"{base}/t.txt").status_code == 200
    assert c.request("PROPFIND", f"{base}/", headers={"Depth": "1"}).status_code == 207


def test_move_copy_delete_folder(c: httpx.Client, base: str) -> None:
    c.request("MKCOL", f"{base}/src")
    c.request("MKCOL", f"{base}/src/inner")
    c.put(f"{base}/src/inner/x", content=b"xx")
    r = c.request("COPY", f"{base}/src", headers={"Destination": f"{base}/copy", "Depth": "infinity"})
    assert r.status_code == 201
    r = c.request("MOVE", f"{base}/src", headers={"Destination": f"{base}/moved"})
    assert r.status_code == 201
    assert c.get(f"{base}/copy/inner/x").content == b"xx"
    assert c.get(f"{base}/moved/inner/x").content == b"xx"
    assert c.get(f"{base}/src/inner/x").status_code == 404
    assert c.delete(f"{base}/moved").status_code == 204
    assert c.get(f"{base}/moved/inner/x").status_code == 404
    # Overwrite: F refuses an existing destination.
    c.put(f"{base}/a", content=b"a")
    c.put(f"{base}/b", content=b"b")
    r = c.request("MOVE", f"{base}/a", headers={"Destination": f"{base}/b", "Overwrite": "F"})
    assert r.status_code == 412
    r = c.request("MOVE", f"{base}/a", headers={"Destination": f"{base}/b"})
    assert r.status_code == 204
    assert c.get(f"{base}/b").content == b"a"


def test_move_or_copy_onto_a_folder_holding_the_source_is_409(c: httpx.Client, base: str) -> None:
    # With Overwrite: T the destination would be replaced: trashed, and the source inside it.
    assert c.request("MKCOL", f"{base}/q").status_code == 201
    c.put(f"{base}/q/f.txt", content=b"keep")
    for method in ("MOVE", "COPY"):
        for src, dst in ((f"{base}/q/f.txt", f"{base}/q"), (f"{base}/q/", f"{base}/")):
            r = c.request(method, src, headers={"Destination": dst, "Overwrite": "T"})
            assert r.status_code == 409, (method, src, r.text)
    assert c.get(f"{base}/q/f.txt").content == b"keep"
    trashed = [i["path"] for i in c.get("/api/v1/trash", params={"limit": 1000}).json()["items"]]
    assert not [p for p in trashed if base.removeprefix("/dav") in p]


def test_nfc_and_nfd_names_are_one_file(c: httpx.Client, base: str) -> None:
    nfc = unicodedata.normalize("NFC", "café.txt")
    nfd = unicodedata.normalize("NFD", "café.txt")
    assert nfc != nfd
    assert c.put(f"{base}/{nfd}", content=b"one").status_code == 201
    assert c.get(f"{base}/{nfc}").content == b"one"
    assert c.put(f"{base}/{nfc}", content=b"two").status_code == 204
    tree = responses(propfind(c, base + "/"))
    assert len(tree) == 2


def test_odd_names_roundtrip(c: httpx.Client, base: str) -> None:
    names = ["a b.txt", "h#ash", "per%cent", "q?mark", "and&amp", "plus+plus", "emoji 😀.bin", "ünï.txt"]
    for name in names:
        r = c.put(f"{base}/{quote(name)}", content=name.encode())
        assert r.status_code == 201, name
        assert c.get(f"{base}/{quote(name)}").content == name.encode()
    tree = responses(propfind(c, base + "/"))
    listed = {unquote(h.rsplit("/", 1)[-1]) for h in tree if h.rstrip("/") != base}
    assert listed == set(names)


def test_invalid_utf8_path_is_400(c: httpx.Client, base: str, dav_server: DavServer) -> None:
    assert c.get(f"{base}/bad%ce%28name").status_code == 400
    assert c.put(f"{base}/bad%ff", content=b"x").status_code == 400
    assert dav_server.healthy()


# --- locks -----------------------------------------------------------------------------

LOCKINFO = (
    '<?xml version="1.0" encoding="utf-8"?><d:lockinfo xmlns:d="DAV:"><d:lockscope><d:exclusive/>'
    "</d:lockscope><d:locktype><d:write/></d:locktype><d:owner>test</d:owner></d:lockinfo>"
)


def _lock(c: httpx.Client, path: str) -> str:
    r = c.request("LOCK", path, content=LOCKINFO, headers={"Timeout": "Second-600"})
    assert r.status_code in (200, 201), r.text
    return r.headers["Lock-Token"].strip("<>")


def test_lock_blocks_writes_without_token_and_windows_unlock(c: httpx.Client, base: str) -> None:
    c.put(f"{base}/l.txt", content=b"l")
    token = _lock(c, f"{base}/l.txt")
    assert c.put(f"{base}/l.txt", content=b"x").status_code == 423
    r = c.put(f"{base}/l.txt", content=b"y", headers={"If": f"(<{token}>)"})
    assert r.status_code == 204
    # Windows sends the Lock-Token without angle brackets.
    assert c.request("UNLOCK", f"{base}/l.txt", headers={"Lock-Token": token}).status_code == 204
    assert c.put(f"{base}/l.txt", content=b"z").status_code == 204


def test_lock_tokens_the_way_windows_and_office_submit_them(c: httpx.Client, base: str) -> None:
    c.put(f"{base}/o.docx", content=b"o")
    token = _lock(c, f"{base}/o.docx")
    # Windows: the token in If, without its angle brackets.
    assert c.put(f"{base}/o.docx", content=b"1", headers={"If": f"({token})"}).status_code == 204
    # Office: the token in Lock-Token instead of If (sabre/dav#980).
    assert c.put(f"{base}/o.docx", content=b"2", headers={"Lock-Token": f"<{token}>"}).status_code == 204
    patch = (
        '<?xml version="1.0"?><d:propertyupdate xmlns:d="DAV:" xmlns:z="urn:example:z">'
        "<d:set><d:prop><z:color>red</z:color></d:prop></d:set></d:propertyupdate>"
    )
    r = c.request("PROPPATCH", f"{base}/o.docx", content=patch, headers={"Lock-Token": f"<{token}>"})
    assert r.status_code == 207 and "200 OK" in r.text
    # Any other token is still no token.
    for headers in ({"Lock-Token": "<opaquelocktoken:nope>"}, {"If": "(opaquelocktoken:nope)"}):
        assert c.put(f"{base}/o.docx", content=b"3", headers=headers).status_code in (412, 423)
    assert c.put(f"{base}/o.docx", content=b"3").status_code == 423
    assert c.get(f"{base}/o.docx").content == b"2"
    # A stale Lock-Token on a file that is not locked changes nothing (the account still holds
    # a lock elsewhere, so the write goes through WsgiDAV's lock checks).
    c.put(f"{base}/free.txt", content=b"f")
    r = c.put(f"{base}/free.txt", content=b"g", headers={"Lock-Token": "<opaquelocktoken:stale>"})
    assert r.status_code == 204
    assert c.request("UNLOCK", f"{base}/o.docx", headers={"Lock-Token": f"<{token}>"}).status_code == 204


def test_a_lock_taken_through_one_spelling_of_a_name_holds_against_the_other(
    c: httpx.Client, base: str
) -> None:
    """macOS sends names decomposed (NFD), Windows composed (NFC): one file, one set of locks.
    A lock taken through the NFD spelling once let a client without the token write, delete
    and move the file through the NFC one."""
    folder = f"{base}/Caf\u00e9 notes"
    nfc = unicodedata.normalize("NFC", f"{folder}/r\u00e9sum\u00e9.txt")
    nfd = unicodedata.normalize("NFD", nfc)
    assert c.request("MKCOL", folder).status_code == 201
    assert c.put(nfc, content=b"mine").status_code == 201
    token = _lock(c, nfd)
    assert c.put(nfc, content=b"theirs").status_code == 423
    assert c.delete(nfc).status_code == 423
    assert c.request("MOVE", nfc, headers={"Destination": quote(f"{folder}/x.txt")}).status_code == 423
    api_path = nfc.removeprefix("/dav")
    r = c.post("/api/v1/files/upload", params={"uploadType": "media", "path": api_path}, content=b"sync")
    assert r.status_code == 423
    assert c.get(nfc).content == b"mine"
    # The holder writes and unlocks through either spelling.
    assert c.put(nfc, content=b"saved", headers={"If": f"(<{token}>)"}).status_code == 204
    assert c.request("UNLOCK", nfc, headers={"Lock-Token": f"<{token}>"}).status_code == 204
    assert c.put(nfd, content=b"free").status_code == 204


def test_lock_on_unmapped_url_creates_empty_file(c: httpx.Client, base: str) -> None:
    token = _lock(c, f"{base}/new.txt")
    assert c.get(f"{base}/new.txt").content == b""
    assert c.put(f"{base}/new.txt", content=b"x", headers={"If": f"(<{token}>)"}).status_code == 204


RESOURCETYPE_ONLY = (
    '<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop><d:resourcetype/></d:prop></d:propfind>'
)


def test_a_refused_lock_on_an_unmapped_url_creates_nothing(c: httpx.Client, base: str) -> None:
    """WsgiDAV creates the empty file before it checks the lock it is asked for; a LOCK that
    is refused must not leave it in a folder someone else has locked (or in the trash)."""
    folder = f"{base}/locked-{uuid.uuid4().hex[:6]}"
    assert c.request("MKCOL", folder).status_code == 201
    r = c.request("LOCK", folder, content=LOCKINFO, headers={"Timeout": "Second-600", "Depth": "infinity"})
    assert r.status_code == 200
    token = r.headers["Lock-Token"]
    # Without the folder's token: adding a member to a locked folder is refused outright.
    r = c.request("LOCK", f"{folder}/a.txt", content=LOCKINFO, headers={"Depth": "0"})
    assert r.status_code == 423
    # With it: the member could be added, but a second exclusive lock under the folder's is not
    # granted; the file made for it goes again.
    r = c.request("LOCK", f"{folder}/b.txt", content=LOCKINFO, headers={"Depth": "0", "If": f"({token})"})
    assert r.status_code == 423
    for name in ("a.txt", "b.txt"):
        assert c.get(f"{folder}/{name}").status_code == 404
    listing = propfind(c, f"{folder}/", body=RESOURCETYPE_ONLY)
    assert member_names(listing, folder) == set()
    trashed = [i["path"] for i in c.get("/api/v1/trash", params={"limit": 1000}).json()["items"]]
    assert not [p for p in trashed if folder.removeprefix("/dav") in p]
    # The folder's lock still works as before: its holder adds a file with the token.
    assert c.put(f"{folder}/c.txt", content=b"c", headers={"If": f"({token})"}).status_code == 201
    assert c.request("UNLOCK", folder, headers={"Lock-Token": token}).status_code == 204


def test_locks_of_one_account_are_invisible_to_another(dav_server: DavServer) -> None:
    """Same path in two homes: alice's lock must not block bob."""
    with dav_server.client("alice") as a, dav_server.client("bob") as b:
        name = f"/dav/shared-name-{uuid.uuid4().hex[:6]}.txt"
        a.put(name, content=b"a")
        b.put(name, content=b"b")
        _lock(a, name)
        assert b.put(name, content=b"b2").status_code == 204
        assert a.get(name).content == b"a"


def test_locks_survive_restart(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server("locks")
    with srv.client("alice") as c:
        c.put("/dav/l.txt", content=b"l")
        token = _lock(c, "/dav/l.txt")
    srv.stop()
    srv.start()
    with srv.client("alice") as c:
        assert c.put("/dav/l.txt", content=b"x").status_code == 423
        assert c.put("/dav/l.txt", content=b"x", headers={"If": f"(<{token}>)"}).status_code == 204


# --- listings are not N+1 -----------------------------------------------------------


def test_large_listing(c: httpx.Client, base: str) -> None:
    for i in range(300):
        c.put(f"{base}/n{i:04d}", content=hashlib.sha256(str(i).encode()).digest())
    tree = responses(propfind(c, base + "/"))
    assert len(tree) == 301
    files = [r for h, r in tree.items() if h != base + "/"]
    assert {prop(r, f"{D}getcontentlength") for r in files} == {"32"}
    etags = [prop(r, f"{D}getetag") for r in files]
    assert all(etags) and len(set(etags)) == 300
    # RFC 4918 15.6: an entity-tag, quotes included, the same as the ETag header.
    assert prop(tree[base + "/n0007"], f"{D}getetag") == c.head(f"{base}/n0007").headers["ETag"]


# --- the connection ----------------------------------------------------------------


class _Unclosable(io.BytesIO):
    """One buffer for several http.client responses in a row (each closes its file when read)."""

    def close(self) -> None:
        pass


def test_pipelined_requests_are_all_answered_in_order(dav_server: DavServer, base: str) -> None:
    """Requests sent back to back before any answer (HTTP/1.1 pipelining) sit in the
    server's read buffer together: each must be answered, in order, with bodies intact."""
    creds = base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()
    head = f"Host: x\r\nAuthorization: Basic {creds}\r\n"
    body = os.urandom(5000)
    path = f"{base}/pipelined.bin"
    sent = [
        ("PUT", f"PUT {path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body),
        ("GET", f"GET {path} HTTP/1.1\r\n{head}\r\n".encode()),
        ("PROPFIND", f"PROPFIND {base}/ HTTP/1.1\r\n{head}Depth: 0\r\nContent-Length: 0\r\n\r\n".encode()),
        ("HEAD", f"HEAD {path} HTTP/1.1\r\n{head}\r\n".encode()),
        ("GET", f"GET {path} HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode()),
    ]
    url = urlsplit(dav_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"".join(request for _, request in sent))
        received = _Unclosable()
        while chunk := sock.recv(65536):
            received.write(chunk)
    received.seek(0)

    class Replay:  # what http.client.HTTPResponse reads a response from
        def makefile(self, mode: str) -> io.BytesIO:
            return received

    answers = []
    for method, _ in sent:
        response = http.client.HTTPResponse(Replay(), method=method)  # type: ignore[arg-type]
        response.begin()
        answers.append((response.status, response.read()))
    assert [status for status, _ in answers] == [201, 200, 207, 200, 200]
    assert answers[1][1] == answers[4][1] == body
    assert answers[3][1] == b""
    assert received.read() == b""  # nothing more than the five answers
