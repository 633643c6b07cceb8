"""The change feed over real HTTP: an offline client catches up exactly, long-polls wake
on every kind of commit and only on their own, and they do not hold worker threads."""

from __future__ import annotations

import hashlib
import random
import threading
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from xml.etree import ElementTree

import httpx
import pytest

from tests.e2e.conftest import PASSWORDS, ServerFactory
from tests.e2e.harness import DavServer


@dataclass(frozen=True)
class Item:
    is_dir: bool
    size: int | None = None
    sha256: str | None = None


Tree = dict[str, Item]


def latest_cursor(api: httpx.Client, path: str | None = None) -> str:
    r = api.get("/api/v1/changes/latest_cursor", params={"path": path} if path else None)
    assert r.status_code == 200, r.text
    return str(r.json()["cursor"])


def apply(tree: Tree, entry: dict[str, Any]) -> None:
    """A sync client's reading of one entry (the API's paths start with '/')."""
    path = entry["path"]

    def drop(top: str) -> None:
        for p in [p for p in tree if p == top or p.startswith(top + "/")]:
            del tree[p]

    if entry["op"] == "delete":
        drop(path)
    elif entry["op"] == "move":
        old = entry["old_path"]
        moved = {p: item for p, item in tree.items() if p == old or p.startswith(old + "/")}
        drop(old)
        drop(path)
        tree.update({path + p[len(old) :]: item for p, item in moved.items()})
    elif entry["kind"] == "folder":
        tree[path] = Item(True)
    else:
        tree[path] = Item(False, entry["size"], entry["content_sha256"])


def replay(api: httpx.Client, cursor: str, tree: Tree) -> tuple[str, int]:
    seen = 0
    while True:
        r = api.get("/api/v1/changes/list", params={"cursor": cursor, "limit": 250})
        assert r.status_code == 200, r.text
        page = r.json()
        for entry in page["entries"]:
            apply(tree, entry)
        seen += len(page["entries"])
        cursor = page["cursor"]
        if not page["has_more"]:
            return cursor, seen


def server_tree(dav: httpx.Client) -> Tree:
    """The account's tree as WebDAV shows it: PROPFIND Depth 1 folder by folder, every file read."""
    tree: Tree = {}
    folders = ["/"]
    while folders:
        folder = folders.pop()
        r = dav.request("PROPFIND", "/dav" + quote(folder), headers={"Depth": "1"})
        assert r.status_code == 207, r.text
        for response in ElementTree.fromstring(r.content).iter("{DAV:}response"):
            href = unquote(urlsplit(response.findtext("{DAV:}href") or "").path)
            path = href[len("/dav") :].rstrip("/") or "/"
            if path == folder.rstrip("/") or path == "/":
                continue
            if response.find(".//{DAV:}collection") is not None:
                tree[path] = Item(True)
                folders.append(path)
            else:
                body = dav.get("/dav" + quote(path)).content
                tree[path] = Item(False, len(body), hashlib.sha256(body).hexdigest())
    return tree


