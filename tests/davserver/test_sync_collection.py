"""The DAV:sync-collection REPORT (RFC 6578): initial and incremental syncs at both levels,
truncation and resumption, tokens refused, properties as PROPFIND gives them."""

from __future__ import annotations

import io
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from davserver.app import AppSettings, create_app
from davserver.dav import sync_collection
from davserver.dav.provider import ACCOUNT_KEY, VolumeProvider
from davserver.dav.sync_token import BASE, decode
from storage.engine import Engine
from storage.volume import Volume
from tests.davserver.test_propfind import canonical
from tests.storage.conftest import EngineFactory

D = "{DAV:}"
PROPS = "<D:getetag/><D:getcontentlength/><D:resourcetype/>"
ODD = "sp ace & ü (1).txt"
ODD_HREF = "/dav/sp%20ace%20%26%20%C3%BC%20(1).txt"
TREE = {"/dav/a.txt", "/dav/docs/", "/dav/docs/x.txt", "/dav/docs/sub/", "/dav/docs/sub/y.txt", ODD_HREF}


@dataclass
class Env:
    engine: Engine
    vol: Volume
    c: httpx.Client
    bob: httpx.Client


@pytest.fixture
def env(make_engine: EngineFactory, database_url: str) -> Iterator[Env]:
    engine = make_engine(database_url)
    engine.accounts.create("alice", "alice-password")
    engine.accounts.create("bob", "bob-password")
    vol = engine.volume("alice")
    vol.write("a.txt", io.BytesIO(b"a"))
    vol.mkdir("docs")
    vol.write("docs/x.txt", io.BytesIO(b"xx"))
    vol.mkdir("docs/sub")
    vol.write("docs/sub/y.txt", io.BytesIO(b"yyy"))
    vol.write(ODD, io.BytesIO(b"odd"))
    transport = httpx.WSGITransport(app=create_app(engine, AppSettings()))
    with (
        httpx.Client(transport=transport, base_url="http://127.0.0.1", auth=("alice", "alice-password")) as c,
        httpx.Client(transport=transport, base_url="http://127.0.0.1", auth=("bob", "bob-password")) as bob,
    ):
        yield Env(engine, vol, c, bob)


def body(token: str = "", level: str = "1", props: str = PROPS, limit: int | None = None) -> str:
    lim = f"<D:limit><D:nresults>{limit}</D:nresults></D:limit>" if limit is not None else ""
    return (
        '<?xml version="1.0" encoding="utf-8"?><D:sync-collection xmlns:D="DAV:">'
        f"<D:sync-token>{token}</D:sync-token><D:sync-level>{level}</D:sync-level>{lim}"
        f"<D:prop>{props}</D:prop></D:sync-collection>"
    )


@dataclass
class Answer:
    changed: dict[str, str | None]  # href -> getetag (None for folders)
    removed: set[str]
    truncated: bool
    token: str
    xml: bytes


def sync(c: httpx.Client, path: str = "/dav/", token: str = "", level: str = "1", **kw: object) -> Answer:
    r = c.request("REPORT", path, content=body(token, level, **kw))  # type: ignore[arg-type]
    assert r.status_code == 207, r.text
    root = ET.fromstring(r.content)
    changed: dict[str, str | None] = {}
    removed: set[str] = set()
    truncated = False
    for resp in root.findall(f"{D}response"):
        href = resp.findtext(f"{D}href") or ""
        status = resp.findtext(f"{D}status")
        if status is None:
            assert href not in changed and href not in removed, f"{href} reported twice"
            assert resp.find(f"{D}propstat") is not None
            changed[href] = resp.findtext(f"{D}propstat/{D}prop/{D}getetag")
        elif status == "HTTP/1.1 404 Not Found":
            assert href not in changed and href not in removed, f"{href} reported twice"
            assert resp.find(f"{D}propstat") is None
            removed.add(href)
        else:
            assert status == "HTTP/1.1 507 Insufficient Storage" and href == path
            assert resp.find(f"{D}error/{D}number-of-matches-within-limits") is not None
            truncated = True
    token_text = root.findtext(f"{D}sync-token")
    assert token_text is not None and token_text.startswith(BASE)
    return Answer(changed, removed, truncated, token_text, r.content)


