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
from davserver.dav import fastlane
from storage.engine import Engine
from tests.davserver.inprocess import LOCKINFO
from tests.davserver.statements import statements
from tests.storage.conftest import EngineFactory

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


def test_a_locked_file_needs_its_token_and_other_files_do_not(clients: Clients) -> None:
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


def _lock(client: httpx.Client, path: str, depth: str = "0") -> str:
    r = client.request("LOCK", path, content=LOCKINFO, headers={"Timeout": "Second-60", "Depth": depth})
    assert r.status_code in (200, 201), r.text
    return r.headers["Lock-Token"]


def test_a_put_with_its_own_lock_token_takes_the_fast_lane(clients: Clients) -> None:
    """What davfs2, cadaver, Finder and Windows send for every file they write: LOCK, then
    PUT with the token in If. The fast lane answers it, with WsgiDAV's answers throughout."""
    engine, fast, slow = clients
    fast.put("/dav/doc.txt", content=b"v0")
    token = _lock(fast, "/dav/doc.txt")
    bare = token.strip("<>")
    for header in (f"({token})", f"<http://127.0.0.1/dav/doc.txt> ({token})", f"({bare})"):
        for client in (fast, slow):
            assert client.put("/dav/doc.txt", content=b"v", headers={"If": header}).status_code == 204, header
    # Fewer statements than WsgiDAV's path: the fast lane is the one answering.
    with_token = {"If": f"({token})"}
    seen_fast = statements(engine, lambda: fast.put("/dav/doc.txt", content=b"fast", headers=with_token))
    seen_slow = statements(engine, lambda: slow.put("/dav/doc.txt", content=b"slow", headers=with_token))
    assert len(seen_fast) < len(seen_slow), (seen_fast, seen_slow)

    # Whatever the lane does not take, WsgiDAV answers, the same for both apps.
    other = _lock(fast, "/dav/other.txt")  # a lock-null resource: an empty file, locked
    expected = {
        None: 423,  # locked, and no token
        "(<opaquelocktoken:stale>)": 412,  # a token that is no lock here
        f"({other})": 412,  # another file's lock
        f"(Not {token})": 412,
        f'({token} ["etag"])': 412,  # the token, but not that ETag
        # Tagged with another file: that list is about other.txt (RFC 4918 10.4.3), and the
        # token is submitted, so the write goes through.
        f"</dav/other.txt> ({token})": 204,
    }
    for header, status in expected.items():
        headers = {} if header is None else {"If": header}
        f = fast.put("/dav/doc.txt", content=b"no", headers=headers).status_code
        s = slow.put("/dav/doc.txt", content=b"no", headers=headers).status_code
        assert (f, s) == (status, status), (header, f, s)

    # A folder locked with depth infinity covers new files in it; depth 0 guards its members.
    fast.request("MKCOL", "/dav/deep/")
    fast.request("MKCOL", "/dav/shallow/")
    deep, shallow = _lock(fast, "/dav/deep/", "infinity"), _lock(fast, "/dav/shallow/", "0")
    for client, name in ((fast, "f.txt"), (slow, "s.txt")):
        assert client.put(f"/dav/deep/{name}", content=b"x").status_code == 423
        assert client.put(f"/dav/deep/{name}", content=b"x", headers={"If": f"({deep})"}).status_code == 201
        assert client.put(f"/dav/shallow/{name}", content=b"x").status_code == 423
        r = client.put(f"/dav/shallow/{name}", content=b"x", headers={"If": f"({shallow})"})
        assert r.status_code == 201
    assert sorted(e.name for e in engine.volume("alice").listdir("deep")) == ["f.txt", "s.txt"]


def test_a_lock_granted_after_the_lanes_look_up_gets_423_not_a_crash(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane decides from the request's lock snapshot; WsgiDAV's write check runs after
    (under its lock manager's lock). A LOCK granted in between is caught by that check: the
    body is still unread, so WsgiDAV answers 423 and the file keeps its content."""
    engine, fast, _ = clients
    fast.put("/dav/race.txt", content=b"before")
    _lock(fast, "/dav/race.txt")
    # Stand in for the interleaving: the lane's own look-up saw no lock.
    monkeypatch.setattr(fastlane, "_write_allowed", lambda *args: True)
    r = fast.put("/dav/race.txt", content=b"after")
    assert r.status_code == 423, r.text
    assert engine.volume("alice").open("race.txt").read() == b"before"
    assert fast.put("/dav/free.txt", content=b"x").status_code == 201  # nothing left open


def test_over_quota_while_streaming_keeps_the_old_version(clients: Clients) -> None:
    engine, fast, _ = clients
    fast.put("/dav/q.bin", content=b"old")
    engine.accounts.set_quota("alice", 50_000)
    r = fast.put("/dav/q.bin", content=iter([b"z" * 40_000, b"z" * 40_000]))
    assert r.status_code == 507
    assert r.headers.get("Connection") == "close"
    assert engine.volume("alice").open("q.bin").read() == b"old"
    assert len(engine.volume("alice").revisions("q.bin")) == 1
