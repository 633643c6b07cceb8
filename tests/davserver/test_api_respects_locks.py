"""The extension API's writes respect WebDAV locks (in-process, httpx's WSGI transport).

A sync client must not replace, delete or move a file a WebDAV client (Office, Finder) has
locked: the API answers 423 (problem type ``locked``) until the lock goes.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from davserver.app import AppSettings, create_app
from storage.engine import Engine
from tests.davserver.inprocess import LOCKINFO, wsgi_client
from tests.storage.conftest import EngineFactory


@pytest.fixture(params=["sql", "redis"])
def client(
    request: pytest.FixtureRequest, make_engine: EngineFactory, database_url: str
) -> Iterator[tuple[Engine, httpx.Client]]:
    """Locks in SQL (the default) or in WsgiDAV's Redis storage (several nodes)."""
    engine = make_engine(database_url)
    engine.accounts.create("alice", "alice-password")
    engine.accounts.create("bob", "bob-password-1")
    settings = AppSettings()
    if request.param == "redis":
        settings = AppSettings(lock_storage="redis", redis_url=request.getfixturevalue("redis_url"))
    with wsgi_client(create_app(engine, settings)) as c:
        yield engine, c


def _lock(c: httpx.Client, path: str, depth: str = "0") -> str:
    r = c.request("LOCK", path, content=LOCKINFO, headers={"Depth": depth, "Timeout": "Second-600"})
    assert r.status_code in (200, 201), r.text
    return r.headers["Lock-Token"]


def _locked(r: httpx.Response) -> bool:
    return r.status_code == 423 and r.json()["type"] == "urn:davserver:problem:locked"


def _upload(c: httpx.Client, path: str, data: bytes) -> httpx.Response:
    return c.post("/api/v1/files/upload", params={"uploadType": "media", "path": path}, content=data)


def _tus_create(c: httpx.Client, path: str, length: int) -> httpx.Response:
    meta = "path " + base64.b64encode(path.encode()).decode()
    headers = {"Tus-Resumable": "1.0.0", "Upload-Length": str(length), "Upload-Metadata": meta}
    return c.post("/api/v1/uploads/", headers=headers)


def test_a_locked_file_is_not_replaced_deleted_or_moved_through_the_api(
    client: tuple[Engine, httpx.Client],
) -> None:
    engine, c = client
    vol = engine.volume("alice")
    vol.mkdir("docs")
    vol.write("docs/report.docx", io.BytesIO(b"office's copy"))
    token = _lock(c, "/dav/docs/report.docx")
    revs = c.get("/api/v1/files/list_revisions", params={"path": "/docs/report.docx"}).json()
    first_rev = revs["revisions"][0]["rev"]

    refused: dict[str, Any] = {
        "media upload": _upload(c, "/docs/report.docx", b"sync client's copy"),
        "resumable start": c.post(
            "/api/v1/files/upload", params={"uploadType": "resumable", "path": "/docs/report.docx"}
        ),
        "tus creation": _tus_create(c, "/docs/report.docx", 5),
        "delete": c.post("/api/v1/files/delete", json={"path": "/docs/report.docx"}),
        "move away": c.post(
            "/api/v1/files/move", json={"from_path": "/docs/report.docx", "to_path": "/r.docx"}
        ),
        "delete of its folder": c.post("/api/v1/files/delete", json={"path": "/docs"}),
        "move of its folder": c.post("/api/v1/files/move", json={"from_path": "/docs", "to_path": "/d2"}),
        "restore": c.post("/api/v1/files/restore", json={"path": "/docs/report.docx", "rev": first_rev}),
    }
    for what, r in refused.items():
        assert _locked(r), (what, r.status_code, r.text)
    assert c.get("/dav/docs/report.docx").content == b"office's copy"
    # Reading is not writing; nor is a sibling.
    assert c.get("/api/v1/files/download", params={"path": "/docs/report.docx"}).status_code == 200
    assert _upload(c, "/docs/other.txt", b"fine").status_code == 201
    # The lock holder still writes over WebDAV; once unlocked, the API writes again.
    assert c.put("/dav/docs/report.docx", content=b"saved", headers={"If": f"({token})"}).status_code == 204
    assert c.request("UNLOCK", "/dav/docs/report.docx", headers={"Lock-Token": token}).status_code == 204
    assert _upload(c, "/docs/report.docx", b"sync client's copy").status_code == 200
    assert c.post("/api/v1/files/move", json={"from_path": "/docs", "to_path": "/d2"}).status_code == 200