def refused(c: httpx.Client, path: str, content: str, status: int, condition: str | None = None) -> None:
    r = c.request("REPORT", path, content=content)
    assert r.status_code == status, r.text
    if condition is not None:
        assert ET.fromstring(r.content).find(f"{D}{condition}") is not None, r.text


# --- initial synchronisation -----------------------------------------------------------


def test_initial_sync_level_1_lists_direct_members(env: Env) -> None:
    a = sync(env.c)
    assert set(a.changed) == {"/dav/a.txt", "/dav/docs/", ODD_HREF}
    assert not a.removed and not a.truncated
    assert set(sync(env.c, "/dav/docs/").changed) == {"/dav/docs/x.txt", "/dav/docs/sub/"}


def test_initial_sync_infinite_lists_the_whole_subtree(env: Env) -> None:
    assert set(sync(env.c, level="infinite").changed) == TREE
    docs = sync(env.c, "/dav/docs/", level="infinite")
    assert set(docs.changed) == {"/dav/docs/x.txt", "/dav/docs/sub/", "/dav/docs/sub/y.txt"}


def test_hrefs_and_properties_are_propfinds(env: Env) -> None:
    env.c.request(
        "PROPPATCH",
        "/dav/a.txt",
        content='<D:propertyupdate xmlns:D="DAV:" xmlns:z="urn:z"><D:set><D:prop><z:color>red</z:color>'
        "</D:prop></D:set></D:propertyupdate>",
    )
    props = PROPS + '<D:getlastmodified/><D:displayname/><z:color xmlns:z="urn:z"/><z:none xmlns:z="urn:z"/>'
    a = sync(env.c, level="infinite", props=props)
    listed = env.c.request("PROPFIND", "/dav/", headers={"Depth": "1"})
    assert set(canonical(listed.content)) - {"/dav/"} == set(sync(env.c).changed)
    reported = canonical(a.xml)
    # Listed by folder: in-process, httpx hands non-ASCII request paths to WSGI undecoded.
    propfind: dict[str, dict[str, dict[str, str]]] = {}
    for folder in ("/dav/", "/dav/docs/", "/dav/docs/sub/"):
        find = f'<D:propfind xmlns:D="DAV:"><D:prop>{props}</D:prop></D:propfind>'
        propfind.update(
            canonical(env.c.request("PROPFIND", folder, headers={"Depth": "1"}, content=find).content)
        )
    assert set(a.changed) == set(propfind) - {"/dav/"}
    for href in a.changed:
        assert reported[href] == propfind[href], href
    assert ">red<" in reported["/dav/a.txt"]["200"]["{urn:z}color"]
    assert a.changed["/dav/a.txt"] == env.vol.stat("a.txt").etag


# --- subsequent synchronisations ------------------------------------------------------------


def test_nothing_changed_gives_an_empty_answer_and_the_same_token(env: Env) -> None:
    first = sync(env.c, level="infinite")
    again = sync(env.c, token=first.token, level="infinite")
    assert (again.changed, again.removed, again.token) == ({}, set(), first.token)


def test_put_overwrite_and_delete_of_files(env: Env) -> None:
    t0 = sync(env.c, level="infinite").token
    assert env.c.put("/dav/docs/new.txt", content=b"new").status_code == 201
    a = sync(env.c, token=t0, level="infinite")
    assert (set(a.changed), a.removed) == ({"/dav/docs/new.txt"}, set())
    old_etag = a.changed["/dav/docs/new.txt"]
    assert env.c.put("/dav/docs/new.txt", content=b"newer").status_code == 204
    b = sync(env.c, token=a.token, level="infinite")
    assert set(b.changed) == {"/dav/docs/new.txt"} and b.changed["/dav/docs/new.txt"] != old_etag
    assert env.c.delete("/dav/a.txt").status_code == 204
    c = sync(env.c, token=b.token, level="1")
    assert (c.changed, c.removed) == ({}, {"/dav/a.txt"})
    # From the first token: added and overwritten is one change; the level-1 view skips docs/.
    assert sync(env.c, token=t0).removed == {"/dav/a.txt"} and not sync(env.c, token=t0).changed


