"""/api/v1/files/*: upload, metadata, revisions, download (ranges), restore, and errors."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from storage.engine import Engine


def _upload(api: httpx.Client, path: str, data: bytes, **params: str) -> httpx.Response:
    return api.post("/files/upload", params={"uploadType": "media", "path": path, **params}, content=data)


def test_revisions_round_trip(api: httpx.Client) -> None:
    """5 writes -> 5 revisions; revision 2 downloads as written; restore makes revision 6 equal to 2."""
    contents = [f"content number {i}\n".encode() * (100 * i + 1) for i in range(1, 6)]
    statuses = [_upload(api, "/notes.txt", c).status_code for c in contents]
    assert statuses == [201, 200, 200, 200, 200]
    listing = api.get("/files/list_revisions", params={"path": "/notes.txt"}).json()
    revs = listing["revisions"]
    assert len(revs) == 5 and listing["has_more"] is False
    assert [r["size"] for r in revs] == [len(c) for c in reversed(contents)]
    assert [r["content_sha256"] for r in revs] == [hashlib.sha256(c).hexdigest() for c in reversed(contents)]
    second = revs[3]["rev"]
    assert api.get("/files/download", params={"path": "/notes.txt", "rev": second}).content == contents[1]
    restored = api.post("/files/restore", json={"path": "/notes.txt", "rev": second})
    assert restored.status_code == 200
    assert restored.json()["content_sha256"] == hashlib.sha256(contents[1]).hexdigest()
    after = api.get("/files/list_revisions", params={"path": "/notes.txt"}).json()["revisions"]
    assert len(after) == 6 and after[0]["rev"] == restored.json()["rev"] and after[0]["is_current"]
    assert api.get("/files/download", params={"path": "/notes.txt"}).content == contents[1]
    page = api.get("/files/list_revisions", params={"path": "/notes.txt", "limit": 4}).json()
    assert len(page["revisions"]) == 4 and page["has_more"] is True
    older = api.get(
        "/files/list_revisions", params={"path": "/notes.txt", "before_rev": page["revisions"][-1]["rev"]}
    ).json()
    assert [r["rev"] for r in older["revisions"]] == [r["rev"] for r in after[4:]]


def test_metadata_of_a_live_and_a_deleted_file(api: httpx.Client, engine: Engine) -> None:
    data = b"x" * 1234
    up = _upload(api, "/a.bin", data, mtime="1600000000")
    meta = api.get("/files/metadata", params={"path": "/a.bin"}).json()
    assert meta == up.json()
    assert (meta["size"], meta["mtime"], meta["is_deleted"]) == (1234, 1_600_000_000, False)
    assert meta["content_sha256"] == hashlib.sha256(data).hexdigest()
    assert up.headers["ETag"] == meta["etag"]
    engine.volume("alice").delete("a.bin")
    gone = api.get("/files/metadata", params={"path": "/a.bin"}).json()
    assert gone["is_deleted"] is True and gone["rev"] == meta["rev"]
    revs = api.get("/files/list_revisions", params={"path": "/a.bin"}).json()["revisions"]
    assert len(revs) == 1 and not revs[0]["is_current"]
    assert api.get("/files/download", params={"path": "/a.bin"}).status_code == 404  # no current version
    old = api.get("/files/download", params={"path": "/a.bin", "rev": revs[0]["rev"]})
    assert old.status_code == 200 and old.content == data  # an old revision of a trashed file
    back = api.post("/files/restore", json={"path": "/a.bin", "rev": revs[0]["rev"]})
    assert back.status_code == 200 and back.json()["is_deleted"] is False
    assert api.get("/files/download", params={"path": "/a.bin"}).content == data


def test_download_ranges_and_conditions(api: httpx.Client) -> None:
    data = bytes(range(256)) * 1000
    etag = _upload(api, "/r.bin", data).headers["ETag"]
    get = lambda **headers: api.get("/files/download", params={"path": "/r.bin"}, headers=headers)  # noqa: E731
    whole = get()
    assert (whole.status_code, whole.content, whole.headers["ETag"]) == (200, data, etag)
    part = get(Range="bytes=1000-1999")
    assert (part.status_code, part.content) == (206, data[1000:2000])
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert get(Range="bytes=-10").content == data[-10:]
    assert get(Range="bytes=255990-").content == data[255990:]
    assert get(Range="bytes=5-1").status_code == 200  # invalid: ignored
    assert get(Range="bytes=0-1,5-6").status_code == 200  # several: whole file
    bad = get(Range=f"bytes={len(data)}-")
    assert bad.status_code == 416 and bad.headers["Content-Range"] == f"bytes */{len(data)}"
    assert bad.headers["Content-Type"] == "application/problem+json"
    assert get(**{"If-None-Match": etag}).status_code == 304
    assert get(Range="bytes=0-0", **{"If-Range": '"stale"'}).status_code == 200


def test_upload_conditions_and_limits(api: httpx.Client, engine: Engine) -> None:
    first = _upload(api, "/c.txt", b"one")
    etag = first.headers["ETag"]
    r = api.post(
        "/files/upload",
        params={"uploadType": "media", "path": "/c.txt"},
        content=b"two",
        headers={"If-Match": '"1-999"'},
    )
    assert r.status_code == 412 and r.json()["type"] == "urn:davserver:problem:precondition-failed"
    ok = api.post(
        "/files/upload",
        params={"uploadType": "media", "path": "/c.txt"},
        content=b"two",
        headers={"If-Match": etag},
    )
    assert ok.status_code == 200
    assert _upload(api, "/missing/c.txt", b"x").status_code == 409
    engine.accounts.set_quota("alice", 10)
    over = _upload(api, "/big.bin", b"z" * 100)
    assert over.status_code == 507 and over.json()["status"] == 507
    streamed = api.post(
        "/files/upload",
        params={"uploadType": "media", "path": "/big.bin"},
        content=iter([b"z" * 60, b"z" * 60]),
    )
    assert streamed.status_code == 507
    assert api.get("/files/metadata", params={"path": "/big.bin"}).status_code == 404


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "slug"),
    [
        ("GET", "/files/metadata", {}, 400, "bad-request"),
        ("GET", "/files/metadata", {"params": {"path": "/nope"}}, 404, "not-found"),
        ("GET", "/files/metadata?path=/a&path=/b", {}, 400, "bad-request"),
        ("GET", "/files/list_revisions", {"params": {"path": "/x", "limit": "-1"}}, 400, "bad-request"),
        ("GET", "/files/download", {"params": {"path": "/x", "rev": "abc"}}, 400, "bad-request"),
        (
            "POST",
            "/files/restore",
            {"content": b"{", "headers": {"Content-Type": "application/json"}},
            400,
            "bad-request",
        ),
        (
            "POST",
            "/files/restore",
            {"content": b"[]", "headers": {"Content-Type": "application/json"}},
            400,
            "bad-request",
        ),
        ("POST", "/files/restore", {"content": b"{}"}, 415, "unsupported-media-type"),
        ("POST", "/files/restore", {"json": {"path": "/x", "rev": True}}, 400, "bad-request"),
        ("POST", "/files/upload", {"params": {"uploadType": "multipart", "path": "/x"}}, 400, "bad-request"),
        ("DELETE", "/files/metadata", {}, 405, "method-not-allowed"),
        ("GET", "/nothing/here", {}, 404, "not-found"),
    ],
)
def test_bad_requests_get_problem_details(
    api: httpx.Client, method: str, url: str, kwargs: dict[str, object], status: int, slug: str
) -> None:
    r = api.request(method, url, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json()["type"] == f"urn:davserver:problem:{slug}" and r.json()["status"] == status


def test_accounts_see_only_their_own_files(api: httpx.Client, bob: httpx.Client) -> None:
    _upload(api, "/secret.txt", b"alice only")
    rev = api.get("/files/metadata", params={"path": "/secret.txt"}).json()["rev"]
    assert bob.get("/files/metadata", params={"path": "/secret.txt"}).status_code == 404
    assert bob.get("/files/download", params={"path": "/secret.txt", "rev": rev}).status_code == 404
    _upload(bob, "/secret.txt", b"bob's own")
    assert bob.get("/files/download", params={"path": "/secret.txt", "rev": rev}).status_code == 404
    assert bob.post("/files/restore", json={"path": "/secret.txt", "rev": rev}).status_code == 404
    assert api.get("/files/download", params={"path": "/secret.txt"}).content == b"alice only"


def test_credentials_are_required_except_for_the_document(transport: httpx.WSGITransport) -> None:
    with httpx.Client(transport=transport, base_url="http://127.0.0.1/api/v1") as anon:
        assert anon.get("/files/metadata", params={"path": "/x"}).status_code == 401
        assert anon.get("/openapi.json").status_code == 200
    with httpx.Client(
        transport=transport, base_url="http://127.0.0.1/api/v1", auth=("alice", "wrong-password")
    ) as wrong:
        assert wrong.get("/files/metadata", params={"path": "/x"}).status_code == 401


def test_every_storage_error_has_a_problem_type() -> None:
    """A new storage error must be given a status and a type, not fall through to 500."""
    from storage import errors
    from webcommon.problems import STORAGE_PROBLEMS, from_storage_error

    public = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.StorageError)]
    for cls in public:
        if cls is errors.StorageError:
            continue
        assert any(base in STORAGE_PROBLEMS for base in cls.__mro__), cls
        assert from_storage_error(cls("x")).status == next(
            STORAGE_PROBLEMS[b][0] for b in cls.__mro__ if b in STORAGE_PROBLEMS
        )


def test_trash_round_trip_through_the_api(api: httpx.Client, transport: httpx.WSGITransport) -> None:
    """A WebDAV delete lands in the API's trash; restore to the original path, then a clash."""
    _upload(api, "/t.txt", b"keep me")
    with httpx.Client(
        transport=transport, base_url="http://127.0.0.1", auth=("alice", "alice-password")
    ) as dav:
        assert dav.delete("/dav/t.txt").status_code == 204
    items = api.get("/trash").json()["items"]
    assert [(i["path"], i["size"], i["is_dir"]) for i in items] == [("/t.txt", 7, False)]
    restored = api.post("/trash/restore", json={"id": items[0]["id"]})
    assert restored.status_code == 200 and restored.json()["path"] == "/t.txt"
    assert api.get("/files/download", params={"path": "/t.txt"}).content == b"keep me"
    assert api.get("/trash").json()["items"] == []
    first = api.post("/files/delete", json={"path": "/t.txt"}).json()["trash_id"]
    _upload(api, "/t.txt", b"a new file in its place")
    clash = api.post("/trash/restore", json={"id": first})
    assert clash.status_code == 409 and clash.json()["type"] == "urn:davserver:problem:already-exists"
    assert api.get("/files/download", params={"path": "/t.txt"}).content == b"a new file in its place"


def test_tus_upload_with_if_match_commits_only_over_that_version(api: httpx.Client) -> None:
    import base64

    etag = _upload(api, "/m.txt", b"v1").headers["ETag"]
    tus = {"Tus-Resumable": "1.0.0", "Upload-Metadata": "path " + base64.b64encode(b"/m.txt").decode()}
    stale = api.post("/uploads/", headers={**tus, "Upload-Length": "2", "If-Match": '"0-0"'})
    assert stale.status_code == 412
    ok = api.post("/uploads/", headers={**tus, "Upload-Length": "2", "If-Match": etag})
    assert ok.status_code == 201
    _upload(api, "/m.txt", b"v2 sneaks in")
    octets = {
        "Tus-Resumable": "1.0.0",
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": "0",
    }
    late = api.patch("http://127.0.0.1" + ok.headers["Location"], headers=octets, content=b"v3")
    assert late.status_code == 412  # the target changed after the upload began
    assert api.get("/files/download", params={"path": "/m.txt"}).content == b"v2 sneaks in"
