"""The served OpenAPI document is valid, and true: every operation, exercised, answers as documented."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from storage.engine import Engine


@pytest.fixture
def document(api: httpx.Client) -> dict[str, Any]:
    r = api.get("/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1")


class Checker:
    """Records each answer against the operation the document says handles it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.doc = document
        self.seen: set[tuple[str, str]] = set()

    def _template(self, path: str) -> str:
        if path in self.doc["paths"]:
            return path
        for template in self.doc["paths"]:
            pattern = re.sub(r"\{\w+\}", "[^/]+", template)
            if re.fullmatch(pattern, path):
                return str(template)
        return path

    def check(self, r: httpx.Response) -> httpx.Response:
        path, method = self._template(r.request.url.path), r.request.method.lower()
        op = self.doc["paths"].get(path, {}).get(method)
        assert op is not None, f"{method.upper()} {path} answered but is not documented"
        self.seen.add((path, method))
        documented = op["responses"].get(str(r.status_code))
        assert documented is not None, f"{method.upper()} {path} answered {r.status_code}, not documented"
        content = documented.get("content")
        if not content or method == "head":  # an answer to HEAD has headers only
            return r
        ctype = r.headers.get("Content-Type", "").split(";")[0]
        assert ctype in content, f"{method.upper()} {path} {r.status_code}: {ctype} is not documented"
        schema = content[ctype].get("schema")
        if schema is not None and ctype.endswith("json"):
            root = {**schema, "components": self.doc["components"]}
            jsonschema.validate(json.loads(r.content), root, cls=jsonschema.Draft202012Validator)
        return r


@pytest.fixture
def checker(document: dict[str, Any]) -> Iterator[Checker]:
    yield Checker(document)


def test_every_operation_answers_as_documented(api: httpx.Client, engine: Engine, checker: Checker) -> None:
    c = checker.check
    up = lambda path, data, **kw: c(  # noqa: E731
        api.post("/files/upload", params={"uploadType": "media", "path": path}, content=data, **kw)
    )
    assert up("/doc.txt", b"one").status_code == 201
    assert up("/doc.txt", b"two").status_code == 200
    assert up("/doc.txt", b"x", headers={"If-Match": '"0-0"'}).status_code == 412
    assert up("/no/such/folder.txt", b"x").status_code == 409
    assert c(api.post("/files/upload", params={"uploadType": "media"}, content=b"x")).status_code == 400
    assert c(api.get("/files/metadata", params={"path": "/doc.txt"})).status_code == 200
    assert c(api.get("/files/metadata", params={"path": "/nope"})).status_code == 404
    revs = c(api.get("/files/list_revisions", params={"path": "/doc.txt", "limit": 1})).json()
    assert revs["has_more"] is True
    assert c(api.get("/files/list_revisions", params={"path": "/nope"})).status_code == 404
    engine.volume("alice").mkdir("folder")
    assert c(api.get("/files/list_revisions", params={"path": "/folder"})).status_code == 409
    first = c(api.get("/files/list_revisions", params={"path": "/doc.txt"})).json()["revisions"][-1]["rev"]
    pin = c(api.post("/files/pin_revision", json={"path": "/doc.txt", "rev": first}))
    assert pin.status_code == 200 and pin.json()["pinned"] is True
    assert c(api.post("/files/pin_revision", json={"path": "/doc.txt", "rev": 10**9})).status_code == 404
    assert c(api.post("/files/pin_revision", content=b"{}")).status_code == 415
    assert c(api.post("/files/restore", json={"path": "/doc.txt", "rev": first})).status_code == 200
    assert c(api.post("/files/restore", json={"path": "/doc.txt", "rev": 10**9})).status_code == 404
    assert c(api.post("/files/restore", json={"path": "/folder", "rev": first})).status_code == 409
    assert c(api.post("/files/restore", content=b"{}")).status_code == 415
    assert c(api.get("/files/download", params={"path": "/doc.txt"})).status_code == 200
    assert (
        c(api.get("/files/download", params={"path": "/doc.txt"}, headers={"Range": "bytes=0-0"})).status_code
        == 206
    )
    assert (
        c(api.get("/files/download", params={"path": "/doc.txt"}, headers={"Range": "bytes=9-"})).status_code
        == 416
    )
    etag = api.get("/files/metadata", params={"path": "/doc.txt"}).json()["etag"]
    assert (
        c(
            api.get("/files/download", params={"path": "/doc.txt"}, headers={"If-None-Match": etag})
        ).status_code
        == 304
    )
    assert c(api.get("/files/download", params={"path": "/nope"})).status_code == 404
    assert c(api.get("/files/download", params={"path": "/folder"})).status_code == 409
    assert c(api.get("/openapi.json")).status_code == 200
    _exercise_tus(api, c)
    _exercise_resumable(api, c)
    _exercise_trash(api, c)
    _exercise_blocks(api, c)
    _exercise_changes(api, engine, c)
    _exercise_tree(api, c)
    _exercise_account(api, c)
    engine.accounts.set_quota("alice", 1)
    tus_meta = {"Tus-Resumable": "1.0.0", "Upload-Metadata": "path " + base64.b64encode(b"/q").decode()}
    assert c(api.post("/uploads/", headers={**tus_meta, "Upload-Length": "100"})).status_code == 507
    assert up("/big", b"too big").status_code == 507
    assert up("/big", b"z" * 20, headers={"Content-Length": str(11 << 30)}).status_code == 413
    with httpx.Client(transport=api._transport, base_url=str(api.base_url)) as anon:
        assert c(anon.get("/files/metadata", params={"path": "/doc.txt"})).status_code == 401
    documented = {(p, m) for p, ops in checker.doc["paths"].items() for m in ops}
    assert documented == checker.seen, f"not exercised: {sorted(documented - checker.seen)}"


