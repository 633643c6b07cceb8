"""Scale-out, shown end to end: several real ``davserver serve`` processes on loopback
ports sharing one PostgreSQL database, one S3 (SeaweedFS) bucket prefix, one Redis and
one master key, as in DESIGN.md §1 ("every node is interchangeable: no sticky
sessions") and §6 (read-your-writes on every node; Redis down means slower, never
wrong).

Each cluster gets a fresh PostgreSQL database, a fresh S3 prefix, its own
``redis_namespace`` (cache keys and the pub/sub channel) and its own Redis database
number, emptied first (WsgiDAV's Redis lock keys carry no namespace): clusters of one
session never see each other's cached listings, locks or commit notifications.

Nothing waits for consistency: every read right after a write must already see it.
The only sleeps are in deadline loops waiting for a service to stop or start, or for
the metadata cache to come back after its documented bypass pause.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import secrets
import shutil
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import pytest

from tests import services
from tests.e2e.conftest import PASSWORDS
from tests.e2e.harness import DavServer
from tests.storage.conftest import fresh_pg_database

pytestmark = pytest.mark.services

MiB = 1 << 20
#: Rounds of the read-after-write test.
READ_AFTER_WRITE_ROUNDS = 500
#: How long the 8 concurrent clients overwrite and read (the issue asks for 60 s).
CONCURRENCY_SECONDS = 60.0
CONCURRENT_CLIENTS = 8
CONCURRENT_FILES = 50
#: Longest wait for a stopped service to come back into use.
SERVICE_DEADLINE = 60.0

TUS = {"Tus-Resumable": "1.0.0"}
DAV = "{DAV:}"
LOCKINFO = (
    '<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
    "<D:locktype><D:write/></D:locktype><D:owner>scale-out test</D:owner></D:lockinfo>"
)


# -- the cluster ---------------------------------------------------------------------------


@dataclass
class Cluster:
    nodes: list[DavServer]
    env: dict[str, str]

    def clients(self) -> list[httpx.Client]:
        return [n.client("alice", timeout=60.0) for n in self.nodes]

    def cli(self, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        """``python -m davserver.cli ARGS`` with exactly the environment the nodes run with."""
        node = self.nodes[0]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAVSERVER_")}
        env.update(node.env)
        return subprocess.run(
            [sys.executable, "-m", "davserver.cli", *args, "--data-dir", str(node.data_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def logs(self) -> str:
        return "\n".join(f"--- node {i} log (tail) ---\n{_tail(n.log)}" for i, n in enumerate(self.nodes))

    def stop(self) -> None:
        """SIGTERM to every node at once, then wait for each."""
        stoppers = [threading.Thread(target=node.stop) for node in self.nodes]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _redis_db_url(url: str, db: int) -> str:
    """The same Redis server, database number ``db``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def _flush_redis_db(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def start_cluster(
    root: Path,
    pg_url: str,
    s3_url: str,
    redis_url: str,
    *,
    redis_db: int,
    count: int,
    threads: int = 16,
    **settings: Any,
) -> Cluster:
    blocks_url = s3_url.replace("/blocks?", f"/scaleout-{secrets.token_hex(4)}?", 1)
    assert blocks_url != s3_url, s3_url
    env = {
        "DAVSERVER_DATABASE_URL": fresh_pg_database(pg_url),
        "DAVSERVER_BLOCKS_URL": blocks_url,
        "DAVSERVER_REDIS_URL": _redis_db_url(redis_url, redis_db),
        "DAVSERVER_MASTER_KEY_FILE": str(root / "shared.key"),
    }
    _flush_redis_db(env["DAVSERVER_REDIS_URL"])
    settings = {"threads": threads, "redis_namespace": f"scaleout-{secrets.token_hex(4)}", **settings}
    nodes = [DavServer(root / f"node-{i}", settings=settings, env=env) for i in range(count)]
    for i, node in enumerate(nodes):
        node.init()
        if i == 0:
            shutil.copy(node.data_dir / "master.key", root / "shared.key")
    nodes[0].add_account("alice", PASSWORDS["alice"])  # also applies the migrations
    for node in nodes[1:]:
        node.accounts["alice"] = PASSWORDS["alice"]
    cluster = Cluster(nodes, env)
    try:
        for node in nodes:
            node.start()
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    return cluster


ClusterFactory = Callable[..., Cluster]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, pg_url: str, s3_url: str, redis_url: str
) -> Iterator[Cluster]:
    """Three nodes shared by the tests that do not stop services."""
    c = start_cluster(tmp_path_factory.mktemp("scaleout"), pg_url, s3_url, redis_url, redis_db=1, count=3)
    yield c
    c.stop()
    assert_no_tracebacks(c)


@pytest.fixture
def own_cluster(tmp_path: Path, pg_url: str, s3_url: str, redis_url: str) -> Iterator[ClusterFactory]:
    """Two fresh nodes for a test that stops a service (its own database, prefix, Redis db)."""
    started: list[Cluster] = []

    def factory(redis_db: int, **settings: Any) -> Cluster:
        root = tmp_path / f"cluster-{len(started)}"
        root.mkdir()
        c = start_cluster(root, pg_url, s3_url, redis_url, redis_db=redis_db, count=2, threads=8, **settings)
        started.append(c)
        return c

    yield factory
    for c in started:
        c.stop()


