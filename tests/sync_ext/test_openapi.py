"""The served OpenAPI document is valid, and true: every operation, exercised, answers as documented."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from storage.engine import Engine


@pytest.fixture
def document(api: httpx.Client) -> dict[str, Any]:
    r = api.get("/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1")


class Checker:
    """Records each answer against the operation the document says handles it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.doc = document
        self.seen: set[tuple[str, str]] = set()

    def check(self, r: httpx.Response) -> httpx.Response:
        path, method = r.request.url.path, r.request.method.lower()
        op = self.doc["paths"].get(path, {}).get(method)
        assert op is not None, f"{method.upper()} {path} answered but is not documented"
        self.seen.add((path, method))
        documented = op["responses"].get(str(r.status_code))
        assert documented is not None, f"{method.upper()} {path} answered {r.status_code}, not documented"
        content = documented.get("content")
        if not content:
            return r
        ctype = r.headers.get("Content-Type", "").split(";")[0]
        assert ctype in content, f"{method.upper()} {path} {r.status_code}: {ctype} is not documented"
        schema = content[ctype].get("schema")
        if schema is not None and ctype.endswith("json"):
            root = {**schema, "components": self.doc["components"]}
            jsonschema.validate(json.loads(r.content), root, cls=jsonschema.Draft202012Validator)
        return r


@pytest.fixture
def checker(document: dict[str, Any]) -> Iterator[Checker]:
    yield Checker(document)


def test_every_operation_answers_as_documented(api: httpx.Client, engine: Engine, checker: Checker) -> None:
    c = checker.check
    up = lambda path, data, **kw: c(  # noqa: E731
        api.post("/files/upload", params={"uploadType": "media", "path": path}, content=data, **kw)
    )
    assert up("/doc.txt", b"one").status_code == 201
    assert up("/doc.txt", b"two").status_code == 200
    assert up("/doc.txt", b"x", headers={"If-Match": '"0-0"'}).status_code == 412
    assert up("/no/such/folder.txt", b"x").status_code == 409
    assert c(api.post("/files/upload", params={"uploadType": "media"}, content=b"x")).status_code == 400
    assert c(api.get("/files/metadata", params={"path": "/doc.txt"})).status_code == 200
    assert c(api.get("/files/metadata", params={"path": "/nope"})).status_code == 404
    revs = c(api.get("/files/list_revisions", params={"path": "/doc.txt", "limit": 1})).json()
    assert revs["has_more"] is True
    assert c(api.get("/files/list_revisions", params={"path": "/nope"})).status_code == 404
    engine.volume("alice").mkdir("folder")
    assert c(api.get("/files/list_revisions", params={"path": "/folder"})).status_code == 409
    first = c(api.get("/files/list_revisions", params={"path": "/doc.txt"})).json()["revisions"][-1]["rev"]
    assert c(api.post("/files/restore", json={"path": "/doc.txt", "rev": first})).status_code == 200
    assert c(api.post("/files/restore", json={"path": "/doc.txt", "rev": 10**9})).status_code == 404
    assert c(api.post("/files/restore", json={"path": "/folder", "rev": first})).status_code == 409
    assert c(api.post("/files/restore", content=b"{}")).status_code == 415
    assert c(api.get("/files/download", params={"path": "/doc.txt"})).status_code == 200
    assert (
        c(api.get("/files/download", params={"path": "/doc.txt"}, headers={"Range": "bytes=0-0"})).status_code
        == 206
    )
    assert (
        c(api.get("/files/download", params={"path": "/doc.txt"}, headers={"Range": "bytes=9-"})).status_code
        == 416
    )
    etag = api.get("/files/metadata", params={"path": "/doc.txt"}).json()["etag"]
    assert (
        c(
            api.get("/files/download", params={"path": "/doc.txt"}, headers={"If-None-Match": etag})
        ).status_code
        == 304
    )
    assert c(api.get("/files/download", params={"path": "/nope"})).status_code == 404
    assert c(api.get("/files/download", params={"path": "/folder"})).status_code == 409
    assert c(api.get("/openapi.json")).status_code == 200
    engine.accounts.set_quota("alice", 1)
    assert up("/big", b"too big").status_code == 507
    assert up("/big", b"z" * 20, headers={"Content-Length": str(11 << 30)}).status_code == 413
    with httpx.Client(transport=api._transport, base_url=str(api.base_url)) as anon:
        assert c(anon.get("/files/metadata", params={"path": "/doc.txt"})).status_code == 401
    documented = {(p, m) for p, ops in checker.doc["paths"].items() for m in ops}
    assert documented == checker.seen, f"not exercised: {sorted(documented - checker.seen)}"
