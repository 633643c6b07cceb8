"""The change feed API in-process: cursors, pages, scopes, resets, and long-polls
answered on the request thread (the WSGI transport cannot detach connections)."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import httpx
import pytest

from storage.engine import Engine
from sync_ext.api import create_api
from sync_ext.api.changes import Cursor, LongpollSettings


def cursor(api: httpx.Client, path: str | None = None) -> str:
    r = api.get("/changes/latest_cursor", params={"path": path} if path else None)
    assert r.status_code == 200, r.text
    return str(r.json()["cursor"])


def list_all(api: httpx.Client, cur: str, limit: int = 3) -> tuple[list[dict[str, Any]], str]:
    entries: list[dict[str, Any]] = []
    while True:
        page = api.get("/changes/list", params={"cursor": cur, "limit": limit}).json()
        entries += page["entries"]
        cur = page["cursor"]
        if not page["has_more"]:
            return entries, cur


def test_list_reports_each_operation_with_what_a_client_needs(api: httpx.Client, engine: Engine) -> None:
    start = cursor(api)
    vol = engine.volume("alice")
    vol.mkdir("d")
    up = api.post(
        "/files/upload",
        params={"uploadType": "media", "path": "/d/a.txt", "mtime": "1700000000"},
        content=b"abc",
    )
    assert up.status_code == 201
    api.post("/files/upload", params={"uploadType": "media", "path": "/d/a.txt"}, content=b"abcd")
    vol.move("d", "e")
    api.post("/files/delete", json={"path": "/e/a.txt"})
    entries, end = list_all(api, start, limit=2)
    assert [(e["op"], e["path"], e.get("old_path"), e["kind"]) for e in entries] == [
        ("create", "/d", None, "folder"),
        ("create", "/d/a.txt", None, "file"),
        ("modify", "/d/a.txt", None, "file"),
        ("move", "/e", "/d", "folder"),
        ("delete", "/e/a.txt", None, "file"),
    ]
    created = entries[1]
    assert (created["rev"], created["size"], created["mtime"]) == (up.json()["rev"], 3, 1700000000)
    assert entries[2]["size"] == 4 and entries[2]["rev"] != created["rev"]
    assert "rev" not in entries[4]
    assert api.get("/changes/list", params={"cursor": end}).json() == {
        "entries": [],
        "cursor": end,
        "has_more": False,
    }


def test_a_scoped_cursor_sees_only_its_folder(api: httpx.Client, engine: Engine) -> None:
    vol = engine.volume("alice")
    vol.mkdir("in")
    vol.mkdir("out")
    scoped = cursor(api, "/in")
    vol.write("out/x", io.BytesIO(b"x"))
    vol.write("in/y", io.BytesIO(b"y"))
    vol.move("out/x", "in/x")
    entries, _ = list_all(api, scoped)
    assert [(e["op"], e["path"]) for e in entries] == [("create", "/in/y"), ("create", "/in/x")]


def test_bad_foreign_and_expired_cursors(api: httpx.Client, bob: httpx.Client, engine: Engine) -> None:
    mine = cursor(api)
    for bad in ("", "v1.!!!", "v2.abc", Cursor(1, -1).encode()):
        r = api.get("/changes/list", params={"cursor": bad})
        assert r.status_code == 400, bad
        assert r.headers["content-type"] == "application/problem+json"
    assert bob.get("/changes/list", params={"cursor": mine}).json()["detail"] == (
        "this cursor belongs to another account"
    )
    ahead = Cursor(engine.volume("alice").account.id, 10**6).encode()
    assert (
        api.get("/changes/list", params={"cursor": ahead}).json()["type"]
        == "urn:davserver:problem:cursor-reset"
    )
    engine.volume("alice").mkdir("x")
    engine.compact_journal(now=engine.config.clock() + 10**9)
    r = api.get("/changes/list", params={"cursor": mine})
    assert r.status_code == 410 and r.json()["type"] == "urn:davserver:problem:cursor-reset"
    fresh, _ = list_all(api, cursor(api))
    assert fresh == []


def test_latest_cursor_scope_must_be_a_folder(api: httpx.Client, engine: Engine) -> None:
    engine.volume("alice").write("f", io.BytesIO(b"f"))
    assert api.get("/changes/latest_cursor", params={"path": "/f"}).status_code == 409
    assert api.get("/changes/latest_cursor", params={"path": "/missing"}).status_code == 404
    assert api.get("/changes/latest_cursor", params={"path": "/"}).status_code == 200


class Poll(threading.Thread):
    def __init__(self, api: httpx.Client, cur: str) -> None:
        super().__init__(daemon=True)
        self.api, self.cur = api, cur
        self.result: dict[str, Any] | None = None

    def run(self) -> None:
        self.result = self.api.get("/changes/longpoll", params={"cursor": self.cur, "timeout": 30}).json()


def _wait_until_waiting(engine: Engine, count: int) -> None:
    deadline = time.monotonic() + 10
    while engine.notifications.waiting < count:
        assert time.monotonic() < deadline, "the long-poll never started waiting"
        time.sleep(0.01)


def test_longpoll_wakes_on_a_commit_of_its_account_only(
    api: httpx.Client, bob: httpx.Client, engine: Engine
) -> None:
    poll = Poll(api, cursor(api))
    poll.start()
    _wait_until_waiting(engine, 1)
    engine.volume("bob").write("bobs", io.BytesIO(b"b"))
    poll.join(0.5)
    assert poll.is_alive(), "woken by another account's change"
    engine.volume("alice").write("alices", io.BytesIO(b"a"))
    poll.join(10)
    assert poll.result == {"changes": True}
    assert engine.notifications.waiting == 0


def test_a_scoped_longpoll_ignores_changes_outside_its_folder(api: httpx.Client, engine: Engine) -> None:
    vol = engine.volume("alice")
    vol.mkdir("in")
    poll = Poll(api, cursor(api, "/in"))
    poll.start()
    _wait_until_waiting(engine, 1)
    vol.write("elsewhere", io.BytesIO(b"x"))
    poll.join(0.5)
    assert poll.is_alive(), "woken by a change outside its scope"
    vol.write("in/here", io.BytesIO(b"x"))
    poll.join(10)
    assert poll.result == {"changes": True}


def test_longpoll_answers_at_once_when_changes_are_pending(api: httpx.Client, engine: Engine) -> None:
    start = cursor(api)
    engine.volume("alice").mkdir("new")
    assert api.get("/changes/longpoll", params={"cursor": start, "timeout": 30}).json() == {"changes": True}


@pytest.mark.parametrize("timeout", ["29", "481", "x", "-5"])
def test_longpoll_timeout_is_bounded(api: httpx.Client, timeout: str) -> None:
    r = api.get("/changes/longpoll", params={"cursor": cursor(api), "timeout": timeout})
    assert r.status_code == 400


def _api_with(engine: Engine, settings: LongpollSettings) -> httpx.Client:
    """The API alone, with long-poll limits of the test's choosing, as alice."""
    api = create_api(engine, account_key="test.account", longpoll=settings)
    alice = engine.volume("alice").account.id

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environ["test.account"] = alice
        return api(environ, start_response)

    return httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://127.0.0.1/api/v1")


