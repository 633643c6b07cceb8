"""HTTP conditional and range requests on the WebDAV face, where WsgiDAV 4 gets them wrong.

In-process (httpx's WSGI transport). WsgiDAV answered an If-Modified-Since equal to
Last-Modified with the whole file, sent 304s without the ETag, answered 304 to any
method, and sent the last of several ranges in a 206 as if it were the answer. The
file's modification time has a fraction of a second, as every time a PUT records does;
HTTP dates have whole seconds.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest

from davserver.app import AppSettings, create_app
from davserver.wsgi import http_date
from tests.storage.conftest import EngineFactory

MTIME = 1_700_000_000.75
CONTENT = b"0123456789"


@pytest.fixture
def client(make_engine: EngineFactory, database_url: str) -> Iterator[httpx.Client]:
    engine = make_engine(database_url)
    engine.accounts.create("alice", "alice-password")
    engine.volume("alice").write("f.txt", io.BytesIO(CONTENT), mtime=MTIME)
    app = create_app(engine, AppSettings())
    with httpx.Client(
        transport=httpx.WSGITransport(app=app), base_url="http://127.0.0.1", auth=("alice", "alice-password")
    ) as c:
        yield c


def test_an_echoed_last_modified_is_not_modified(client: httpx.Client) -> None:
    first = client.get("/dav/f.txt")
    assert first.headers["Last-Modified"] == http_date(MTIME)
    echoed = {"If-Modified-Since": first.headers["Last-Modified"]}
    for method in ("GET", "HEAD"):
        r = client.request(method, "/dav/f.txt", headers=echoed)
        assert r.status_code == 304 and r.content == b""
        assert r.headers["ETag"] == first.headers["ETag"]  # RFC 9110 15.4.5
    for date in (http_date(MTIME - 1), "not a date"):
        r = client.get("/dav/f.txt", headers={"If-Modified-Since": date})
        assert r.status_code == 200 and r.content == CONTENT
    assert client.get("/dav/nope.txt", headers={"If-Modified-Since": http_date(MTIME)}).status_code == 404


def test_if_none_match_decides_over_if_modified_since(client: httpx.Client) -> None:
    etag = client.head("/dav/f.txt").headers["ETag"]
    for tags in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        r = client.get("/dav/f.txt", headers={"If-None-Match": tags})
        assert r.status_code == 304 and r.headers["ETag"] == etag, tags
    # No tag matches: If-Modified-Since is ignored (RFC 9110 13.2.2).
    r = client.get("/dav/f.txt", headers={"If-None-Match": '"other"', "If-Modified-Since": http_date(MTIME)})
    assert r.status_code == 200 and r.content == CONTENT
    assert client.put("/dav/f.txt", content=b"x", headers={"If-None-Match": etag}).status_code == 412


def test_if_modified_since_is_only_for_get_and_head(client: httpx.Client) -> None:
    later = {"If-Modified-Since": http_date(MTIME + 3600)}
    assert client.put("/dav/f.txt", content=b"put", headers=later).status_code in (200, 204)
    assert client.request("PROPFIND", "/dav/f.txt", headers={"Depth": "0", **later}).status_code == 207


def test_if_unmodified_since_at_whole_seconds(client: httpx.Client) -> None:
    r = client.put("/dav/f.txt", content=b"old", headers={"If-Unmodified-Since": http_date(MTIME - 1)})
    assert r.status_code == 412
    assert client.get("/dav/f.txt").content == CONTENT
    r = client.put("/dav/f.txt", content=b"new", headers={"If-Unmodified-Since": http_date(MTIME)})
    assert r.status_code in (200, 204)
    assert client.get("/dav/f.txt").content == b"new"


def test_several_ranges_get_the_whole_file(client: httpx.Client) -> None:
    r = client.get("/dav/f.txt", headers={"Range": "bytes=0-1,5-6"})
    assert r.status_code == 200 and r.content == CONTENT and "Content-Range" not in r.headers
    one = client.get("/dav/f.txt", headers={"Range": "bytes=5-6"})
    assert one.status_code == 206 and one.content == b"56"
    assert one.headers["Content-Range"] == "bytes 5-6/10"
    assert client.get("/dav/f.txt", headers={"Range": "bytes=-0,-0"}).status_code == 416
