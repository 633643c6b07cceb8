"""The tree over the API: paged folder listings with a change-feed cursor, folders, moves, and
moves and deletes conditional on a file's revision; accounts never reach each other's trees."""

from __future__ import annotations

from typing import Any

import httpx
import pytest


def upload(api: httpx.Client, path: str, data: bytes) -> dict[str, Any]:
    r = api.post("/files/upload", params={"uploadType": "media", "path": path}, content=data)
    assert r.status_code in (200, 201), r.text
    doc: dict[str, Any] = r.json()
    return doc


def mkdir(api: httpx.Client, path: str) -> dict[str, Any]:
    r = api.post("/files/create_folder", json={"path": path})
    assert r.status_code == 201, r.text
    doc: dict[str, Any] = r.json()
    return doc


def listing(api: httpx.Client, **params: Any) -> dict[str, Any]:
    r = api.get("/files/list_folder", params=params)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def paths_of(page: dict[str, Any]) -> list[str]:
    return [e["path"] for e in page["entries"]]


def all_pages(api: httpx.Client, limit: int, **params: Any) -> tuple[list[str], int]:
    """Every entry, page by page as a client would; and how many pages it took."""
    found: list[str] = []
    after = None
    for pages in range(1, 1000):
        page = listing(api, limit=limit, **params, **({"after": after} if after else {}))
        found += paths_of(page)
        if not page["has_more"]:
            assert page["next_after"] is None
            return found, pages
        assert page["next_after"] == found[-1]
        after = page["next_after"]
    raise AssertionError("the listing never ended")


@pytest.fixture
def tree(api: httpx.Client) -> list[str]:
    """A small tree in alice's account: folders and files at several depths; its paths."""
    made = []
    for folder in ("/a", "/a/b", "/a/b/c", "/a b", "/z"):
        made.append(mkdir(api, folder)["path"])
    for i, parent in enumerate(("", "/a", "/a/b", "/a/b/c", "/a b", "/z", "/a", "/a/b")):
        made.append(upload(api, f"{parent}/f{i}.txt", b"x" * i)["path"])
    return made


def test_a_listing_holds_the_folders_children_in_path_order(api: httpx.Client, tree: list[str]) -> None:
    top = listing(api)
    assert paths_of(top) == ["/a", "/a b", "/f0.txt", "/z"]
    assert top["has_more"] is False and top["next_after"] is None
    assert paths_of(listing(api, path="/a/b")) == ["/a/b/c", "/a/b/f2.txt", "/a/b/f7.txt"]
    everything = listing(api, path="/", recursive="true")
    assert paths_of(everything) == sorted(tree, key=lambda p: p.encode())
    entry = next(e for e in everything["entries"] if e["path"] == "/a/f1.txt")
    assert entry == api.get("/files/metadata", params={"path": "/a/f1.txt"}).json()
    below = paths_of(listing(api, path="/a/b", recursive="true"))
    assert below == ["/a/b/c", "/a/b/c/f3.txt", "/a/b/f2.txt", "/a/b/f7.txt"]
    assert listing(api, path="/z/", recursive="false")["entries"][0]["name"] == "f5.txt"