def _exercise_tus(api: httpx.Client, c: Any) -> None:
    tus = {"Tus-Resumable": "1.0.0"}
    octets = {**tus, "Content-Type": "application/offset+octet-stream"}
    meta = "path " + base64.b64encode(b"/tus.bin").decode()
    assert c(api.options("/uploads/")).status_code == 204
    assert c(api.post("/uploads/", headers={**tus, "Upload-Length": "6"})).status_code == 400  # no target
    assert (
        c(api.post("/uploads/", headers={"Upload-Length": "6", "Upload-Metadata": meta})).status_code == 400
    )
    assert (
        c(api.post("/uploads/", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "6"})).status_code == 412
    )
    huge = {**tus, "Upload-Length": str(11 << 30), "Upload-Metadata": meta}
    assert c(api.post("/uploads/", headers=huge)).status_code == 413
    nowhere = "path " + base64.b64encode(b"/no/such/dir/f").decode()
    assert (
        c(
            api.post("/uploads/", headers={**tus, "Upload-Length": "1", "Upload-Metadata": nowhere})
        ).status_code
        == 409
    )
    wrong_type = {**tus, "Upload-Length": "6", "Upload-Metadata": meta, "Content-Type": "text/plain"}
    assert c(api.post("/uploads/", headers=wrong_type, content=b"abc")).status_code == 415
    bad_sum = {
        **octets,
        "Upload-Length": "6",
        "Upload-Metadata": meta,
        "Upload-Checksum": "sha1 " + base64.b64encode(hashlib.sha1(b"x").digest()).decode(),
    }
    assert c(api.post("/uploads/", headers=bad_sum, content=b"abc")).status_code == 460
    created = c(api.post("/uploads/", headers={**tus, "Upload-Length": "6", "Upload-Metadata": meta}))
    assert created.status_code == 201
    url = "http://127.0.0.1" + created.headers["Location"]
    assert c(api.head(url, headers=tus)).status_code == 200
    assert c(api.patch(url, headers={**octets, "Upload-Offset": "0"}, content=b"abc")).status_code == 204
    assert c(api.patch(url, headers={**octets, "Upload-Offset": "1"}, content=b"bc")).status_code == 409
    assert c(api.patch(url, headers={**tus, "Upload-Offset": "3"}, content=b"def")).status_code == 415
    assert c(api.patch(url, headers={**octets, "Upload-Offset": "3"}, content=b"defghi")).status_code == 413
    sha = "sha256 " + base64.b64encode(hashlib.sha256(b"zzz").digest()).decode()
    assert (
        c(
            api.patch(url, headers={**octets, "Upload-Offset": "3", "Upload-Checksum": sha}, content=b"def")
        ).status_code
        == 460
    )
    assert c(api.patch(url, headers={**octets, "Upload-Offset": "3"}, content=b"def")).status_code == 204
    partial = c(api.post("/uploads/", headers={**tus, "Upload-Length": "2", "Upload-Concat": "partial"}))
    c(
        api.patch(
            "http://127.0.0.1" + partial.headers["Location"],
            headers={**octets, "Upload-Offset": "0"},
            content=b"xy",
        )
    )
    final = {**tus, "Upload-Concat": "final;" + partial.headers["Location"], "Upload-Metadata": meta}
    joined = c(api.post("/uploads/", headers=final))
    assert joined.status_code == 201
    assert (
        c(
            api.patch(
                "http://127.0.0.1" + joined.headers["Location"],
                headers={**octets, "Upload-Offset": "2"},
                content=b"z",
            )
        ).status_code
        == 403
    )
    assert c(api.delete(url, headers=tus)).status_code == 204
    assert c(api.head(url, headers=tus)).status_code == 404
    assert c(api.delete(url, headers=tus)).status_code == 404
    assert c(api.patch(url, headers={**octets, "Upload-Offset": "0"}, content=b"a")).status_code == 404