def test_removed_then_mapped_again_is_changed_and_added_then_removed_is_removed(env: Env) -> None:
    t0 = sync(env.c).token
    env.c.delete("/dav/a.txt")
    env.c.put("/dav/a.txt", content=b"again")
    env.c.put("/dav/brief.txt", content=b"b")
    env.c.delete("/dav/brief.txt")
    a = sync(env.c, token=t0)
    assert (set(a.changed), a.removed) == ({"/dav/a.txt"}, {"/dav/brief.txt"})  # RFC 6578 3.5.1, 3.5.2


def test_deleting_a_folder_reports_the_folder_only(env: Env) -> None:
    t0 = sync(env.c, level="infinite").token
    env.c.put("/dav/docs/sub/y.txt", content=b"changed first")
    assert env.c.delete("/dav/docs/").status_code == 204
    for level in ("infinite", "1"):
        a = sync(env.c, token=t0, level=level)
        assert (a.changed, a.removed) == ({}, {"/dav/docs/"}), level


def test_moving_a_file_and_a_folder(env: Env) -> None:
    t0 = sync(env.c, level="infinite").token
    assert env.c.request("MOVE", "/dav/a.txt", headers={"Destination": "/dav/b.txt"}).status_code == 201
    a = sync(env.c, token=t0, level="infinite")
    assert (set(a.changed), a.removed) == ({"/dav/b.txt"}, {"/dav/a.txt"})
    assert env.c.request("MOVE", "/dav/docs/", headers={"Destination": "/dav/papers/"}).status_code == 201
    b = sync(env.c, token=a.token, level="infinite")
    moved = {"/dav/papers/", "/dav/papers/x.txt", "/dav/papers/sub/", "/dav/papers/sub/y.txt"}
    assert (set(b.changed), b.removed) == (moved, {"/dav/docs/"})
    c = sync(env.c, token=a.token, level="1")
    assert (set(c.changed), c.removed) == ({"/dav/papers/"}, {"/dav/docs/"})


def test_moves_into_and_out_of_the_collection(env: Env) -> None:
    t0 = sync(env.c, "/dav/docs/", level="infinite").token
    env.c.request("MOVE", "/dav/a.txt", headers={"Destination": "/dav/docs/sub/a.txt"})
    env.c.request("MOVE", "/dav/docs/sub/y.txt", headers={"Destination": "/dav/y.txt"})
    a = sync(env.c, "/dav/docs/", token=t0, level="infinite")
    assert (set(a.changed), a.removed) == ({"/dav/docs/sub/a.txt"}, {"/dav/docs/sub/y.txt"})
    # Level 1 on docs/: neither file is a direct member.
    b = sync(env.c, "/dav/docs/", token=t0, level="1")
    assert (b.changed, b.removed) == ({}, set())


def test_copy_reports_every_copied_member(env: Env) -> None:
    t0 = sync(env.c, level="infinite").token
    assert env.c.request("COPY", "/dav/docs/", headers={"Destination": "/dav/copy/"}).status_code == 201
    a = sync(env.c, token=t0, level="infinite")
    copied = {"/dav/copy/", "/dav/copy/x.txt", "/dav/copy/sub/", "/dav/copy/sub/y.txt"}
    assert (set(a.changed), a.removed) == (copied, set())
    assert set(sync(env.c, token=t0).changed) == {"/dav/copy/"}


def test_a_folder_removed_and_mapped_again_needs_a_fresh_sync_at_level_infinite(env: Env) -> None:
    t0 = sync(env.c, level="infinite").token
    env.c.delete("/dav/docs/")
    env.c.request("MKCOL", "/dav/docs/")
    # Its old members cannot be named, so they cannot be reported removed (RFC 6578 3.2).
    refused(env.c, "/dav/", body(t0, "infinite"), 403, "valid-sync-token")
    a = sync(env.c, token=t0, level="1")  # level 1 does not report members of docs/
    assert (set(a.changed), a.removed) == ({"/dav/docs/"}, set())