def test_pages_with_a_small_limit_add_up_to_the_one_shot_listing(api: httpx.Client, tree: list[str]) -> None:
    whole = paths_of(listing(api, recursive="true"))
    for limit in (1, 3, 4, len(whole) - 1, len(whole)):
        paged, pages = all_pages(api, limit, recursive="true")
        assert paged == whole
        assert pages == -(-len(whole) // limit)
    paged, pages = all_pages(api, 2, path="/a")
    assert paged == paths_of(listing(api, path="/a")) and pages == 2
    assert paths_of(listing(api, recursive="true", after="/a/b/c/f3.txt", limit=2)) == [
        "/a/b/f2.txt",
        "/a/b/f7.txt",
    ]


def test_the_listings_cursor_replays_what_changed_after_it(api: httpx.Client, tree: list[str]) -> None:
    page = listing(api, path="/a", limit=2)
    upload(api, "/a/late.txt", b"after the listing")
    api.post("/files/move", json={"from_path": "/z/f5.txt", "to_path": "/a/f5.txt"})
    changes = api.get("/changes/list", params={"cursor": page["cursor"]}).json()["entries"]
    assert [(c["op"], c["path"]) for c in changes] == [("create", "/a/late.txt"), ("move", "/a/f5.txt")]
    quiet = listing(api)
    assert api.get("/changes/list", params={"cursor": quiet["cursor"]}).json()["entries"] == []


def test_listing_a_missing_folder_a_file_or_with_bad_parameters_fails(
    api: httpx.Client, tree: list[str]
) -> None:
    assert api.get("/files/list_folder", params={"path": "/nope"}).status_code == 404
    conflict = api.get("/files/list_folder", params={"path": "/f0.txt"})
    assert conflict.status_code == 409 and conflict.headers["Content-Type"] == "application/problem+json"
    for params in ({"recursive": "yes"}, {"limit": "0"}, {"limit": "-1"}, {"limit": "x"}, {"after": "a\x00"}):
        assert api.get("/files/list_folder", params=params).status_code == 400, params


def test_create_folder_makes_one_folder_and_refuses_what_cannot_be(api: httpx.Client) -> None:
    made = api.post("/files/create_folder", json={"path": "/docs", "mtime": 1_600_000_000})
    assert made.status_code == 201
    assert made.json()["is_dir"] is True and made.json()["mtime"] == 1_600_000_000
    assert made.json()["path"] == "/docs" and made.json()["rev"] is None
    assert api.post("/files/create_folder", json={"path": "/docs"}).status_code == 409
    upload(api, "/file.txt", b"x")
    assert api.post("/files/create_folder", json={"path": "/file.txt"}).status_code == 409
    assert api.post("/files/create_folder", json={"path": "/no/such/parent"}).status_code == 409
    assert api.post("/files/create_folder", json={"path": "/file.txt/sub"}).status_code == 409
    assert api.post("/files/create_folder", json={"path": "/"}).status_code == 409
    for doc in ({}, {"path": ""}, {"path": 3}, {"path": "/m", "mtime": "soon"}, {"path": "/a\\b"}):
        assert api.post("/files/create_folder", json=doc).status_code == 400, doc
    assert api.post("/files/create_folder", content=b'{"path": "/x"}').status_code == 415
    assert paths_of(listing(api)) == ["/docs", "/file.txt"]


def test_move_keeps_a_files_identity_and_takes_a_folders_subtree(api: httpx.Client, tree: list[str]) -> None:
    before = api.get("/files/metadata", params={"path": "/a/f1.txt"}).json()
    moved = api.post("/files/move", json={"from_path": "/a/f1.txt", "to_path": "/z/renamed.txt"})
    assert moved.status_code == 200
    assert moved.json()["path"] == "/z/renamed.txt" and moved.json()["etag"] == before["etag"]
    assert moved.json()["rev"] == before["rev"]
    assert api.get("/files/metadata", params={"path": "/a/f1.txt"}).status_code == 404
    folder = api.post("/files/move", json={"from_path": "/a/b", "to_path": "/moved"})
    assert folder.status_code == 200 and folder.json()["is_dir"] is True
    assert paths_of(listing(api, path="/moved", recursive="true")) == [
        "/moved/c",
        "/moved/c/f3.txt",
        "/moved/f2.txt",
        "/moved/f7.txt",
    ]
    assert api.get("/files/download", params={"path": "/moved/c/f3.txt"}).content == b"xxx"


def test_move_never_overwrites_and_reports_what_is_wrong(api: httpx.Client, tree: list[str]) -> None:
    def move(doc: dict[str, Any]) -> int:
        return api.post("/files/move", json=doc).status_code

    whole = paths_of(listing(api, recursive="true"))
    assert move({"from_path": "/a/f1.txt", "to_path": "/f0.txt"}) == 409
    assert move({"from_path": "/a/f1.txt", "to_path": "/z"}) == 409
    assert move({"from_path": "/nope", "to_path": "/new"}) == 404
    assert move({"from_path": "/a/f1.txt", "to_path": "/no/such/folder/f"}) == 409
    assert move({"from_path": "/a", "to_path": "/a/b/inside"}) == 409
    assert move({"from_path": "/", "to_path": "/root"}) == 409
    for doc in (
        {"from_path": "/a/f1.txt"},
        {"to_path": "/x"},
        {"from_path": "/a/f1.txt", "to_path": ""},
        {"from_path": "/a/f1.txt", "to_path": 5},
        {"from_path": "/a/f1.txt", "to_path": "/x", "rev": "1"},
        {"from_path": "/a/f1.txt", "to_path": "/x", "rev": True},
        {"from_path": "/a/f1.txt", "to_path": "/x", "rev": 0},
    ):
        assert move(doc) == 400, doc
    assert paths_of(listing(api, recursive="true")) == whole


def test_a_move_with_a_stale_rev_is_refused_with_the_current_one(api: httpx.Client) -> None:
    first = upload(api, "/doc.txt", b"one")
    second = upload(api, "/doc.txt", b"two")
    stale = api.post(
        "/files/move", json={"from_path": "/doc.txt", "to_path": "/new.txt", "rev": first["rev"]}
    )
    assert stale.status_code == 409
    assert stale.json()["type"] == "urn:davserver:problem:stale-parent"
    assert stale.json()["current_rev"] == second["rev"]
    assert paths_of(listing(api)) == ["/doc.txt"]
    fresh = api.post(
        "/files/move", json={"from_path": "/doc.txt", "to_path": "/new.txt", "rev": second["rev"]}
    )
    assert fresh.status_code == 200 and fresh.json()["rev"] == second["rev"]
    mkdir(api, "/folder")
    folder = api.post("/files/move", json={"from_path": "/folder", "to_path": "/renamed", "rev": 1})
    assert folder.status_code == 200, "a folder has no revision to check"


def test_a_delete_with_a_stale_rev_is_refused_with_the_current_one(api: httpx.Client) -> None:
    first = upload(api, "/doc.txt", b"one")
    second = upload(api, "/doc.txt", b"two")
    stale = api.post("/files/delete", json={"path": "/doc.txt", "rev": first["rev"]})
    assert stale.status_code == 409
    assert stale.json()["type"] == "urn:davserver:problem:stale-parent"
    assert stale.json()["current_rev"] == second["rev"]
    assert api.get("/files/download", params={"path": "/doc.txt"}).content == b"two"
    assert api.get("/trash").json()["items"] == []
    for rev in ("2", 0, False):
        assert api.post("/files/delete", json={"path": "/doc.txt", "rev": rev}).status_code == 400
    gone = api.post("/files/delete", json={"path": "/doc.txt", "rev": second["rev"]})
    assert gone.status_code == 200 and gone.json()["is_deleted"] is True
    assert paths_of(listing(api)) == []


def test_another_account_cannot_list_move_or_delete_alices_paths(
    api: httpx.Client, bob: httpx.Client, tree: list[str]
) -> None:
    whole = listing(api, recursive="true")["entries"]
    assert bob.get("/files/list_folder", params={"path": "/a"}).status_code == 404
    assert listing(bob, recursive="true")["entries"] == []
    assert bob.post("/files/move", json={"from_path": "/a/f1.txt", "to_path": "/mine.txt"}).status_code == 404
    assert bob.post("/files/move", json={"from_path": "/a", "to_path": "/mine"}).status_code == 404
    assert bob.post("/files/delete", json={"path": "/f0.txt"}).status_code == 404
    assert bob.post("/files/create_folder", json={"path": "/a/b/bobs"}).status_code == 409
    bob_folder = bob.post("/files/create_folder", json={"path": "/a"})
    assert bob_folder.status_code == 201
    assert listing(api, recursive="true")["entries"] == whole
    assert paths_of(listing(bob, recursive="true")) == ["/a"]
