"""Two davserver nodes sharing PostgreSQL and a block store: files and locks are seen by both."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import PASSWORDS
from tests.e2e.harness import DavServer
from tests.storage.conftest import fresh_pg_database

LOCKINFO = (
    '<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
    "<D:locktype><D:write/></D:locktype><D:owner>node test</D:owner></D:lockinfo>"
)


@pytest.fixture(params=["sql-locks", "redis-locks"])
def nodes(
    request: pytest.FixtureRequest, tmp_path: Path, pg_url: str
) -> Iterator[tuple[DavServer, DavServer]]:
    env = {
        "DAVSERVER_DATABASE_URL": fresh_pg_database(pg_url),
        "DAVSERVER_BLOCKS_URL": f"file://{tmp_path / 'shared-blocks'}",
        "DAVSERVER_MASTER_KEY_FILE": str(tmp_path / "shared.key"),
    }
    settings = {}
    if request.param == "redis-locks":
        env["DAVSERVER_REDIS_URL"] = request.getfixturevalue("redis_url")
        settings["lock_storage"] = "redis"
        # The session's Redis serves many tests, each with its own database whose account and
        # node ids repeat: a namespace of its own keeps another test's cache entries and locks out.
        settings["redis_namespace"] = f"multinode-{secrets.token_hex(4)}"
    a = DavServer(tmp_path / "node-a", settings=settings, env=env)
    b = DavServer(tmp_path / "node-b", settings=settings, env=env)
    a.init()
    shutil.copy(a.data_dir / "master.key", tmp_path / "shared.key")
    b.init()
    a.add_account("alice", PASSWORDS["alice"])
    b.accounts["alice"] = PASSWORDS["alice"]
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


def _redis_lock_keys(url: str, namespace: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(f"{namespace}:wsgidav-lock:*"))
    finally:
        client.close()


def test_write_on_one_node_is_read_on_the_other(nodes: tuple[DavServer, DavServer]) -> None:
    a, b = nodes
    data = os.urandom(2 << 20)
    with a.client("alice") as ca, b.client("alice") as cb:
        assert ca.put("/dav/x.bin", content=data).status_code == 201
        r = cb.get("/dav/x.bin")
        assert r.content == data
        assert r.headers["ETag"] == ca.head("/dav/x.bin").headers["ETag"]


def test_lock_taken_on_one_node_holds_on_the_other(nodes: tuple[DavServer, DavServer]) -> None:
    a, b = nodes
    with a.client("alice") as ca, b.client("alice") as cb:
        ca.put("/dav/l.txt", content=b"v1")
        r = ca.request("LOCK", "/dav/l.txt", content=LOCKINFO, headers={"Timeout": "Second-300"})
        assert r.status_code == 200
        token = r.headers["Lock-Token"]
        redis_url = a.env.get("DAVSERVER_REDIS_URL")
        if redis_url:
            namespace = str(a.settings["redis_namespace"])
            assert _redis_lock_keys(redis_url, namespace), "the lock should live in Redis"
        assert cb.put("/dav/l.txt", content=b"v2").status_code == 423
        discovery = cb.request("PROPFIND", "/dav/l.txt", headers={"Depth": "0"}).text
        assert token.strip("<>") in discovery
        assert cb.put("/dav/l.txt", content=b"v2", headers={"If": f"({token})"}).status_code == 204
        assert cb.request("UNLOCK", "/dav/l.txt", headers={"Lock-Token": token}).status_code == 204
        assert ca.put("/dav/l.txt", content=b"v3").status_code == 204


def test_a_longpoll_on_one_node_wakes_on_a_commit_on_the_other(nodes: tuple[DavServer, DavServer]) -> None:
    """Through Redis pub/sub when configured, else through the journal poll (about a second)."""
    import threading

    a, b = nodes
    with a.client("alice") as ca, b.client("alice") as cb:
        cursor = cb.get("/api/v1/changes/latest_cursor").json()["cursor"]
        out: list[object] = []

        def poll() -> None:
            r = cb.get("/api/v1/changes/longpoll", params={"cursor": cursor, "timeout": 30})
            out.append(r.json())

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive(), out
        assert ca.put("/dav/from-a.txt", content=b"a").status_code == 201
        thread.join(15)
        assert out == [{"changes": True}]
        entries = cb.get("/api/v1/changes/list", params={"cursor": cursor}).json()["entries"]
        assert [(e["op"], e["path"]) for e in entries] == [("create", "/from-a.txt")]