def test_a_token_is_refused_once_its_collection_was_moved_or_replaced(env: Env) -> None:
    t0 = sync(env.c, "/dav/docs/sub/", level="infinite").token
    env.c.request("MOVE", "/dav/docs/", headers={"Destination": "/dav/papers/"})
    env.c.request("MKCOL", "/dav/docs/")
    env.c.request("MKCOL", "/dav/docs/sub/")
    refused(env.c, "/dav/docs/sub/", body(t0, "infinite"), 403, "valid-sync-token")
    refused(env.c, "/dav/papers/sub/", body(t0, "infinite"), 403, "valid-sync-token")


def test_a_token_from_propfind_works(env: Env) -> None:
    propfind = env.c.request(
        "PROPFIND",
        "/dav/docs/",
        headers={"Depth": "0"},
        content='<D:propfind xmlns:D="DAV:"><D:prop><D:sync-token/></D:prop></D:propfind>',
    )
    token = ET.fromstring(propfind.content).findtext(f"{D}response/{D}propstat/{D}prop/{D}sync-token")
    assert token is not None and token == sync(env.c).token
    env.c.put("/dav/docs/sub/z.txt", content=b"z")
    a = sync(env.c, "/dav/docs/", token=token, level="infinite")
    assert (set(a.changed), a.removed) == ({"/dav/docs/sub/z.txt"}, set())


# --- truncation ---------------------------------------------------------------------------


def replay(model: dict[str, str | None], a: Answer) -> None:
    """What a client does with an answer: a removed folder takes its members with it."""
    for href in a.removed:
        for known in [k for k in model if k == href or (href.endswith("/") and k.startswith(href))]:
            del model[known]
    model.update(a.changed)


def paged(c: httpx.Client, path: str, token: str, level: str, n: int, model: dict[str, str | None]) -> str:
    for _ in range(100):
        a = sync(c, path, token=token, level=level, limit=n)
        assert len(a.changed) + len(a.removed) <= n
        replay(model, a)
        token = a.token
        if not a.truncated:
            return token
    raise AssertionError("never completed")


@pytest.mark.parametrize("level", ["1", "infinite"])
def test_limit_truncates_with_507_and_resumes_to_the_unlimited_answer(env: Env, level: str) -> None:
    for i in range(7):
        env.vol.write(f"docs/f{i}.txt", io.BytesIO(b"f"))
    whole = sync(env.c, level=level)
    first = sync(env.c, level=level, limit=2)
    assert first.truncated and len(first.changed) == 2
    model: dict[str, str | None] = {}
    end = paged(env.c, "/dav/", "", level, 2, model)
    assert model == whole.changed
    assert decode(end).resume is None and end == whole.token
    # Incremental, with removals, paged by one.
    env.c.delete("/dav/docs/f1.txt")
    env.c.put("/dav/docs/f2.txt", content=b"changed")
    env.c.put("/dav/zz.txt", content=b"new")
    env.c.request("MOVE", "/dav/docs/sub/", headers={"Destination": "/dav/sub/"})
    unlimited = dict(model)
    replay(unlimited, sync(env.c, token=end, level=level))
    paged(env.c, "/dav/", end, level, 1, model)
    assert model == unlimited == sync(env.c, level=level).changed


def test_changes_made_between_pages_are_not_lost(env: Env) -> None:
    for i in range(6):
        env.vol.write(f"m{i}.txt", io.BytesIO(b"m"))
    model: dict[str, str | None] = {}
    a = sync(env.c, level="infinite", limit=4)
    replay(model, a)
    reported = sorted(a.changed)
    env.c.put(reported[0], content=b"changed after it was reported")
    env.c.put("/dav/0-early.txt", content=b"sorts before the resume point")
    env.c.delete(reported[1])
    paged(env.c, "/dav/", a.token, "infinite", 4, model)
    assert model == sync(env.c, level="infinite").changed


