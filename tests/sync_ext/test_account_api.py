"""The account over the API: its usage, and device tokens that log a device in (Bearer) until
they are revoked; one account never sees or revokes another's tokens."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from davserver.app import AppSettings, create_app
from davserver.auth import AuthSettings
from storage.engine import Engine
from tests.sync_ext.conftest import BASE


@pytest.fixture
def uncached(engine: Engine) -> httpx.WSGITransport:
    """The app with no credential cache, so a revocation bites on the next request."""
    return httpx.WSGITransport(app=create_app(engine, AppSettings(auth=AuthSettings(cache_seconds=0))))


@pytest.fixture
def alice(uncached: httpx.WSGITransport) -> Iterator[httpx.Client]:
    with httpx.Client(transport=uncached, base_url=BASE + "/api/v1", auth=("alice", "alice-password")) as c:
        yield c


def bearer(transport: httpx.WSGITransport, token: str) -> httpx.Client:
    return httpx.Client(
        transport=transport, base_url=BASE + "/api/v1", headers={"Authorization": f"Bearer {token}"}
    )


def test_the_account_tells_its_name_usage_and_quota(api: httpx.Client, engine: Engine) -> None:
    assert api.get("/account").json() == {"name": "alice", "used_bytes": 0, "quota_bytes": None}
    api.post("/files/upload", params={"uploadType": "media", "path": "/f"}, content=b"12345")
    engine.accounts.set_quota("alice", 1000)
    assert api.get("/account").json() == {"name": "alice", "used_bytes": 5, "quota_bytes": 1000}


def test_a_new_token_logs_the_device_in_until_it_is_revoked(
    alice: httpx.Client, uncached: httpx.WSGITransport
) -> None:
    created = alice.post("/account/tokens", json={"label": "laptop"})
    assert created.status_code == 201
    doc = created.json()
    assert set(doc) == {"id", "label", "token", "created_at"} and doc["label"] == "laptop"
    with bearer(uncached, doc["token"]) as device:
        assert device.get("/account").json()["name"] == "alice"
        listed = device.get("/account/tokens")
        assert listed.status_code == 200 and doc["token"] not in listed.text
        (token,) = listed.json()["tokens"]
        assert token["id"] == doc["id"] and token["label"] == "laptop" and token["revoked"] is False
        assert token["created_at"] == doc["created_at"] and "token" not in token
        assert alice.delete(f"/account/tokens/{doc['id']}").status_code == 204
        assert device.get("/account").status_code == 401
    assert alice.get("/account/tokens").json()["tokens"][0]["revoked"] is True
    assert alice.delete(f"/account/tokens/{doc['id']}").status_code == 404


def test_a_device_can_revoke_its_own_token(alice: httpx.Client, uncached: httpx.WSGITransport) -> None:
    doc = alice.post("/account/tokens", json={"label": "phone"}).json()
    with bearer(uncached, doc["token"]) as device:
        assert device.delete(f"/account/tokens/{doc['id']}").status_code == 204
        assert device.get("/account/tokens").status_code == 401


def test_another_account_neither_sees_nor_revokes_alices_tokens(
    alice: httpx.Client, uncached: httpx.WSGITransport
) -> None:
    doc = alice.post("/account/tokens", json={"label": "laptop"}).json()
    with httpx.Client(transport=uncached, base_url=BASE + "/api/v1", auth=("bob", "bob-password-1")) as bob:
        assert bob.get("/account/tokens").json() == {"tokens": []}
        assert bob.delete(f"/account/tokens/{doc['id']}").status_code == 404
        bobs = bob.post("/account/tokens", json={"label": "bob's"}).json()
        assert [t["label"] for t in bob.get("/account/tokens").json()["tokens"]] == ["bob's"]
        assert alice.delete(f"/account/tokens/{bobs['id']}").status_code == 404
        with bearer(uncached, bobs["token"]) as bobs_device:
            assert bobs_device.get("/account").json()["name"] == "bob"
    with bearer(uncached, doc["token"]) as device:
        assert device.get("/account").json()["name"] == "alice"
    assert [t["label"] for t in alice.get("/account/tokens").json()["tokens"]] == ["laptop"]


def test_bad_token_requests_are_refused(api: httpx.Client) -> None:
    for body in ({}, {"label": ""}, {"label": "x" * 101}, {"label": 7}, {"label": None}):
        assert api.post("/account/tokens", json=body).status_code == 400, body
    assert api.post("/account/tokens", json={"label": "x" * 100}).status_code == 201
    assert api.post("/account/tokens", content=b'{"label": "x"}').status_code == 415
    assert api.delete("/account/tokens/abc").status_code == 400
    assert api.delete("/account/tokens/999999").status_code == 404
    assert [t["label"] for t in api.get("/account/tokens").json()["tokens"]] == ["x" * 100]