def _exercise_resumable(api: httpx.Client, c: Any) -> None:
    start = c(api.post("/files/upload", params={"uploadType": "resumable", "path": "/g.bin"}))
    assert start.status_code == 200
    url = "http://127.0.0.1" + start.headers["Location"]
    status = c(api.put(url, headers={"Content-Range": "bytes */10"}))
    assert status.status_code == 308 and "Range" not in status.headers
    part = c(api.put(url, headers={"Content-Range": "bytes 0-3/10"}, content=b"0123"))
    assert part.status_code == 308 and part.headers["Range"] == "bytes=0-3"
    behind = c(api.put(url, headers={"Content-Range": "bytes 2-5/10"}, content=b"2345"))
    assert behind.status_code == 308 and behind.headers["Range"] == "bytes=0-3"
    assert c(api.put(url, headers={"Content-Range": "bytes 4-9/11"}, content=b"456789")).status_code == 400
    done = c(api.put(url, headers={"Content-Range": "bytes 4-9/10"}, content=b"456789"))
    assert done.status_code == 201 and done.json()["size"] == 10
    assert c(api.put(url, headers={"Content-Range": "bytes */10"})).json() == done.json()
    assert c(api.put(url + "x", headers={"Content-Range": "bytes */10"})).status_code == 404


def _exercise_trash(api: httpx.Client, c: Any) -> None:
    api.post("/files/upload", params={"uploadType": "media", "path": "/bin.txt"}, content=b"x")
    gone = c(api.post("/files/delete", json={"path": "/bin.txt"}))
    assert gone.status_code == 200 and gone.json()["is_deleted"] is True
    assert c(api.post("/files/delete", json={"path": "/bin.txt"})).status_code == 404
    assert c(api.post("/files/delete", json={"path": "/"})).status_code == 409
    assert c(api.post("/files/delete", content=b"{}")).status_code == 415
    items = c(api.get("/trash")).json()["items"]
    item = next(i["id"] for i in items if i["path"] == "/bin.txt")
    api.post("/files/upload", params={"uploadType": "media", "path": "/bin.txt"}, content=b"new")
    assert c(api.post("/trash/restore", json={"id": item})).status_code == 409
    assert c(api.post("/trash/restore", content=b"{}")).status_code == 415
    assert c(api.post("/trash/restore", json={"id": item, "path": "/bin-restored.txt"})).status_code == 200
    assert c(api.post("/trash/restore", json={"id": item})).status_code == 404
    again = c(api.post("/files/delete", json={"path": "/bin-restored.txt"})).json()["trash_id"]
    assert c(api.delete(f"/trash/{again}")).status_code == 204
    assert c(api.delete(f"/trash/{again}")).status_code == 404


def _exercise_changes(api: httpx.Client, engine: Engine, c: Any) -> None:
    start = c(api.get("/changes/latest_cursor")).json()["cursor"]
    assert c(api.get("/changes/latest_cursor", params={"path": "/folder"})).status_code == 200
    assert c(api.get("/changes/latest_cursor", params={"path": "/nope"})).status_code == 404
    assert c(api.get("/changes/latest_cursor", params={"path": "/doc.txt"})).status_code == 409
    api.post("/files/upload", params={"uploadType": "media", "path": "/feed.txt"}, content=b"x")
    api.post("/files/delete", json={"path": "/feed.txt"})
    page = c(api.get("/changes/list", params={"cursor": start, "limit": 1})).json()
    assert page["has_more"] is True
    assert c(api.get("/changes/list", params={"cursor": page["cursor"]})).json()["has_more"] is False
    assert c(api.get("/changes/list", params={"cursor": "garbage"})).status_code == 400
    assert c(api.get("/changes/longpoll", params={"cursor": start, "timeout": 30})).json()["changes"] is True
    assert c(api.get("/changes/longpoll", params={"cursor": start, "timeout": 5})).status_code == 400
    engine.compact_journal(now=engine.config.clock() + 10**9)
    assert c(api.get("/changes/list", params={"cursor": start})).status_code == 410
    assert c(api.get("/changes/longpoll", params={"cursor": start, "timeout": 30})).status_code == 410