def test_without_a_limit_answers_are_bounded_too(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_collection, "MAX_RESULTS", 4)
    a = sync(env.c, level="infinite")
    assert a.truncated and len(a.changed) == 4
    assert sync(env.c, level="infinite", limit=100).truncated
    model: dict[str, str | None] = {}
    replay(model, a)
    paged(env.c, "/dav/", a.token, "infinite", 100, model)
    assert set(model) == TREE


# --- refused tokens and requests ---------------------------------------------------------------


def test_bad_foreign_and_expired_tokens_are_refused(env: Env) -> None:
    token = sync(env.c, level="infinite").token
    bobs = sync(env.bob).token
    ahead = token.rsplit("/", 1)[0] + f"/{decode(token).position + 5}"
    resume = sync(env.c, level="infinite", limit=1).token
    tampered = resume.replace(";initial", ";initial=1")
    for bad in ("garbage", "http://davserver.invalid/sync/x/1", bobs, ahead, token + "0;", tampered):
        refused(env.c, "/dav/", body(bad, "infinite"), 403, "valid-sync-token")
    refused(env.bob, "/dav/", body(token), 403, "valid-sync-token")
    # A resume token belongs to its collection and level.
    refused(env.c, "/dav/docs/", body(resume, "infinite"), 403, "valid-sync-token")
    refused(env.c, "/dav/", body(resume, "1"), 403, "valid-sync-token")
    # Compaction past the token's position expires it; a newer token still works.
    env.c.put("/dav/later.txt", content=b"l")
    assert env.engine.compact_journal(now=time.time() + 100 * 86400) >= 1
    refused(env.c, "/dav/", body(token, "infinite"), 403, "valid-sync-token")
    fresh = sync(env.c, level="infinite")
    assert sync(env.c, token=fresh.token, level="infinite").changed == {}


def test_malformed_requests(env: Env) -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        '<D:sync-collection xmlns:D="DAV:"><D:sync-token>&b;</D:sync-token><D:sync-level>1</D:sync-level>'
        "<D:prop/></D:sync-collection>"
    )
    bad = [
        "<D:sync-collection xmlns:D='DAV:'><unclosed>",
        bomb,
        body().replace("<D:sync-level>1</D:sync-level>", ""),
        body().replace("<D:sync-token></D:sync-token>", ""),
        body().replace("<D:prop>" + PROPS + "</D:prop>", ""),
        body(level="2"),
        body(limit=0),
        body().replace("<D:prop>", "<D:limit><D:nresults>x</D:nresults></D:limit><D:prop>"),
        "",
    ]
    for content in bad:
        refused(env.c, "/dav/", content, 400)
    r = env.c.request("REPORT", "/dav/", content=body(), headers={"Depth": "1"})
    assert r.status_code == 400
    r = env.c.request("REPORT", "/dav/", content=b" " * ((1 << 20) + 1))
    assert r.status_code == 413


def test_report_on_a_file_a_missing_path_or_of_another_kind(env: Env) -> None:
    refused(env.c, "/dav/a.txt", body(), 403, "supported-report")
    refused(env.c, "/dav/nope/", body(), 404)
    other = '<D:expand-property xmlns:D="DAV:"><D:property name="owner"/></D:expand-property>'
    refused(env.c, "/dav/", other, 403, "supported-report")


def test_an_empty_prop_still_gives_a_propstat(env: Env) -> None:
    a = sync(env.c, props="")
    assert set(a.changed) == {"/dav/a.txt", "/dav/docs/", ODD_HREF}


# --- live properties and OPTIONS ---------------------------------------------------------------


