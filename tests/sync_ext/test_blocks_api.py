"""Block-level sync over the API: a client cuts with /config, sends only missing blocks,
commits block lists with conflict detection; accounts never see each other's blocks."""

from __future__ import annotations

import hashlib
import random

import httpx

from storage.chunker import Chunker, ChunkerParams


def cutter(api: httpx.Client) -> Chunker:
    c = api.get("/config").json()["chunker"]
    return Chunker(ChunkerParams(c["min_size"], c["avg_size"], c["max_size"], c["normalization"]), c["seed"])


def push(api: httpx.Client, path: str, data: bytes, parent_rev: int | None) -> tuple[httpx.Response, int]:
    """What a sync client does: cut, ask, upload the missing blocks, commit. Returns blocks sent."""
    blocks = [(hashlib.sha256(b).hexdigest(), b) for b in cutter(api).split_bytes(data)]
    missing = set(api.post("/blocks/missing", json={"hashes": [h for h, _ in blocks]}).json()["missing"])
    sent = 0
    for h, b in blocks:
        if h in missing:
            assert api.put(f"/blocks/{h}", content=b).status_code == 201
            missing.discard(h)
            sent += 1
    doc = {
        "path": path,
        "size": len(data),
        "parent_rev": parent_rev,
        "blocks": [{"hash": h, "size": len(b)} for h, b in blocks],
    }
    return api.post("/files/commit", json=doc), sent


def test_an_edit_sends_only_changed_blocks_and_reads_back(api: httpx.Client) -> None:
    data = bytearray(random.Random(7).randbytes(3_000_000))
    first, sent = push(api, "/big.bin", bytes(data), None)
    assert first.status_code == 201 and sent > 10
    data[1_500_000] ^= 1
    second, sent = push(api, "/big.bin", bytes(data), first.json()["rev"])
    assert second.status_code == 200 and 1 <= sent <= 2
    assert second.json()["content_sha256"] == hashlib.sha256(data).hexdigest()
    assert api.get("/files/download", params={"path": "/big.bin"}).content == bytes(data)
    manifest = api.get("/files/manifest", params={"path": "/big.bin", "rev": first.json()["rev"]}).json()
    assert sum(b["size"] for b in manifest["blocks"]) == len(data)


def test_a_stale_parent_is_a_conflict_naming_the_current_revision(api: httpx.Client) -> None:
    base, _ = push(api, "/doc.txt", b"version one", None)
    mine, _ = push(api, "/doc.txt", b"version two, mine", base.json()["rev"])
    theirs, _ = push(api, "/doc.txt", b"version two, theirs", base.json()["rev"])
    assert theirs.status_code == 409
    problem = theirs.json()
    assert problem["type"] == "urn:davserver:problem:stale-parent"
    assert problem["current_rev"] == mine.json()["rev"]
    again, _ = push(api, "/doc.txt", b"x", None)
    assert again.status_code == 409


def test_malformed_commits_are_400s(api: httpx.Client) -> None:
    h = hashlib.sha256(b"abc").hexdigest()
    for doc in (
        {"path": "/f", "size": 3, "blocks": [{"hash": h, "size": 3}]},  # no parent_rev
        {"path": "/f", "size": 3, "parent_rev": None, "blocks": [{"hash": "XYZ", "size": 3}]},
        {"path": "/f", "size": 3, "parent_rev": None, "blocks": [{"hash": h, "size": 0}]},
        {"path": "/f", "size": "3", "parent_rev": None, "blocks": []},
        {"path": "/f", "size": 3, "parent_rev": None, "blocks": [{"hash": h, "size": 3}]},  # not uploaded
    ):
        r = api.post("/files/commit", json=doc)
        assert r.status_code == 400, (doc, r.text)
    assert api.put(f"/blocks/{h}", content=b"not abc").status_code == 400
    assert api.put("/blocks/nothex", content=b"abc").status_code == 400


def test_blocks_belong_to_their_account(api: httpx.Client, bob: httpx.Client) -> None:
    data = b"alice's block" * 50
    h = hashlib.sha256(data).hexdigest()
    assert api.put(f"/blocks/{h}", content=data).status_code == 201
    assert bob.get(f"/blocks/{h}").status_code == 404
    assert bob.post("/blocks/missing", json={"hashes": [h]}).json() == {"missing": [h]}
    doc = {
        "path": "/stolen",
        "size": len(data),
        "parent_rev": None,
        "blocks": [{"hash": h, "size": len(data)}],
    }
    assert bob.post("/files/commit", json=doc).status_code == 400