class Workload:
    """Random creates, overwrites, deletes, renames, folder moves and copies, through
    WebDAV and the API, with a revision restore and trash restores among them."""

    def __init__(self, dav: httpx.Client, rng: random.Random) -> None:
        self.dav, self.rng = dav, rng

    def _names(self) -> tuple[list[str], list[str]]:
        tree = (
            server_tree(self.dav) if self.rng.random() < 0.05 or not hasattr(self, "_cache") else self._cache
        )
        self._cache = tree
        files = [p for p, i in tree.items() if not i.is_dir]
        dirs = ["/"] + [p for p, i in tree.items() if i.is_dir]
        return files, dirs

    def step(self) -> None:
        files, dirs = self._names()
        rng, dav = self.rng, self.dav
        parent = rng.choice(dirs).rstrip("/")
        target = f"{parent}/{rng.choice(['n', 'é ', 'x#', 'a b'])}{rng.randrange(10**6)}"
        op = rng.choice(
            ["put", "put", "api_put", "overwrite", "mkcol", "delete", "api_delete", "move", "move_dir"]
        )
        op = op if files or op in ("put", "api_put", "mkcol", "move_dir") else "put"
        body = rng.randbytes(rng.randrange(0, 5000))
        if op == "put":
            assert dav.put("/dav" + quote(target), content=body).status_code == 201
            self._cache[target] = Item(False)
        elif op == "api_put":
            r = dav.post("/api/v1/files/upload", params={"uploadType": "media", "path": target}, content=body)
            assert r.status_code == 201, r.text
            self._cache[target] = Item(False)
        elif op == "overwrite":
            assert dav.put("/dav" + quote(rng.choice(files)), content=body).status_code == 204
        elif op == "mkcol":
            assert dav.request("MKCOL", "/dav" + quote(target)).status_code == 201
            self._cache[target] = Item(True)
        elif op in ("delete", "api_delete"):
            victim = rng.choice(files + dirs[1:])
            if op == "delete":
                assert dav.delete("/dav" + quote(victim)).status_code == 204
            else:
                assert dav.post("/api/v1/files/delete", json={"path": victim}).status_code == 200
            self._forget(victim)
        elif op == "move":
            src = rng.choice(files)
            self._move(src, target)
        elif op == "move_dir" and len(dirs) > 1:
            src = rng.choice(dirs[1:])
            if not (parent + "/").startswith(src + "/"):
                self._move(src, target)

    def _move(self, src: str, dst: str) -> None:
        r = self.dav.request("MOVE", "/dav" + quote(src), headers={"Destination": "/dav" + quote(dst)})
        assert r.status_code == 201, r.text
        self._cache = {
            (dst + p[len(src) :] if p == src or p.startswith(src + "/") else p): i
            for p, i in self._cache.items()
        }

    def _forget(self, path: str) -> None:
        self._cache = {p: i for p, i in self._cache.items() if not (p == path or p.startswith(path + "/"))}

    def copy_folder(self, src: str, dst: str) -> None:
        r = self.dav.request("COPY", "/dav" + quote(src), headers={"Destination": "/dav" + quote(dst)})
        assert r.status_code == 201, r.text
        self._cache = server_tree(self.dav)

    def restores(self) -> None:
        files, _ = self._names()
        path = self.rng.choice(files)
        self.dav.put("/dav" + quote(path), content=b"newer")
        revs = self.dav.get("/api/v1/files/list_revisions", params={"path": path}).json()["revisions"]
        r = self.dav.post("/api/v1/files/restore", json={"path": path, "rev": revs[-1]["rev"]})
        assert r.status_code == 200, r.text
        items = self.dav.get("/api/v1/trash").json()["items"]
        for item in items[:3]:
            r = self.dav.post(
                "/api/v1/trash/restore", json={"id": item["id"], "path": f"/restored-{item['id']}"}
            )
            assert r.status_code == 200, r.text
        self._cache = server_tree(self.dav)


def test_a_client_offline_for_1000_changes_catches_up_exactly(make_server: ServerFactory) -> None:
    srv = make_server("replay")
    rng = random.Random(5)
    with srv.client("alice") as dav:
        work = Workload(dav, rng)
        for _ in range(40):
            work.step()
        # The client syncs, takes a cursor, and goes offline.
        client_tree = server_tree(dav)
        cursor = latest_cursor(dav)
        for round_ in range(9):
            for _ in range(120):
                work.step()
            folders = [p for p, i in work._cache.items() if i.is_dir]
            if folders:
                work.copy_folder(rng.choice(folders), f"/copy-{round_}")
            work.restores()
        _, seen = replay(dav, cursor, client_tree)
        assert seen >= 1000
        assert client_tree == server_tree(dav)


def _longpoll(client: httpx.Client, cursor: str, out: list[Any]) -> threading.Thread:
    def run() -> None:
        try:
            r = client.get("/api/v1/changes/longpoll", params={"cursor": cursor, "timeout": 30})
            out.append(r.json() if r.status_code == 200 else r)
        except httpx.HTTPError as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _upload_resumable(c: httpx.Client, path: str, data: bytes) -> None:
    start = c.post("/api/v1/files/upload", params={"uploadType": "resumable", "path": path})
    assert start.status_code == 200, start.text
    url = start.headers["Location"]
    half = len(data) // 2
    assert (
        c.put(
            url, headers={"Content-Range": f"bytes 0-{half - 1}/{len(data)}"}, content=data[:half]
        ).status_code
        == 308
    )
    done = c.put(
        url, headers={"Content-Range": f"bytes {half}-{len(data) - 1}/{len(data)}"}, content=data[half:]
    )
    assert done.status_code == 201, done.text