def test_a_busy_server_answers_with_a_backoff_hint(engine: Engine) -> None:
    with _api_with(engine, LongpollSettings(soft_limit=0, hard_limit=0)) as full:
        started = time.monotonic()
        answer = full.get("/changes/longpoll", params={"cursor": cursor(full), "timeout": 30}).json()
        assert answer["changes"] is False and 60 <= answer["backoff"] <= 180
        assert time.monotonic() - started < 25, "waited although the server is full"
    with _api_with(engine, LongpollSettings(soft_limit=0, hard_limit=10)) as busy:
        poll = Poll(busy, cursor(busy))
        poll.start()
        _wait_until_waiting(engine, 1)
        engine.volume("alice").mkdir("wake")
        poll.join(10)
        assert poll.result is not None and poll.result["changes"] is True
        assert 10 <= poll.result["backoff"] <= 60


def test_request_threads_blocked_in_long_polls_are_bounded(engine: Engine) -> None:
    with _api_with(engine, LongpollSettings(blocking_waiters=1)) as api:
        first = Poll(api, cursor(api))
        first.start()
        _wait_until_waiting(engine, 1)
        second = api.get("/changes/longpoll", params={"cursor": cursor(api), "timeout": 30}).json()
        assert second["changes"] is False and second["backoff"] >= 10
        engine.volume("alice").mkdir("wake")
        first.join(10)
        assert first.result == {"changes": True}
