"""Listings cost a fixed number of queries, however many entries (no N+1).

Runs the WSGI app in-process (httpx's WSGI transport) on both databases and
counts the SQL statements of one PROPFIND.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import httpx
import pytest

from davserver.app import AppSettings, create_app
from storage.engine import Engine
from tests.davserver.inprocess import LOCKINFO
from tests.davserver.statements import statements
from tests.storage.conftest import EngineFactory

PROPPATCH = (
    '<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:z="urn:z"><D:set><D:prop>'
    "<z:note>hello</z:note></D:prop></D:set></D:propertyupdate>"
)


@pytest.fixture
def setup(make_engine: EngineFactory, database_url: str) -> Iterator[tuple[Engine, httpx.Client]]:
    engine = make_engine(database_url)
    engine.accounts.create("alice", "alice-password")
    app = create_app(engine, AppSettings())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://127.0.0.1") as client:
        client.auth = ("alice", "alice-password")
        yield engine, client


def _fill(engine: Engine, folder: str, count: int) -> None:
    vol = engine.volume("alice")
    vol.mkdir(folder)
    for i in range(count):
        vol.write(f"{folder}/f{i:04d}", io.BytesIO(b"x" * i))
        if i % 3 == 0:
            vol.set_properties(f"{folder}/f{i:04d}", {"{urn:z}note": f"n{i}"})


def test_propfind_depth1_query_count_does_not_grow(setup: tuple[Engine, httpx.Client]) -> None:
    """An allprop PROPFIND: live properties, dead properties and lock discovery of every member."""
    engine, client = setup
    _fill(engine, "small", 5)
    _fill(engine, "large", 60)
    for folder in ("small", "large"):  # the same number of locks and folder properties in each
        r = client.request("LOCK", f"/dav/{folder}/f0001", content=LOCKINFO, headers={"Timeout": "Second-60"})
        assert r.status_code == 200
        assert client.request("PROPPATCH", f"/dav/{folder}", content=PROPPATCH).status_code == 207
    client.request("PROPFIND", "/dav/", headers={"Depth": "0"})  # warm the credential cache

    def propfind(folder: str) -> None:
        r = client.request("PROPFIND", f"/dav/{folder}/", headers={"Depth": "1"})
        assert r.status_code == 207

    small = len(statements(engine, lambda: propfind("small")))
    large = len(statements(engine, lambda: propfind("large")))
    assert large == small, (small, large)
    assert large <= 25
    r = client.request("PROPFIND", "/dav/large/", headers={"Depth": "1"})
    assert r.text.count("getcontentlength>") == 2 * 60
    assert "n57" in r.text and "opaquelocktoken" in r.text


@pytest.mark.parametrize(
    "body",
    [
        "<D:propname/>",  # WsgiDAV asks every folder whether it has a quota to name it
        "<D:prop><D:quota-used-bytes/><D:quota-available-bytes/><D:displayname/></D:prop>",
    ],
)
def test_quota_of_many_folders_is_read_once(setup: tuple[Engine, httpx.Client], body: str) -> None:
    engine, client = setup
    vol = engine.volume("alice")
    for folder, count in (("small", 3), ("large", 40)):
        vol.mkdir(folder)
        for i in range(count):
            vol.mkdir(f"{folder}/d{i:03d}")
    client.request("PROPFIND", "/dav/", headers={"Depth": "0"})  # warm the credential cache
    content = f'<?xml version="1.0"?><D:propfind xmlns:D="DAV:">{body}</D:propfind>'
    answers: list[int] = []  # how many responses name quota-used-bytes

    def propfind(folder: str) -> None:
        r = client.request("PROPFIND", f"/dav/{folder}/", headers={"Depth": "1"}, content=content)
        assert r.status_code == 207
        answers.append(len(re.findall(r"<(?:\w+:)?quota-used-bytes\b", r.text)))

    small = len(statements(engine, lambda: propfind("small")))
    large = len(statements(engine, lambda: propfind("large")))
    assert large == small, (small, large)
    assert answers == [4, 41]  # the folder and each subfolder name (or give) their quota


def test_lock_checks_cost_one_query_per_request(setup: tuple[Engine, httpx.Client]) -> None:
    """WsgiDAV checks a resource and every parent; the snapshot answers them all."""
    engine, client = setup
    vol = engine.volume("alice")
    vol.mkdir("a")
    vol.mkdir("a/b")
    client.request("PROPFIND", "/dav/", headers={"Depth": "0"})  # warm the credential cache
    put = statements(engine, lambda: client.put("/dav/a/b/new.txt", content=b"x"))
    assert sum("lock_records" in s for s in put) == 1
    get = statements(engine, lambda: client.get("/dav/a/b/new.txt"))
    assert sum("lock_records" in s for s in get) == 0
    # A lock held on a parent still stops the write.
    r = client.request(
        "LOCK", "/dav/a", content=LOCKINFO, headers={"Timeout": "Second-60", "Depth": "infinity"}
    )
    assert r.status_code == 200
    assert client.put("/dav/a/b/new.txt", content=b"y").status_code == 423
