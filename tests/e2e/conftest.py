"""End-to-end fixtures: a real davserver process per module, real HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import DavServer

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22", "carol": "carol-secret-333"}
#: carol's quota, small enough to hit with one PUT.
CAROL_QUOTA = 2 << 20

ServerFactory = Callable[..., DavServer]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers on demand (own data dir each); all are stopped at the end."""
    started: list[DavServer] = []

    def factory(
        name: str = "srv", settings: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> DavServer:
        srv = DavServer(tmp_path / name, settings=settings or {}, env=env or {})
        srv.init()
        srv.add_account("alice", PASSWORDS["alice"])
        srv.add_account("bob", PASSWORDS["bob"])
        srv.add_account("carol", PASSWORDS["carol"], quota=CAROL_QUOTA)
        srv.start()
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        srv.kill()


@pytest.fixture(scope="module")
def dav_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DavServer]:
    """One server shared by a module's tests; each test works under its own folder."""
    srv = DavServer(tmp_path_factory.mktemp("dav") / "data")
    srv.init()
    srv.add_account("alice", PASSWORDS["alice"])
    srv.add_account("bob", PASSWORDS["bob"])
    srv.add_account("carol", PASSWORDS["carol"], quota=CAROL_QUOTA)
    srv.start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log, srv.log


@pytest.fixture
def c(dav_server: DavServer) -> Iterator[httpx.Client]:
    """alice's client on the module's server."""
    with dav_server.client("alice") as client:
        yield client


@pytest.fixture
def base(c: httpx.Client) -> str:
    """A fresh folder per test on the shared server."""
    path = f"/dav/t-{uuid.uuid4().hex[:10]}"
    assert c.request("MKCOL", path).status_code == 201
    return path