@pytest.mark.parametrize("commit", ["webdav_put", "api_upload", "move", "delete"])
def test_a_longpoll_wakes_on_each_kind_of_commit(dav_server: DavServer, commit: str) -> None:
    folder = f"/lp-{uuid.uuid4().hex[:8]}"
    with dav_server.client("alice") as c, dav_server.client("alice") as poller:
        assert c.request("MKCOL", "/dav" + folder).status_code == 201
        assert c.put(f"/dav{folder}/f.txt", content=b"f").status_code == 201
        out: list[Any] = []
        thread = _longpoll(poller, latest_cursor(c), out)
        thread.join(0.5)
        assert thread.is_alive(), out
        if commit == "webdav_put":
            assert c.put(f"/dav{folder}/g.txt", content=b"g").status_code == 201
        elif commit == "api_upload":
            _upload_resumable(c, f"{folder}/u.bin", b"0123456789" * 1000)
        elif commit == "move":
            r = c.request("MOVE", f"/dav{folder}/f.txt", headers={"Destination": f"/dav{folder}/h.txt"})
            assert r.status_code == 201
        else:
            assert c.delete(f"/dav{folder}/f.txt").status_code == 204
        thread.join(10)
        assert out == [{"changes": True}]


def test_a_longpoll_ignores_other_accounts_and_other_folders(dav_server: DavServer) -> None:
    folder = f"/scoped-{uuid.uuid4().hex[:8]}"
    with dav_server.client("alice") as c, dav_server.client("bob") as b, dav_server.client("alice") as poller:
        assert c.request("MKCOL", "/dav" + folder).status_code == 201
        out: list[Any] = []
        thread = _longpoll(poller, latest_cursor(c, folder), out)
        assert b.put("/dav/bob-file.txt", content=b"b").status_code in (201, 204)
        assert c.put(f"/dav/outside-{uuid.uuid4().hex[:6]}.txt", content=b"o").status_code == 201
        thread.join(1.0)
        assert thread.is_alive(), f"woken by a change it should not see: {out}"
        assert c.put(f"/dav{folder}/inside.txt", content=b"i").status_code == 201
        thread.join(10)
        assert out == [{"changes": True}]


def test_waiting_longpolls_leave_the_worker_threads_free(make_server: ServerFactory) -> None:
    srv = make_server("threads", settings={"threads": 4})
    waiters = 40
    with srv.client("alice") as c:
        cursor = latest_cursor(c)
        clients = [srv.client("alice", timeout=60) for _ in range(waiters)]
        outs: list[list[Any]] = [[] for _ in range(waiters)]
        threads = [_longpoll(cl, cursor, out) for cl, out in zip(clients, outs, strict=True)]
        for t in threads:
            t.join(0.05)
        # Ten times the worker threads are waiting; plain requests still get through.
        with srv.client("alice", timeout=10) as other:
            assert other.request("PROPFIND", "/dav/", headers={"Depth": "1"}).status_code == 207
            assert other.put("/dav/wake.txt", content=b"w").status_code == 201
        for t in threads:
            t.join(15)
        assert all(out == [{"changes": True}] for out in outs), outs
        for cl in clients:
            cl.close()
    assert "Traceback" not in srv.log, srv.log


def test_a_cursor_older_than_the_kept_journal_is_reset(make_server: ServerFactory) -> None:
    from click.testing import CliRunner

    from davserver.cli import main

    srv = make_server("compact", settings={"journal_days": 0})
    with srv.client("alice") as c:
        old = latest_cursor(c)
        assert c.put("/dav/a.txt", content=b"a").status_code == 201
        result = CliRunner().invoke(main, ["gc", "--data-dir", str(srv.data_dir)])
        assert result.exit_code == 0, result.output
        assert "change journal: 1 entries" in result.output
        r = c.get("/api/v1/changes/list", params={"cursor": old})
        assert r.status_code == 410
        assert r.json()["type"] == "urn:davserver:problem:cursor-reset"
        fresh = latest_cursor(c)
        assert c.get("/api/v1/changes/list", params={"cursor": fresh}).json()["entries"] == []
    assert PASSWORDS  # the accounts the factory made