# -- helpers -------------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def api_path(dav_path: str) -> str:
    assert dav_path.startswith("/dav/")
    return dav_path[len("/dav") :]


def propfind_children(client: httpx.Client, folder: str) -> dict[str, tuple[int, str]]:
    """``PROPFIND Depth: 1`` of a folder: {file name: (getcontentlength, getetag)}."""
    r = client.request("PROPFIND", folder + "/", headers={"Depth": "1"})
    assert r.status_code == 207, (r.status_code, r.text[:500])
    return parse_children(r)


def parse_children(r: httpx.Response) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for resp in ET.fromstring(r.content).iter(f"{DAV}response"):
        href = unquote(resp.findtext(f"{DAV}href") or "")
        length = resp.find(f".//{DAV}getcontentlength")
        etag = resp.find(f".//{DAV}getetag")
        if length is None:  # the folder itself (or a sub-folder)
            continue
        out[href.rstrip("/").rpartition("/")[2]] = (
            int(length.text or "-1"),
            (etag.text or "") if etag is not None else "",
        )
    return out


def same_etag(propfind_etag: str, header_etag: str) -> bool:
    """DAV:getetag is the entity-tag of the ETag header, quotes included (RFC 4918 15.6)."""
    return propfind_etag == header_etag and bool(header_etag)


def assert_one_revision(reader: httpx.Client, lister: httpx.Client, path: str, data: bytes) -> None:
    """The upload reads back whole through one node and is one revision as another lists it."""
    back = reader.get("/dav" + path)
    assert back.status_code == 200 and sha(back.content) == sha(data)
    revs = revisions(lister, path)
    assert len(revs) == 1 and revs[0]["content_sha256"] == sha(data), revs


def revisions(client: httpx.Client, path: str, limit: int = 1000) -> list[dict[str, Any]]:
    """Every revision of a file, newest first (all pages)."""
    out: list[dict[str, Any]] = []
    before: int | None = None
    while True:
        params: dict[str, Any] = {"path": path, "limit": limit}
        if before is not None:
            params["before_rev"] = before
        r = client.get("/api/v1/files/list_revisions", params=params)
        assert r.status_code == 200, (path, r.status_code, r.text)
        doc = r.json()
        out += doc["revisions"]
        if not doc["has_more"]:
            return out
        before = doc["revisions"][-1]["rev"]


