"""The fast lane answers plain GET/HEAD/PUT itself and leaves everything else to WsgiDAV.

In-process (httpx's WSGI transport) on both databases: the answers are compared
with WsgiDAV's own for the same requests, and the statements are counted to prove
the fast lane is the one answering.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest

from davserver.app import AppSettings, create_app
from storage.engine import Engine
from tests.davserver.statements import statements
from tests.storage.conftest import EngineFactory

LOCKINFO = (
    '<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
    "<D:locktype><D:write/></D:locktype></D:lockinfo>"
)
Clients = tuple[Engine, httpx.Client, httpx.Client]


@pytest.fixture
def clients(make_engine: EngineFactory, database_url: str) -> Iterator[Clients]:
    """The same engine behind the default app and behind one without the fast lane.

    No metadata cache: statement counts here compare the two paths, not the cache.
    """
    engine = make_engine(database_url, local_cache_bytes=0)
    engine.accounts.create("alice", "alice-password")
    engine.accounts.create("bob", "bob-password-1")
    fast_app = create_app(engine, AppSettings())
    slow_app = create_app(engine, AppSettings(fast_lane=False))
    base = "http://127.0.0.1"
    auth = ("alice", "alice-password")
    with (
        httpx.Client(transport=httpx.WSGITransport(app=fast_app), base_url=base, auth=auth) as fast,
        httpx.Client(transport=httpx.WSGITransport(app=slow_app), base_url=base, auth=auth) as slow,
    ):
        fast.request("OPTIONS", "/dav/")  # warm the credential caches
        slow.request("OPTIONS", "/dav/")
        yield engine, fast, slow


def _comparable(r: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k.lower(): v for k, v in r.headers.items() if k.lower() not in ("date", "server")}
    return r.status_code, headers, r.content


def test_get_and_head_answer_exactly_like_wsgidav(clients: Clients) -> None:
    engine, fast, slow = clients
    vol = engine.volume("alice")
    vol.mkdir("docs")
    vol.write("docs/report.pdf", io.BytesIO(b"%PDF" + bytes(range(256)) * 40), mtime=1_600_000_000.5)
    vol.write("docs/empty", io.BytesIO(b""))
    vol.write("docs/n\u00e4me #1.txt", io.BytesIO("caf\u00e9".encode()))
    for path in ("/dav/docs/report.pdf", "/dav/docs/empty", "/dav/docs/n%C3%A4me%20%231.txt"):
        for method in ("GET", "HEAD"):
            assert _comparable(fast.request(method, path)) == _comparable(slow.request(method, path)), (
                method,
                path,
            )
    # What the fast lane leaves to WsgiDAV is still answered (by WsgiDAV).
    assert fast.get("/dav/docs/report.pdf", headers={"Range": "bytes=0-3"}).content == b"%PDF"
    etag = fast.head("/dav/docs/report.pdf").headers["ETag"]
    assert fast.get("/dav/docs/report.pdf", headers={"If-None-Match": etag}).status_code == 304
    assert fast.get("/dav/docs/missing").status_code == 404
    assert fast.get("/dav/docs/").status_code == 200  # the folder's HTML index


def test_plain_get_runs_no_transaction_and_no_lock_lookups(clients: Clients) -> None:
    engine, fast, slow = clients
    engine.volume("alice").write("f.txt", io.BytesIO(b"hello"))
    seen = statements(engine, lambda: fast.get("/dav/f.txt"))
    assert not any("lock_records" in s for s in seen)
    # The node look-up and the block list, with no BEGIN/ROLLBACK around them.
    assert statements(engine, lambda: fast.get("/dav/f.txt"), kind="begin") == []
    assert len(statements(engine, lambda: slow.get("/dav/f.txt"))) > len(seen)


def test_put_creates_then_overwrites_with_the_etag_a_get_sees(clients: Clients) -> None:
    engine, fast, _ = clients
    r = fast.put("/dav/new.txt", content=b"one", headers={"X-OC-Mtime": "1500000000"})
    assert r.status_code == 201
    created = r.headers["ETag"]
    assert fast.get("/dav/new.txt").headers["ETag"] == created
    assert engine.volume("alice").stat("new.txt").mtime == 1_500_000_000
    r = fast.put("/dav/new.txt", content=b"two")
    assert r.status_code == 204
    assert r.headers["ETag"] != created
    got = fast.get("/dav/new.txt")
    assert (got.content, got.headers["ETag"]) == (b"two", r.headers["ETag"])
    assert len(engine.volume("alice").revisions("new.txt")) == 2


def test_put_of_a_streamed_body_of_unknown_length(clients: Clients) -> None:
    engine, fast, _ = clients
    chunks = [b"a" * 100_000, b"b" * 5, b"c" * 70_000]
    r = fast.put("/dav/streamed.bin", content=iter(chunks))
    assert r.status_code == 201
    assert engine.volume("alice").open("streamed.bin").read() == b"".join(chunks)


def test_put_refused_before_the_body_gets_wsgidavs_answers(clients: Clients) -> None:
    engine, fast, slow = clients
    engine.volume("alice").mkdir("folder")
    cases = [
        ("/dav/nope/a.txt", {}),  # missing parent: 409
        ("/dav/folder", {}),  # a folder: 405
        ("/dav/", {}),  # the share root: 405
        ("/dav/folder/x", {"If-Match": '"nope"'}),  # precondition on a missing file: 412
    ]
    for path, headers in cases:
        f, s = fast.put(path, content=b"x", headers=headers), slow.put(path, content=b"x", headers=headers)
        assert f.status_code == s.status_code and f.status_code in (405, 409, 412), (path, f.status_code)
    assert engine.volume("alice").listdir("folder") == []


def test_conditions_the_engine_does_not_evaluate_go_to_wsgidav(clients: Clients) -> None:
    engine, fast, _ = clients
    etag = fast.put("/dav/c.txt", content=b"v1").headers["ETag"]
    assert fast.put("/dav/c.txt", content=b"v2", headers={"If-None-Match": etag}).status_code == 412
    listed = f'"other", {etag}'
    assert fast.put("/dav/c.txt", content=b"v2", headers={"If-Match": listed}).status_code == 204
    r = fast.put(
        "/dav/c.txt", content=b"v3", headers={"If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}
    )
    assert r.status_code == 412
    assert engine.volume("alice").open("c.txt").read() == b"v2"


def test_a_lock_in_the_account_sends_puts_through_wsgidavs_lock_checks(clients: Clients) -> None:
    engine, fast, _ = clients
    fast.put("/dav/locked.txt", content=b"mine")
    r = fast.request("LOCK", "/dav/locked.txt", content=LOCKINFO, headers={"Timeout": "Second-60"})
    assert r.status_code == 200
    token = r.headers["Lock-Token"]
    assert fast.put("/dav/locked.txt", content=b"theirs").status_code == 423
    assert fast.put("/dav/other.txt", content=b"free").status_code == 201
    assert fast.put("/dav/locked.txt", content=b"ok", headers={"If": f"({token})"}).status_code == 204
    assert engine.volume("alice").open("locked.txt").read() == b"ok"
    # Another account's locks are not alice's concern: bob's plain PUT takes the fast lane.
    with httpx.Client(
        transport=fast._transport, base_url="http://127.0.0.1", auth=("bob", "bob-password-1")
    ) as bob:
        assert bob.put("/dav/locked.txt", content=b"bob's").status_code == 201
        seen = statements(engine, lambda: bob.put("/dav/locked.txt", content=b"bob's 2"))
    assert sum("lock_records" in s for s in seen) == 1


def test_over_quota_while_streaming_keeps_the_old_version(clients: Clients) -> None:
    engine, fast, _ = clients
    fast.put("/dav/q.bin", content=b"old")
    engine.accounts.set_quota("alice", 50_000)
    r = fast.put("/dav/q.bin", content=iter([b"z" * 40_000, b"z" * 40_000]))
    assert r.status_code == 507
    assert r.headers.get("Connection") == "close"
    assert engine.volume("alice").open("q.bin").read() == b"old"
    assert len(engine.volume("alice").revisions("q.bin")) == 1