def test_a_folder_lock_covers_what_the_api_would_add_to_it(client: tuple[Engine, httpx.Client]) -> None:
    engine, c = client
    engine.volume("alice").mkdir("deep")
    engine.volume("alice").mkdir("shallow")
    engine.volume("alice").write("shallow/old.txt", io.BytesIO(b"old"))
    _lock(c, "/dav/deep/", depth="infinity")
    _lock(c, "/dav/shallow/", depth="0")
    assert _locked(_upload(c, "/deep/new.txt", b"x"))
    assert _locked(c.post("/api/v1/files/create_folder", json={"path": "/deep/sub"}))
    # A depth-0 lock on a folder protects its list of members, not their content.
    assert _locked(c.post("/api/v1/files/create_folder", json={"path": "/shallow/sub"}))
    assert _locked(_upload(c, "/shallow/new.txt", b"x"))
    assert _locked(_tus_create(c, "/shallow/new.txt", 1))
    assert _upload(c, "/shallow/old.txt", b"edited").status_code == 200
    assert c.get("/dav/deep/new.txt").status_code == 404
    assert c.get("/dav/shallow/new.txt").status_code == 404


def test_an_upload_under_way_stops_at_a_lock_taken_meanwhile(client: tuple[Engine, httpx.Client]) -> None:
    _, c = client
    r = _tus_create(c, "/late.bin", 10)
    assert r.status_code == 201
    where = r.headers["Location"]
    patch = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}
    assert c.patch(where, headers={**patch, "Upload-Offset": "0"}, content=b"12345").status_code == 204
    token = _lock(c, "/dav/late.bin")  # a lock on an unmapped URL: an empty file, locked
    assert _locked(c.patch(where, headers={**patch, "Upload-Offset": "5"}, content=b"67890"))
    assert c.get("/dav/late.bin").content == b""
    assert c.request("UNLOCK", "/dav/late.bin", headers={"Lock-Token": token}).status_code == 204
    assert c.patch(where, headers={**patch, "Upload-Offset": "5"}, content=b"67890").status_code == 204
    assert c.get("/dav/late.bin").content == b"1234567890"


def test_a_resumable_upload_keeps_its_chunks_but_not_its_end_while_the_file_is_locked(
    client: tuple[Engine, httpx.Client],
) -> None:
    _, c = client
    r = c.post("/api/v1/files/upload", params={"uploadType": "resumable", "path": "/r.bin"})
    session = r.headers["Location"]
    assert c.put(session, headers={"Content-Range": "bytes 0-4/10"}, content=b"12345").status_code == 308
    token = _lock(c, "/dav/r.bin")
    # A middle chunk changes no file; the last one would, and waits for the lock to go.
    assert _locked(c.put(session, headers={"Content-Range": "bytes 5-9/10"}, content=b"67890"))
    assert c.request("UNLOCK", "/dav/r.bin", headers={"Lock-Token": token}).status_code == 204
    done = c.put(session, headers={"Content-Range": "bytes 5-9/10"}, content=b"67890")
    assert done.status_code in (200, 201)
    assert c.get("/dav/r.bin").content == b"1234567890"


def test_another_accounts_lock_on_the_same_path_does_not_count(client: tuple[Engine, httpx.Client]) -> None:
    engine, c = client
    engine.volume("bob").write("same.txt", io.BytesIO(b"bob"))
    with httpx.Client(transport=c._transport, base_url=c.base_url, auth=("bob", "bob-password-1")) as bob:
        _lock(bob, "/dav/same.txt")
    assert _upload(c, "/same.txt", b"alice").status_code == 201


def test_a_trashed_file_does_not_come_back_into_a_locked_folder(client: tuple[Engine, httpx.Client]) -> None:
    engine, c = client
    engine.volume("alice").mkdir("d")
    engine.volume("alice").write("d/f.txt", io.BytesIO(b"f"))
    item = c.post("/api/v1/files/delete", json={"path": "/d/f.txt"}).json()["trash_id"]
    token = _lock(c, "/dav/d/", depth="infinity")
    assert _locked(c.post("/api/v1/trash/restore", json={"id": item}))  # to where it was
    assert c.get("/dav/d/f.txt").status_code == 404
    assert c.request("UNLOCK", "/dav/d/", headers={"Lock-Token": token}).status_code == 204
    assert c.post("/api/v1/trash/restore", json={"id": item}).status_code == 200
    assert c.get("/dav/d/f.txt").content == b"f"
