"""tus 1.0.0 details in-process: creation-with-upload, deferred length, metadata, expiry headers,
method override, and the headers every answer carries."""

from __future__ import annotations

import base64
import hashlib
from email.utils import parsedate_to_datetime

import httpx

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def _meta(**pairs: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def _url(r: httpx.Response) -> str:
    return "http://127.0.0.1" + r.headers["Location"]


def test_creation_with_upload_then_deferred_length(api: httpx.Client) -> None:
    first = b"creation-with-upload body; "
    r = api.post(
        "/uploads/",
        headers={**OCTETS, "Upload-Defer-Length": "1", "Upload-Metadata": _meta(filename="later.txt")},
        content=first,
    )
    assert r.status_code == 201 and r.headers["Upload-Offset"] == str(len(first))
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert parsedate_to_datetime(r.headers["Upload-Expires"])  # an HTTP date
    url = _url(r)
    head = api.head(url, headers=TUS)
    assert head.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in head.headers
    assert head.headers["Cache-Control"] == "no-store"
    rest = b"and the rest, length declared with it"
    total = len(first) + len(rest)
    done = api.patch(
        url, headers={**OCTETS, "Upload-Offset": str(len(first)), "Upload-Length": str(total)}, content=rest
    )
    assert done.status_code == 204 and done.headers["Upload-Offset"] == str(total)
    assert api.head(url, headers=TUS).headers["Upload-Length"] == str(total)
    meta = api.get("/files/metadata", params={"path": "/later.txt"}).json()
    assert meta["content_sha256"] == hashlib.sha256(first + rest).hexdigest()


def test_metadata_path_and_mtime_and_method_override(api: httpx.Client) -> None:
    api.post("/files/upload", params={"uploadType": "media", "path": "/dir-probe"}, content=b"x")
    meta = _meta(path="/a b/ü.bin", mtime="1234567890")
    assert (
        api.post("/uploads/", headers={**TUS, "Upload-Length": "3", "Upload-Metadata": meta}).status_code
        == 409
    )
    api.post("/files/delete", json={"path": "/dir-probe"})
    r = api.post(
        "/uploads/",
        headers={**TUS, "Upload-Length": "3", "Upload-Metadata": _meta(path="/ü.bin", mtime="1234567890")},
    )
    assert r.status_code == 201
    assert api.head(_url(r), headers=TUS).headers["Upload-Metadata"] == _meta(
        path="/ü.bin", mtime="1234567890"
    )
    # Clients behind proxies that drop PATCH send POST with X-HTTP-Method-Override.
    done = api.post(
        _url(r), headers={**OCTETS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"}, content=b"abc"
    )
    assert done.status_code == 204
    meta_doc = api.get("/files/metadata", params={"path": "/ü.bin"}).json()
    assert meta_doc["mtime"] == 1234567890 and meta_doc["size"] == 3


def test_bad_tus_requests_get_clear_answers(api: httpx.Client) -> None:
    r = api.post("/uploads/", headers={**TUS, "Upload-Metadata": _meta(path="/x")})
    assert r.status_code == 400 and r.headers["Tus-Resumable"] == "1.0.0"  # no length at all
    bad_meta = api.post("/uploads/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": "path !!!"})
    assert bad_meta.status_code == 400
    url = _url(
        api.post("/uploads/", headers={**TUS, "Upload-Length": "4", "Upload-Metadata": _meta(path="/y")})
    )
    no_offset = api.patch(url, headers=OCTETS, content=b"abcd")
    assert no_offset.status_code == 400
    bad_algo = api.patch(
        url, headers={**OCTETS, "Upload-Offset": "0", "Upload-Checksum": "crc32 AAAA"}, content=b"abcd"
    )
    assert bad_algo.status_code == 400
    bad_final = api.post(
        "/uploads/",
        headers={**TUS, "Upload-Concat": "final;/elsewhere/abc", "Upload-Metadata": _meta(path="/z")},
    )
    assert bad_final.status_code == 400
    empty_sum = api.patch(
        url, headers={**OCTETS, "Upload-Offset": "0", "Upload-Checksum": "sha1 "}, content=b"ab"
    )
    assert empty_sum.status_code == 400  # not 460: there is no checksum to mismatch
    # The length is fixed once known (tus 1.0: Upload-Length must not change).
    other_length = api.patch(
        url, headers={**OCTETS, "Upload-Offset": "0", "Upload-Length": "9"}, content=b"ab"
    )
    assert other_length.status_code == 400
    for mtime in ("\uff11\uff12", "1_000", "nan"):  # full-width 12: float() takes all three
        r = api.post(
            "/uploads/",
            headers={**TUS, "Upload-Length": "1", "Upload-Metadata": _meta(path="/m", mtime=mtime)},
        )
        assert r.status_code == 400, mtime
    assert api.head(url, headers=TUS).headers["Upload-Offset"] == "0"


def test_another_account_cannot_touch_an_upload(api: httpx.Client, bob: httpx.Client) -> None:
    url = _url(
        api.post("/uploads/", headers={**TUS, "Upload-Length": "4", "Upload-Metadata": _meta(path="/mine")})
    )
    assert bob.head(url, headers=TUS).status_code == 404
    assert bob.patch(url, headers={**OCTETS, "Upload-Offset": "0"}, content=b"evil").status_code == 404
    assert bob.delete(url, headers=TUS).status_code == 404
    assert api.patch(url, headers={**OCTETS, "Upload-Offset": "0"}, content=b"mine").status_code == 204


def test_an_upload_whose_folder_was_deleted_meanwhile_completes_into_it_again(api: httpx.Client) -> None:
    """A tus client would loop on 409 (its offset-mismatch answer) until the session expired."""
    assert api.post("/files/create_folder", json={"path": "/inbox"}).status_code in (200, 201)
    data = b"a" * 1000 + b"b" * 1000
    r = api.post(
        "/uploads/", headers={**TUS, "Upload-Length": "2000", "Upload-Metadata": _meta(path="/inbox/f")}
    )
    url = _url(r)
    first = api.patch(url, headers={**OCTETS, "Upload-Offset": "0"}, content=data[:1000])
    assert first.status_code == 204
    assert api.post("/files/delete", json={"path": "/inbox"}).status_code == 200
    last = api.patch(url, headers={**OCTETS, "Upload-Offset": "1000"}, content=data[1000:])
    assert last.status_code == 204 and last.headers["Upload-Offset"] == "2000"
    assert api.get("/files/download", params={"path": "/inbox/f"}).content == data