def _exercise_blocks(api: httpx.Client, c: Any) -> None:
    import hashlib

    cfg = c(api.get("/config")).json()
    data = b"block data " * 100
    sha = hashlib.sha256(data).hexdigest()
    assert c(api.post("/blocks/missing", json={"hashes": [sha]})).json() == {"missing": [sha]}
    assert c(api.post("/blocks/missing", content=b"{}")).status_code == 415
    assert c(api.put(f"/blocks/{sha}", content=data)).status_code == 201
    assert c(api.put(f"/blocks/{sha}", content=data)).status_code == 200
    too_big = b"x" * (cfg["max_block_size"] + 1)
    assert c(api.put(f"/blocks/{hashlib.sha256(too_big).hexdigest()}", content=too_big)).status_code == 413
    assert c(api.get(f"/blocks/{sha}")).content == data
    assert c(api.get(f"/blocks/{'0' * 64}")).status_code == 404
    doc = {"path": "/delta.bin", "size": len(data), "blocks": [{"hash": sha, "size": len(data)}]}
    created = c(api.post("/files/commit", json={**doc, "parent_rev": None}))
    assert created.status_code == 201
    rev = created.json()["rev"]
    assert c(api.post("/files/commit", json={**doc, "parent_rev": rev})).status_code == 200
    assert c(api.post("/files/commit", json={**doc, "parent_rev": rev})).status_code == 409
    assert c(api.post("/files/commit", content=b"{}")).status_code == 415
    assert c(api.post("/files/commit", json={**doc, "size": 11 << 30, "parent_rev": None})).status_code == 400
    manifest = c(api.get("/files/manifest", params={"path": "/delta.bin"})).json()
    assert manifest["blocks"] == [{"hash": sha, "size": len(data), "offset": 0}]
    assert c(api.get("/files/manifest", params={"path": "/nope"})).status_code == 404
    assert c(api.get("/files/manifest", params={"path": "/folder"})).status_code == 409


def _exercise_tree(api: httpx.Client, c: Any) -> None:
    made = c(api.post("/files/create_folder", json={"path": "/tree", "mtime": 1_600_000_000}))
    assert made.status_code == 201
    assert c(api.post("/files/create_folder", json={"path": "/tree"})).status_code == 409
    assert c(api.post("/files/create_folder", json={})).status_code == 400
    assert c(api.post("/files/create_folder", content=b"{}")).status_code == 415
    c(api.post("/files/create_folder", json={"path": "/tree/sub"}))
    c(api.post("/files/create_folder", json={"path": "/tree/sub/deeper"}))
    page = c(api.get("/files/list_folder", params={"path": "/tree", "recursive": "true", "limit": 1}))
    assert page.json()["has_more"] is True and page.json()["next_after"] == "/tree/sub"
    assert c(api.get("/files/list_folder")).json()["next_after"] is None
    assert c(api.get("/files/list_folder", params={"path": "/nope"})).status_code == 404
    assert c(api.get("/files/list_folder", params={"path": "/doc.txt"})).status_code == 409
    assert c(api.get("/files/list_folder", params={"recursive": "maybe"})).status_code == 400
    moved = c(api.post("/files/move", json={"from_path": "/tree/sub", "to_path": "/tree/moved"}))
    assert moved.status_code == 200
    assert c(api.post("/files/move", json={"from_path": "/nope", "to_path": "/x"})).status_code == 404
    assert c(api.post("/files/move", json={"from_path": "/tree", "to_path": "/doc.txt"})).status_code == 409
    assert c(api.post("/files/move", json={"from_path": "/tree"})).status_code == 400
    assert c(api.post("/files/move", content=b"{}")).status_code == 415
    rev = api.get("/files/metadata", params={"path": "/doc.txt"}).json()["rev"]
    stale = c(api.post("/files/move", json={"from_path": "/doc.txt", "to_path": "/x", "rev": rev - 1}))
    assert stale.status_code == 409 and stale.json()["current_rev"] == rev
    stale = c(api.post("/files/delete", json={"path": "/doc.txt", "rev": rev - 1}))
    assert stale.status_code == 409 and stale.json()["current_rev"] == rev


def _exercise_account(api: httpx.Client, c: Any) -> None:
    assert c(api.get("/account")).json()["name"] == "alice"
    created = c(api.post("/account/tokens", json={"label": "openapi"}))
    assert created.status_code == 201
    assert c(api.post("/account/tokens", json={"label": ""})).status_code == 400
    assert c(api.post("/account/tokens", content=b"{}")).status_code == 415
    assert c(api.get("/account/tokens")).json()["tokens"][0]["label"] == "openapi"
    assert c(api.delete(f"/account/tokens/{created.json()['id']}")).status_code == 204
    assert c(api.delete(f"/account/tokens/{created.json()['id']}")).status_code == 404