def test_sync_properties_on_collections_alike_on_both_propfind_paths(env: Env) -> None:
    slow = httpx.Client(
        transport=httpx.WSGITransport(app=create_app(env.engine, AppSettings(fast_propfind=False))),
        base_url="http://127.0.0.1",
        auth=("alice", "alice-password"),
    )
    named = (
        '<D:propfind xmlns:D="DAV:"><D:prop><D:sync-token/><D:supported-report-set/></D:prop></D:propfind>'
    )
    allprop = '<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
    with slow:
        for depth in ("0", "1"):
            fast_answer = env.c.request("PROPFIND", "/dav/", headers={"Depth": depth}, content=named)
            slow_answer = slow.request("PROPFIND", "/dav/", headers={"Depth": depth}, content=named)
            assert canonical(fast_answer.content) == canonical(slow_answer.content)
            for client in (env.c, slow):
                everything = client.request("PROPFIND", "/dav/", headers={"Depth": depth}, content=allprop)
                assert b"sync-token" not in everything.content  # RFC 6578 4
                assert b"supported-report-set" not in everything.content
    tree = canonical(fast_answer.content)
    folder = tree["/dav/docs/"]["200"]
    assert f">{sync(env.c).token}<" in folder[f"{D}sync-token"]
    report = f"{D}supported-report-set/{D}supported-report/{D}report/{D}sync-collection"
    for resp in ET.fromstring(fast_answer.content).findall(f"{D}response"):
        listed = resp.find(f"{D}propstat/{D}prop/{report}")
        assert (listed is not None) == (resp.findtext(f"{D}href") or "").endswith("/")
    assert set(tree["/dav/a.txt"]["404"]) == {f"{D}sync-token", f"{D}supported-report-set"}


def test_sync_properties_are_named_by_propname_but_not_allprop(env: Env) -> None:
    # WsgiDAV's PROPFIND does not parse <D:propname/> (it looks for <D:name/>): asked directly.
    provider = VolumeProvider(env.engine)
    environ = {ACCOUNT_KEY: env.vol.account.id, "wsgidav.provider": provider}
    folder = provider.get_resource_inst("/docs", environ)
    assert folder is not None
    assert {f"{D}sync-token", f"{D}supported-report-set"} <= set(folder.get_property_names(is_allprop=False))
    assert not {f"{D}sync-token", f"{D}supported-report-set"} & set(
        folder.get_property_names(is_allprop=True)
    )


def test_options_lists_report_on_collections(env: Env) -> None:
    assert "REPORT" in env.c.options("/dav/docs/").headers["Allow"].split(", ")
    assert "REPORT" not in env.c.options("/dav/a.txt").headers["Allow"]


# --- RFC 6578 section 5: sync-tokens in If headers ------------------------------------------


def test_a_sync_token_in_an_if_header_holds_until_the_collection_changes(env: Env) -> None:
    token = sync(env.c).token
    guarded = {"If": f"</dav/> (<{token}>)"}
    assert env.c.put("/dav/docs/new.txt", content=b"1", headers=guarded).status_code == 201
    # That PUT changed the account: the token is stale now, and the same condition fails.
    assert env.c.put("/dav/docs/new.txt", content=b"2", headers=guarded).status_code == 412
    assert env.vol.stat("docs/new.txt").size == 1
    assert env.c.put("/dav/docs/new.txt", content=b"3", headers={"If": f"(Not <{token}>)"}).status_code == 204
    # Another account's token, or a garbled one, never holds.
    other = sync(env.bob).token
    assert env.c.delete("/dav/a.txt", headers={"If": f"(<{other}>)"}).status_code == 412
    assert (
        env.c.delete("/dav/a.txt", headers={"If": "(<http://davserver.invalid/sync/x/y>)"}).status_code == 412
    )
    assert env.vol.stat("a.txt").size == 1


def test_a_sync_token_condition_combines_with_a_lock_token(env: Env) -> None:
    lockinfo = (
        '<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
        "<D:locktype><D:write/></D:locktype></D:lockinfo>"
    )
    lock = env.c.request("LOCK", "/dav/a.txt", content=lockinfo)
    assert lock.status_code == 200
    lock_token = lock.headers["Lock-Token"].strip("<>")
    token = sync(env.c).token
    both = {"If": f"(<{lock_token}> <{token}>)"}
    assert env.c.put("/dav/a.txt", content=b"locked write", headers=both).status_code == 204
    assert env.c.put("/dav/a.txt", content=b"stale", headers=both).status_code == 412
