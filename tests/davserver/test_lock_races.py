"""A LOCK and a DELETE of the same path at the same time, in-process (httpx's WSGI transport).

WsgiDAV looks the resource up, then grants the lock; a DELETE checks the locks, deletes,
then drops the locks under its path. Each test holds one request at its most exposed
step while the other one is sent: the second must wait and then see the first's outcome.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from wsgidav.lock_man.lock_manager import LockManager

from davserver.app import AppSettings, create_app
from storage.engine import Engine
from storage.volume import Volume
from tests.davserver.inprocess import LOCKINFO, wsgi_client
from tests.storage.conftest import EngineFactory

#: How long the held request pauses at its exposed step (the other one runs meanwhile
#: unless it waits).
PAUSE = 0.4


@pytest.fixture
def app(make_engine: EngineFactory, database_url: str) -> Iterator[tuple[Engine, Any]]:
    engine = make_engine(database_url)
    engine.accounts.create("alice", "alice-password")
    yield engine, create_app(engine, AppSettings())


def _in_thread(fn: Any) -> tuple[threading.Thread, list[httpx.Response]]:
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread, out


def test_a_lock_sent_while_a_delete_runs_locks_a_new_file_and_keeps_its_lock(
    app: tuple[Engine, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, wsgi = app
    engine.volume("alice").write("f.txt", io.BytesIO(b"old"))
    deleted = threading.Event()
    real = Volume.delete

    def delete(self: Volume, path: str, **kwargs: Any) -> Any:
        result = real(self, path, **kwargs)
        deleted.set()
        time.sleep(PAUSE)  # the file is gone; its locks are dropped after this
        return result

    monkeypatch.setattr(Volume, "delete", delete)
    with wsgi_client(wsgi) as deleter, wsgi_client(wsgi) as locker:
        locker.request("OPTIONS", "/dav/")  # credentials verified before the race
        thread, done = _in_thread(lambda: deleter.delete("/dav/f.txt"))
        assert deleted.wait(10)
        r = locker.request("LOCK", "/dav/f.txt", content=LOCKINFO, headers={"Depth": "0"})
        thread.join(10)
        assert done[0].status_code == 204
        assert r.status_code == 201, r.text  # the DELETE came first: a new empty file, locked
        token = r.headers["Lock-Token"]
        assert locker.put("/dav/f.txt", content=b"new", headers={"If": f"({token})"}).status_code == 204
        assert locker.request("UNLOCK", "/dav/f.txt", headers={"Lock-Token": token}).status_code == 204
        assert locker.get("/dav/f.txt").content == b"new"


def test_a_lock_waiting_for_a_delete_does_not_trust_what_it_saw_before(
    app: tuple[Engine, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """WsgiDAV's folder browser looks every request's resource up before the provider runs;
    a LOCK that then waited for a DELETE once locked the file it had seen (200): a lock on
    nothing, refusing everyone else's PUT until it timed out."""
    engine, wsgi = app
    engine.volume("alice").write("f.txt", io.BytesIO(b"old"))
    deleting = threading.Event()
    real = Volume.delete

    def delete(self: Volume, path: str, **kwargs: Any) -> Any:
        deleting.set()
        time.sleep(PAUSE)  # the LOCK arrives, looks the file up, and waits for the mutex
        return real(self, path, **kwargs)

    monkeypatch.setattr(Volume, "delete", delete)
    with wsgi_client(wsgi) as deleter, wsgi_client(wsgi) as locker:
        locker.request("OPTIONS", "/dav/")
        thread, done = _in_thread(lambda: deleter.delete("/dav/f.txt"))
        assert deleting.wait(10)
        r = locker.request("LOCK", "/dav/f.txt", content=LOCKINFO, headers={"Depth": "0"})
        thread.join(10)
        assert done[0].status_code == 204
        assert r.status_code == 201, r.text  # a new empty file, locked
        assert locker.get("/dav/f.txt").content == b""
        token = r.headers["Lock-Token"]
        assert locker.request("UNLOCK", "/dav/f.txt", headers={"Lock-Token": token}).status_code == 204


def test_a_delete_sent_while_a_lock_is_being_granted_is_refused(
    app: tuple[Engine, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, wsgi = app
    engine.volume("alice").write("f.txt", io.BytesIO(b"kept"))
    looked_up = threading.Event()
    real = LockManager.acquire

    def acquire(self: LockManager, *args: Any, **kwargs: Any) -> Any:
        looked_up.set()
        time.sleep(PAUSE)  # the resource was looked up; the lock is granted after this
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LockManager, "acquire", acquire)
    with wsgi_client(wsgi) as deleter, wsgi_client(wsgi) as locker:
        deleter.request("OPTIONS", "/dav/")
        thread, done = _in_thread(
            lambda: locker.request("LOCK", "/dav/f.txt", content=LOCKINFO, headers={"Depth": "0"})
        )
        assert looked_up.wait(10)
        r = deleter.delete("/dav/f.txt")
        thread.join(10)
        assert done[0].status_code == 200, done[0].text  # not a 500 from a lock on nothing
        assert r.status_code == 423  # the LOCK came first
        assert deleter.get("/dav/f.txt").content == b"kept"
        token = done[0].headers["Lock-Token"]
        assert locker.request("UNLOCK", "/dav/f.txt", headers={"Lock-Token": token}).status_code == 204


def test_a_file_deleted_elsewhere_while_a_lock_is_granted_gets_no_lock(
    app: tuple[Engine, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another node (here: the engine, past this node's mutex) deletes the file between the
    LOCK's look-up and its grant: 409, and no lock is left standing on nothing."""
    engine, wsgi = app
    engine.volume("alice").write("f.txt", io.BytesIO(b"old"))
    real = LockManager.acquire

    def acquire(self: LockManager, *args: Any, **kwargs: Any) -> Any:
        engine.volume("alice").delete("f.txt")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LockManager, "acquire", acquire)
    with wsgi_client(wsgi) as c:
        r = c.request("LOCK", "/dav/f.txt", content=LOCKINFO, headers={"Depth": "0"})
        assert r.status_code == 409, r.text  # not a 500 from lockdiscovery
        monkeypatch.setattr(LockManager, "acquire", real)
        assert c.put("/dav/f.txt", content=b"new").status_code == 201  # no lock in the way