def cache_hits(c: Cluster) -> int:
    """The metadata cache's hit counter of all nodes, as ``davserver stats`` prints it."""
    r = c.cli("stats", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for line in r.stdout.splitlines():
        if line.startswith("metadata cache"):
            return int(line.split()[2])
    raise AssertionError("davserver stats printed no metadata cache line:\n" + r.stdout + r.stderr)


def assert_fsck_clean(c: Cluster) -> None:
    r = c.cli("fsck", "--deep")
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"fsck --deep exit {r.returncode}:\n{out}"
    assert "PROBLEM" not in out and "problems 0" in out, out
    assert "Traceback" not in out, out


def assert_no_tracebacks(c: Cluster) -> None:
    """A dependency failing is expected and answered; an unhandled exception is not."""
    for i, node in enumerate(c.nodes):
        assert "Traceback" not in node.log, f"node {i} logged a traceback:\n{node.log}"


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = SERVICE_DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


# -- 1. read-after-write across nodes ------------------------------------------------------


def test_read_after_write_across_nodes(cluster: Cluster) -> None:
    """Round r writes on node r % n and reads at once on node (r + 1) % n: the body, the
    folder listing (size and ETag) and the revision list already show the new revision."""
    clients = cluster.clients()
    n = len(clients)
    folder = f"/dav/raw-{uuid.uuid4().hex[:8]}"
    paths = [f"{folder}/f{i}.bin" for i in range(4)]
    rng = random.Random(1)
    try:
        assert clients[0].request("MKCOL", folder).status_code == 201
        revision_count: dict[str, int] = defaultdict(int)
        previous_rev: dict[str, int] = {}
        for rnd in range(READ_AFTER_WRITE_ROUNDS):
            x, y = rnd % n, (rnd + 1) % n
            writer, reader = clients[x], clients[y]
            path = paths[rng.randrange(len(paths))]
            name = path.rpartition("/")[2]
            body = f"round {rnd} node {x}\n".encode() + os.urandom(rng.randrange(0, 8192))
            where = f"round {rnd}: PUT {path} on node {x}, read on node {y}"

            put = writer.put(path, content=body)
            assert put.status_code == (204 if revision_count[path] else 201), (
                where,
                put.status_code,
                put.text,
            )
            etag = put.headers.get("ETag", "")
            assert etag, (where, dict(put.headers))
            revision_count[path] += 1

            got = reader.get(path)
            assert got.status_code == 200, (where, got.status_code)
            assert got.content == body, f"{where}: GET returned other content ({len(got.content)} bytes)"
            assert got.headers["ETag"] == etag, (where, got.headers["ETag"], etag)

            listing = propfind_children(reader, folder)
            assert name in listing, (where, listing)
            size, listed_etag = listing[name]
            assert size == len(body), (where, "PROPFIND size", size, len(body))
            assert same_etag(listed_etag, etag), (where, "PROPFIND etag", listed_etag, etag)

            r = reader.get("/api/v1/files/list_revisions", params={"path": api_path(path), "limit": 2})
            assert r.status_code == 200, (where, r.status_code, r.text)
            revs = r.json()["revisions"]
            newest = revs[0]
            assert newest["content_sha256"] == sha(body), (where, "list_revisions", revs)
            assert newest["size"] == len(body) and newest["is_current"], (where, revs)
            if path in previous_rev:
                assert len(revs) == 2 and revs[1]["rev"] == previous_rev[path], (
                    where,
                    revs,
                    previous_rev[path],
                )
            previous_rev[path] = newest["rev"]

        # The ETag names the revision listed first: check it once per path via metadata.
        for path in paths:
            meta = clients[0].get("/api/v1/files/metadata", params={"path": api_path(path)}).json()
            assert meta["rev"] == previous_rev[path], (path, meta)
            assert len(revisions(clients[1], api_path(path))) == revision_count[path]
    finally:
        for c in clients:
            c.close()


# -- 2. an upload started on one node is finished on another --------------------------------


def test_resumable_upload_started_on_one_node_is_finished_on_another(cluster: Cluster) -> None:
    a_node, b_node, c_node = cluster.nodes
    data = os.urandom(12 * MiB + 4321)
    total = len(data)
    first, second = 5 * MiB, 9 * MiB
    path = f"/up-{uuid.uuid4().hex[:8]}-resumable.bin"
    with a_node.client("alice") as a, b_node.client("alice") as b, c_node.client("alice") as c:
        start = a.post(
            "/api/v1/files/upload",
            params={"uploadType": "resumable", "path": path},
            headers={"X-Upload-Content-Length": str(total)},
        )
        assert start.status_code == 200, start.text
        session = start.headers["Location"]
        assert urlsplit(session).netloc == "", f"the session URL should be node-neutral: {session}"

        part = a.put(session, headers={"Content-Range": f"bytes 0-{first - 1}/{total}"}, content=data[:first])
        assert part.status_code == 308, (part.status_code, part.text)
        assert part.headers["Range"] == f"bytes=0-{first - 1}"

        status = b.put(session, headers={"Content-Range": f"bytes */{total}"})
        assert status.status_code == 308, (status.status_code, status.text)
        assert status.headers["Range"] == f"bytes=0-{first - 1}", "node B sees node A's progress"

        part = b.put(
            session,
            headers={"Content-Range": f"bytes {first}-{second - 1}/{total}"},
            content=data[first:second],
        )
        assert part.status_code == 308 and part.headers["Range"] == f"bytes=0-{second - 1}", part.headers

        status = c.put(session, headers={"Content-Range": f"bytes */{total}"})
        assert status.status_code == 308 and status.headers["Range"] == f"bytes=0-{second - 1}"

        done = b.put(
            session, headers={"Content-Range": f"bytes {second}-{total - 1}/{total}"}, content=data[second:]
        )
        assert done.status_code == 201, (done.status_code, done.text)
        assert done.json()["content_sha256"] == sha(data)

        assert_one_revision(a, c, path, data)


def test_tus_upload_started_on_one_node_is_finished_on_another(cluster: Cluster) -> None:
    a_node, b_node, c_node = cluster.nodes
    data = os.urandom(12 * MiB + 777)
    total = len(data)
    first, second = 5 * MiB, 8 * MiB
    path = f"/up-{uuid.uuid4().hex[:8]}-tus.bin"
    octets = {"Content-Type": "application/offset+octet-stream", **TUS}
    with a_node.client("alice") as a, b_node.client("alice") as b, c_node.client("alice") as c:
        created = a.post(
            "/api/v1/uploads/",
            headers={
                "Upload-Length": str(total),
                "Upload-Metadata": "path " + base64.b64encode(path.encode()).decode(),
                **TUS,
            },
        )
        assert created.status_code == 201, (created.status_code, created.text)
        url = urlsplit(created.headers["Location"]).path  # same upload, asked on every node

        p = a.patch(url, headers={"Upload-Offset": "0", **octets}, content=data[:first])
        assert p.status_code == 204 and p.headers["Upload-Offset"] == str(first), (p.status_code, p.text)

        head = b.head(url, headers=TUS)
        assert head.status_code == 200, head.status_code
        assert head.headers["Upload-Offset"] == str(first), "node B sees node A's offset"
        assert head.headers["Upload-Length"] == str(total)

        p = b.patch(url, headers={"Upload-Offset": str(first), **octets}, content=data[first:second])
        assert p.status_code == 204 and p.headers["Upload-Offset"] == str(second), (p.status_code, p.text)

        stale = c.patch(
            url, headers={"Upload-Offset": str(first), **octets}, content=data[first : first + 1000]
        )
        assert stale.status_code == 409, "node C must refuse an offset node B already moved past"
        head = a.head(url, headers=TUS)
        assert head.headers["Upload-Offset"] == str(second), "node A sees node B's offset"

        p = b.patch(url, headers={"Upload-Offset": str(second), **octets}, content=data[second:])
        assert p.status_code == 204 and p.headers["Upload-Offset"] == str(total), (p.status_code, p.text)

        assert_one_revision(a, c, path, data)


# -- 3. a lock taken on one node holds on the others ----------------------------------------


def test_lock_taken_on_one_node_holds_on_the_others(cluster: Cluster) -> None:
    a_node, b_node, c_node = cluster.nodes
    path = f"/dav/lock-{uuid.uuid4().hex[:8]}.txt"
    with a_node.client("alice") as a, b_node.client("alice") as b, c_node.client("alice") as c:
        assert a.put(path, content=b"v1").status_code == 201
        r = a.request("LOCK", path, content=LOCKINFO, headers={"Timeout": "Second-300"})
        assert r.status_code == 200, (r.status_code, r.text)
        token = r.headers["Lock-Token"]

        refused = b.put(path, content=b"intruder")
        assert refused.status_code == 423, (refused.status_code, refused.text)
        assert c.put(path, content=b"intruder").status_code == 423
        assert a.put(path, content=b"intruder").status_code == 423, "no token, even on the locking node"
        assert b.get(path).content == b"v1"

        ok = b.put(path, content=b"v2", headers={"If": f"({token})"})
        assert ok.status_code == 204, (ok.status_code, ok.text)
        assert c.get(path).content == b"v2"

        unlocked = b.request("UNLOCK", path, headers={"Lock-Token": token})
        assert unlocked.status_code == 204, (unlocked.status_code, unlocked.text)
        after = a.put(path, content=b"v3")
        assert after.status_code == 204, (after.status_code, after.text)
        assert c.get(path).content == b"v3"
        assert [r["content_sha256"] for r in revisions(b, api_path(path))] == [
            sha(b"v3"),
            sha(b"v2"),
            sha(b"v1"),
        ]


# -- 4. Redis down: slower, never wrong ------------------------------------------------------


@pytest.mark.parametrize("lock_storage", ["sql", "redis"])
def test_redis_down_keeps_answers_correct_and_the_cache_comes_back(
    own_cluster: ClusterFactory, redis_service: services.Service, lock_storage: str
) -> None:
    """Redis carries the metadata cache and commit notifications, and with
    ``lock_storage = "redis"`` the WebDAV locks. While it is down, answers stay correct:
    GETs and the API never fail. With SQL locks (the default) nothing may fail at all, and
    a LOCK granted meanwhile holds on the other node. With Redis locks the lock store
    itself is down: a request that needs it may be refused, but only with 503 and
    Retry-After (never a 500), and a PUT without the token of a lock taken before the
    outage must never succeed."""
    if not redis_service.controllable:
        pytest.fail(
            "this test stops and restarts Redis: run it with the test session's own Redis "
            "(unset DAVSERVER_TEST_REDIS_URL)"
        )
    cl = own_cluster(2 if lock_storage == "sql" else 3, lock_storage=lock_storage)
    may_refuse = lock_storage == "redis"
    a_node, b_node = cl.nodes
    folder = "/dav/r"
    paths = [f"{folder}/f{i}.bin" for i in range(4)]
    held = f"{folder}/held.bin"  # locked before the outage, on node 0
    expected: dict[str, bytes] = {}  # path -> body of its last acknowledged PUT
    etags: dict[str, str] = {}
    # Wrong answers fail at once; refusals are collected, with an example per kind.
    refusals: dict[str, list[str]] = defaultdict(list)

    def refused(kind: str, r: httpx.Response, what: str) -> None:
        if may_refuse and r.status_code == 503 and r.headers.get("Retry-After", "").strip().isdigit():
            return  # the lock store is down: a transient refusal, properly worded
        refusals[kind].append(
            f"{what} -> {r.status_code} after {r.elapsed.total_seconds():.1f} s {r.text[:300]!r}"
        )

    with a_node.client("alice") as a, b_node.client("alice") as b:
        assert a.request("MKCOL", folder).status_code == 201
        for path in [*paths, held]:
            expected[path] = os.urandom(1000)
            put = a.put(path, content=expected[path])
            assert put.status_code == 201
            etags[path] = put.headers["ETag"]
        propfind_children(b, folder)
        propfind_children(a, folder)
        lock = a.request("LOCK", held, content=LOCKINFO, headers={"Timeout": "Second-600"})
        assert lock.status_code == 200, (lock.status_code, lock.text)
        held_token = lock.headers["Lock-Token"]

        redis_service.stop()
        try:
            assert not redis_service.running
            # Redis is optional: the node stays ready, and says what is missing.
            ready = b.get("/readyz")
            assert ready.status_code == 200 and ready.json()["redis"].startswith("down"), ready.text
            # (Fewer rounds with Redis locks: there each failing request took ~4 s.)
            for rnd in range(30 if lock_storage == "sql" else 2):
                path = paths[rnd % len(paths)]
                name = path.rpartition("/")[2]
                body = f"redis down, round {rnd}\n".encode() + os.urandom(2000 + rnd)
                where = f"Redis down, round {rnd}"
                put = a.put(path, content=body)
                if put.status_code == 204:
                    expected[path], etags[path] = body, put.headers["ETag"]
                else:
                    refused("PUT", put, f"{where}: PUT {path} on node 0")

                got = b.get(path)
                if got.status_code != 200:
                    refusals["GET"].append(f"{where}: GET {path} on node 1 -> {got.status_code}")
                else:
                    assert got.content == expected[path], f"{where}: GET on node 1 returned other content"
                    assert got.headers["ETag"] == etags[path], (where, got.headers["ETag"], etags[path])

                r = b.request("PROPFIND", folder + "/", headers={"Depth": "1"})
                if r.status_code != 207:
                    refused("PROPFIND", r, f"{where}: PROPFIND {folder}/ on node 1")
                else:
                    size, listed_etag = parse_children(r)[name]
                    assert size == len(expected[path]), (where, "PROPFIND size", size)
                    assert same_etag(listed_etag, etags[path]), (where, "PROPFIND etag", listed_etag)

                r = b.get("/api/v1/files/list_revisions", params={"path": api_path(path), "limit": 1})
                if r.status_code != 200:
                    refusals["list_revisions"].append(f"{where}: list_revisions on node 1 -> {r.status_code}")
                else:
                    newest = r.json()["revisions"][0]
                    assert newest["content_sha256"] == sha(expected[path]), (where, newest)

            # The lock taken before the outage still protects its file.
            intruder = b.put(held, content=b"intruder")
            assert not intruder.is_success, "a PUT without the lock token overwrote a locked file"
            assert a.get(held).content == expected[held]
            if intruder.status_code != 423:
                refused("PUT of a locked file", intruder, f"PUT {held} without its lock token on node 1")
            assert a.get(held).content == expected[held]

            # A lock asked for now is either granted, and then holds on the other node, or
            # refused with 503 (only where the locks live in Redis).
            lock = a.request("LOCK", paths[0], content=LOCKINFO, headers={"Timeout": "Second-60"})
            if lock.status_code == 200:
                token = lock.headers["Lock-Token"]
                other = b.put(paths[0], content=b"intruder")
                assert other.status_code == 423, (
                    "a LOCK granted while Redis is down does not hold on the other node: "
                    f"PUT -> {other.status_code}"
                )
                body = b"with the token\n" + os.urandom(100)
                put = b.put(paths[0], content=body, headers={"If": f"({token})"})
                if put.status_code == 204:
                    expected[paths[0]], etags[paths[0]] = body, put.headers["ETag"]
                else:
                    refused("PUT with token", put, "PUT with the lock token on node 1")
                unlock = b.request("UNLOCK", paths[0], headers={"Lock-Token": token})
                if unlock.status_code != 204:
                    refused("UNLOCK", unlock, "UNLOCK on node 1")
            else:
                refused("LOCK", lock, f"LOCK {paths[0]} on node 0 while Redis is down")
        finally:
            redis_service.start()
        assert redis_service.running
        outage_logs = cl.logs()

        # Redis restarts empty: the counters restart at 0. PROPFINDs go through the cache
        # again once each node's bypass pause (5 s) is over: hits must grow.
        hits = cache_hits(cl)

        def used_again() -> bool:
            for _ in range(5):
                propfind_children(a, folder)
                propfind_children(b, folder)
            return cache_hits(cl) > hits

        wait_for(
            used_again, "the metadata cache (davserver stats hits) to be used again after Redis came back"
        )
        for path in paths:
            assert b.get(path).content == expected[path]

        if lock_storage == "sql":
            # The lock taken before the outage outlived it; release it.
            assert b.put(held, content=b"intruder").status_code == 423
            assert b.request("UNLOCK", held, headers={"Lock-Token": held_token}).status_code == 204
        # (With Redis locks, the test's Redis runs without persistence: that lock is gone.)

        # Locks work again after the restart, across nodes.
        path = paths[1]
        lock = a.request("LOCK", path, content=LOCKINFO, headers={"Timeout": "Second-60"})
        assert lock.status_code == 200, (
            f"LOCK after Redis is back: {lock.status_code} {lock.text!r}\n{cl.logs()}"
        )
        token = lock.headers["Lock-Token"]
        assert b.put(path, content=b"x").status_code == 423
        assert b.request("UNLOCK", path, headers={"Lock-Token": token}).status_code == 204
        assert b.put(path, content=b"after").status_code == 204
        assert a.get(path).content == b"after"
    assert not refusals, (
        f"while Redis was down (lock_storage = {lock_storage!r}):\n"
        + "\n".join(f"{kind}: {len(msgs)} refused, first: {msgs[0]}" for kind, msgs in refusals.items())
        + "\n"
        + outage_logs
    )
    assert_no_tracebacks(cl)


# -- 5. S3 down: 503 + Retry-After, nothing committed, metadata reads keep working -----------


def test_s3_down_refuses_writes_with_503_and_commits_nothing(
    own_cluster: ClusterFactory, s3_service: services.Service
) -> None:
    if not s3_service.controllable:
        pytest.fail(
            "this test stops and restarts S3: run it with the test session's own SeaweedFS "
            "(unset DAVSERVER_TEST_S3_URL)"
        )
    cl = own_cluster(4)
    a_node, b_node = cl.nodes
    folder = "/dav/s3"
    old = b"old\n" + os.urandom(100_000)
    problems: list[str] = []
    with a_node.client("alice") as a, b_node.client("alice") as b:
        assert a.request("MKCOL", folder).status_code == 201
        put = a.put(f"{folder}/old.bin", content=old)
        assert put.status_code == 201
        old_etag = put.headers["ETag"]
        assert len(revisions(b, "/s3/old.bin")) == 1
        # A tus upload with its first MiB stored before the outage.
        tus_data = os.urandom(3 * MiB)
        octets = {"Content-Type": "application/offset+octet-stream", **TUS}
        created = a.post(
            "/api/v1/uploads/",
            headers={
                "Upload-Length": str(len(tus_data)),
                "Upload-Metadata": "path " + base64.b64encode(b"/s3/tus.bin").decode(),
                **TUS,
            },
        )
        assert created.status_code == 201, created.text
        tus_url = urlsplit(created.headers["Location"]).path
        p = a.patch(tus_url, headers={"Upload-Offset": "0", **octets}, content=tus_data[:MiB])
        assert p.status_code == 204 and p.headers["Upload-Offset"] == str(MiB), (p.status_code, p.text)

        assert a.get("/readyz").json() == {"ready": True, "database": "ok", "blocks": "ok", "redis": "ok"}
        s3_service.stop()
        try:
            assert not s3_service.running
            # The balancer's readiness probe takes the nodes out while their store is down.
            ready = a.get("/readyz")
            assert ready.status_code == 503 and ready.json()["blocks"].startswith("down"), ready.text
            # Fresh random bodies under the chunker's minimum block: the whole body is read
            # before the one block is stored, so the server can answer before closing.
            for client, target, label in ((a, "old.bin", "overwrite"), (b, "new.bin", "new file")):
                refused = client.put(f"{folder}/{target}", content=b"new\n" + os.urandom(100_000))
                if refused.status_code != 503:
                    problems.append(
                        f"PUT ({label}) while S3 is down answered {refused.status_code}, "
                        f"expected 503: {refused.text[:300]!r}"
                    )
                elif not refused.headers.get("Retry-After", "").strip().isdigit():
                    problems.append(
                        f"PUT ({label}) while S3 is down: 503 without a Retry-After header "
                        f"(headers {dict(refused.headers)}, body {refused.text[:200]!r})"
                    )
            media = b.post(
                "/api/v1/files/upload",
                params={"uploadType": "media", "path": "/s3/media.bin"},
                content=os.urandom(100_000),
            )
            if media.status_code != 503 or not media.headers.get("Retry-After", "").strip().isdigit():
                problems.append(
                    f"API media upload while S3 is down: {media.status_code} "
                    f"Retry-After={media.headers.get('Retry-After')!r}"
                )

            patch = b.patch(
                tus_url, headers={"Upload-Offset": str(MiB), **octets}, content=tus_data[MiB : MiB + 100_000]
            )
            if patch.status_code != 503 or not patch.headers.get("Retry-After", "").strip().isdigit():
                problems.append(
                    f"tus PATCH while S3 is down: {patch.status_code} "
                    f"Retry-After={patch.headers.get('Retry-After')!r} {patch.text[:200]!r}"
                )
            head = a.head(tus_url, headers=TUS)
            assert head.status_code == 200 and head.headers["Upload-Offset"] == str(MiB), (
                "the upload's offset must not move on a failed PATCH",
                head.status_code,
                dict(head.headers),
            )

            # Metadata-only reads keep working: the folder listing, metadata, revisions.
            listing = propfind_children(b, folder)
            assert set(listing) == {"old.bin"}, listing
            assert listing["old.bin"][0] == len(old) and same_etag(listing["old.bin"][1], old_etag), listing
            listing = propfind_children(a, folder)
            assert set(listing) == {"old.bin"}, listing
            meta = a.get("/api/v1/files/metadata", params={"path": "/s3/old.bin"})
            assert meta.status_code == 200 and meta.json()["etag"] == old_etag, meta.text
            assert len(revisions(b, "/s3/old.bin")) == 1
            assert b.get("/api/v1/files/metadata", params={"path": "/s3/new.bin"}).status_code == 404

            # Every refusal so far was an answered error, not an unhandled exception.
            assert_no_tracebacks(cl)

            # A GET needs the blocks: the first one is fetched before the headers go out, so
            # the answer is a clean 503 with Retry-After, never a 200 that breaks off.
            got = b.get(f"{folder}/old.bin")
            assert got.status_code == 503, got.text
            assert got.headers.get("Retry-After", "").strip().isdigit()
            # The same through WsgiDAV's GET (a Range, a condition) and through the API.
            for headers in ({"Range": "bytes=100-199"}, {"If-Match": old_etag}):
                got = b.get(f"{folder}/old.bin", headers=headers)
                assert got.status_code == 503, (headers, got.status_code, got.text[:200])
                assert got.headers.get("Retry-After", "").strip().isdigit()
            got = b.get("/api/v1/files/download", params={"path": "/s3/old.bin"})
            assert got.status_code == 503, got.text[:200]
            assert_no_tracebacks(cl)
        finally:
            s3_service.start()
        assert s3_service.running

        # Nothing was committed.
        for client in (a, b):
            got = client.get(f"{folder}/old.bin")
            assert got.status_code == 200 and got.content == old and got.headers["ETag"] == old_etag
            assert client.get(f"{folder}/new.bin").status_code == 404
            assert client.get("/api/v1/files/metadata", params={"path": "/s3/media.bin"}).status_code == 404
        assert len(revisions(a, "/s3/old.bin")) == 1
        assert set(propfind_children(a, folder)) == {"old.bin"}

        # Writes succeed again on the same (not restarted) processes.
        assert a_node.alive() and b_node.alive()
        newer = b"newer\n" + os.urandom(300_000)
        put = a.put(f"{folder}/old.bin", content=newer)
        assert put.status_code == 204, f"PUT after S3 is back: {put.status_code} {put.text!r}\n{cl.logs()}"
        assert b.get(f"{folder}/old.bin").content == newer
        fresh = os.urandom(2 * MiB)
        assert b.put(f"{folder}/new.bin", content=fresh).status_code == 201
        assert a.get(f"{folder}/new.bin").content == fresh
        assert [r["content_sha256"] for r in revisions(b, "/s3/old.bin")] == [sha(newer), sha(old)]

        # The tus upload resumes where the server says it stands, on the other node.
        offset = int(b.head(tus_url, headers=TUS).headers["Upload-Offset"])
        assert offset == MiB
        p = b.patch(tus_url, headers={"Upload-Offset": str(offset), **octets}, content=tus_data[offset:])
        assert p.status_code == 204 and p.headers["Upload-Offset"] == str(len(tus_data)), (
            p.status_code,
            p.text,
        )
        assert a.get(f"{folder}/tus.bin").content == tus_data
    assert_fsck_clean(cl)
    assert not problems, "\n".join(problems) + "\n" + cl.logs()


# -- 6. eight clients overwrite and read 50 files on all nodes -------------------------------


@dataclass
class Write:
    path: str
    body_sha: str
    writer: int
    seq: int
    sent: float  # time.monotonic() just before the request was sent
    acked: float | None = None  # just after its 2xx answer arrived; None: no (or no 2xx) answer
    etag: str = ""
    status: int | None = None
    size: int = 0


@dataclass
class Read:
    path: str
    node: int
    started: float
    ended: float
    body_sha: str
    etag: str
    head: bytes


@dataclass
class History:
    lock: threading.Lock = field(default_factory=threading.Lock)
    by_sha: dict[str, Write] = field(default_factory=dict)
    writes: dict[str, list[Write]] = field(default_factory=lambda: defaultdict(list))
    reads: list[Read] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def sending(self, w: Write) -> None:
        """Recorded *before* the request goes out: a GET may see it as soon as it commits."""
        with self.lock:
            assert w.body_sha not in self.by_sha
            self.by_sha[w.body_sha] = w
            self.writes[w.path].append(w)


def _body(path: str, writer: int, seq: int, rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.70:
        size = rng.randrange(1, 32 << 10)
    elif roll < 0.95:
        size = rng.randrange(64 << 10, 512 << 10)
    else:
        size = rng.randrange(1 * MiB, 3 * MiB)  # several content-defined blocks
    return f"{path} writer={writer} seq={seq}\n".encode() + os.urandom(size)


def _put(client: httpx.Client, history: History, path: str, writer: int, seq: int, body: bytes) -> None:
    w = Write(path, sha(body), writer, seq, sent=0.0, size=len(body))
    w.sent = time.monotonic()
    history.sending(w)
    try:
        r = client.put(path, content=body)
    except httpx.HTTPError as exc:
        history.errors.append(f"PUT {path} writer {writer} seq {seq}: {exc!r}")
        return
    now = time.monotonic()
    w.status = r.status_code
    if r.status_code in (201, 204):
        w.etag = r.headers.get("ETag", "")
        w.acked = now
    else:
        history.errors.append(f"PUT {path} writer {writer} seq {seq}: {r.status_code} {r.text[:200]!r}")


def _worker(
    node_index: int, node: DavServer, writer: int, paths: list[str], history: History, until: float
) -> None:
    rng = random.Random(writer)
    seq = 0
    try:
        with node.client("alice", timeout=60.0) as client:
            while time.monotonic() < until:
                path = paths[rng.randrange(len(paths))]
                if rng.random() < 0.5:
                    seq += 1
                    _put(client, history, path, writer, seq, _body(path, writer, seq, rng))
                    continue
                started = time.monotonic()
                try:
                    r = client.get(path)
                except httpx.HTTPError as exc:
                    history.errors.append(f"GET {path} on node {node_index}: {exc!r}")
                    continue
                ended = time.monotonic()
                if r.status_code != 200:
                    history.errors.append(f"GET {path} on node {node_index}: {r.status_code}")
                    continue
                history.reads.append(
                    Read(
                        path,
                        node_index,
                        started,
                        ended,
                        sha(r.content),
                        r.headers.get("ETag", ""),
                        r.content[:80],
                    )
                )
    except Exception as exc:
        history.errors.append(f"client thread {writer} crashed: {exc!r}")


def _superseded_before(w: Write, moment: float, others: list[Write]) -> Write | None:
    """A write of the same path that surely committed after ``w`` and before ``moment``.

    A PUT commits somewhere between its ``sent`` and ``acked`` times (the server answers
    only after the commit, DESIGN §4/§6). So a write ``w2`` sent after ``w`` was
    acknowledged committed after ``w``; if ``w2`` was also acknowledged before
    ``moment``, ``w`` was no longer current at ``moment``. Writes overlapping ``w`` in
    time prove nothing either way: their commit order is unknown.
    """
    if w.acked is None:
        return None
    for w2 in others:
        if w2 is not w and w2.acked is not None and w2.sent > w.acked and w2.acked < moment:
            return w2
    return None


def test_eight_clients_overwrite_and_read_fifty_files_on_all_nodes(cluster: Cluster) -> None:
    """The nginx-style torn-file test (DESIGN §10), across nodes. Each PUT body is unique
    (a header naming path, writer and sequence, then random bytes) and is registered
    before it is sent, so a GET racing a committed-but-unanswered PUT is accounted for.

    Order is judged by each request's own interval on this process's monotonic clock:
    the server commits a PUT somewhere between the moment it was sent and the moment its
    2xx answer arrived (the answer follows the commit, DESIGN §6). That brackets the
    commit exactly, where the server's Date header (1 s resolution, from another clock)
    could not order commits milliseconds apart."""
    nodes = cluster.nodes
    folder = f"/dav/conc-{uuid.uuid4().hex[:8]}"
    paths = [f"{folder}/f{i:02d}.bin" for i in range(CONCURRENT_FILES)]
    history = History()
    with nodes[0].client("alice") as seed:
        assert seed.request("MKCOL", folder).status_code == 201
        rng = random.Random(-1)
        for i, path in enumerate(paths):
            _put(seed, history, path, -1, i, _body(path, -1, i, rng))
    assert not history.errors, history.errors

    until = time.monotonic() + CONCURRENCY_SECONDS
    threads = [
        threading.Thread(
            target=_worker,
            args=(i % len(nodes), nodes[i % len(nodes)], i, paths, history, until),
            name=f"client-{i}",
        )
        for i in range(CONCURRENT_CLIENTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CONCURRENCY_SECONDS + 300)
        assert not t.is_alive(), f"{t.name} is still running"

    puts = sum(len(ws) for ws in history.writes.values()) - len(paths)
    gets = len(history.reads)
    assert not history.errors, f"{len(history.errors)} failed requests, e.g.:\n" + "\n".join(
        history.errors[:20]
    )
    assert puts > 100 and gets > 100, (puts, gets)

    t0 = until - CONCURRENCY_SECONDS

    def at(moment: float | None) -> str:
        return "never" if moment is None else f"{moment - t0:.3f} s"

    # Every GET returned exactly the body of one PUT of that path: never bytes no client sent,
    # never a mix of two bodies, never another path's body; with the ETag that PUT got; and
    # never a body that had surely been overwritten before the GET began.
    bad: list[str] = []
    for rd in history.reads:
        w = history.by_sha.get(rd.body_sha)
        if w is None:
            bad.append(f"GET {rd.path} on node {rd.node} returned bytes no client sent (starts {rd.head!r})")
            continue
        if w.path != rd.path:
            bad.append(f"GET {rd.path} on node {rd.node} returned the body written to {w.path}")
            continue
        if w.sent > rd.ended:
            bad.append(f"GET {rd.path} returned a body sent only after the GET had ended")
        if rd.etag != w.etag:
            bad.append(
                f"GET {rd.path} on node {rd.node}: ETag {rd.etag} but its body was PUT with ETag {w.etag}"
            )
        newer = _superseded_before(w, rd.started, history.writes[rd.path])
        if newer is not None:
            bad.append(
                f"GET {rd.path} on node {rd.node} (started at {at(rd.started)}) returned writer {w.writer} "
                f"seq {w.seq} (acknowledged at {at(w.acked)}), but writer {newer.writer} seq {newer.seq} "
                f"was sent after that and acknowledged at {at(newer.acked)}: a stale read"
            )
    assert not bad, f"{len(bad)} bad reads of {gets}, e.g.:\n" + "\n".join(bad[:20])

    # The end state. The last acknowledged write wins, where "last" is only defined up to
    # overlap: a write w is a possible winner iff no other write of the path was sent after
    # w was acknowledged (such a write surely committed after w). Two PUTs whose
    # [sent, acked] intervals overlap may commit in either order, so either may be current.
    # The revision history must hold every acknowledged write exactly once (no lost or
    # duplicated update), with writes ordered by real time wherever real time orders them.
    with nodes[1].client("alice") as c1, nodes[2].client("alice") as c2:
        for i, path in enumerate(paths):
            client = (c1, c2)[i % 2]
            ws = history.writes[path]
            got = client.get(path)
            assert got.status_code == 200
            final = history.by_sha.get(sha(got.content))
            assert final is not None and final.path == path, f"{path}: final content was never written there"
            winners = [w for w in ws if not any(w2.sent > w.acked for w2 in ws)]  # type: ignore[operator]
            assert final in winners, (
                f"{path}: final content is writer {final.writer} seq {final.seq} "
                f"(sent {final.sent:.3f}, acked {final.acked:.3f}); possible last writes: "
                + ", ".join(f"writer {w.writer} seq {w.seq} ({w.sent:.3f}-{w.acked:.3f})" for w in winners)
            )
            assert got.headers["ETag"] == final.etag

            revs = revisions(client, api_path(path))
            listed = [r["content_sha256"] for r in revs]  # newest (highest revision id) first
            assert sorted(listed) == sorted(w.body_sha for w in ws), (
                f"{path}: {len(listed)} revisions listed for {len(ws)} acknowledged writes "
                f"(missing {len({w.body_sha for w in ws} - set(listed))}, "
                f"unexpected {len(set(listed) - {w.body_sha for w in ws})})"
            )
            current = [r for r in revs if r["is_current"]]
            assert len(current) == 1 and current[0]["content_sha256"] == final.body_sha, (path, current)
            position = {s: k for k, s in enumerate(listed)}
            for w1 in ws:
                for w2 in ws:
                    if w2.sent > w1.acked:  # type: ignore[operator]
                        # w2 began after w1 was committed: its revision id is higher, listed earlier.
                        assert position[w2.body_sha] < position[w1.body_sha], (
                            f"{path}: writer {w2.writer} seq {w2.seq} was sent after writer {w1.writer} "
                            f"seq {w1.seq} was acknowledged, yet is listed as the older revision"
                        )
    print(f"\nconcurrency: {puts} PUTs, {gets} GETs in {CONCURRENCY_SECONDS:.0f} s on {len(nodes)} nodes")
    assert_fsck_clean(cluster)
