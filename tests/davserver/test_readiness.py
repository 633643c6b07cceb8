"""/readyz: what a balancer's health check reads (no credentials)."""

from __future__ import annotations

import httpx

from davserver.app import AppSettings, create_app
from storage.errors import BackendUnavailable
from tests.storage.conftest import EngineFactory


def test_ready_when_the_database_and_the_block_store_answer(make_engine: EngineFactory) -> None:
    engine = make_engine()
    app = create_app(engine, AppSettings())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://127.0.0.1") as c:
        r = c.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {"ready": True, "database": "ok", "blocks": "ok", "redis": "off"}
        assert r.headers["Cache-Control"] == "no-store"

        def down(name: str) -> None:
            raise BackendUnavailable("the store does not answer")

        engine.backend.stat = down  # type: ignore[method-assign]
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["ready"] is False
        assert r.json()["blocks"] == "down: BackendUnavailable: the store does not answer"
        assert c.get("/healthz").status_code == 200  # alive, just not ready
