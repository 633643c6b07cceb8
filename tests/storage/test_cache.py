"""The metadata cache: keyed by the account's generation, so a reader on any node sees
each commit at once; a failing Redis is bypassed, never trusted, and used again later."""

from __future__ import annotations

import io
import time

import pytest
from sqlalchemy import event

from storage.cache import LocalCache, RedisCache
from storage.engine import Engine
from tests import services
from tests.storage.conftest import EngineFactory, fresh_pg_database


def _selects(engine: Engine) -> list[str]:
    seen: list[str] = []

    def count(*args: object) -> None:
        if str(args[2]).lstrip().upper().startswith("SELECT"):
            seen.append(str(args[2]))

    event.listen(engine.db.engine, "before_cursor_execute", count)
    return seen


def test_local_cache_serves_listings_until_the_next_commit(make_engine: EngineFactory) -> None:
    engine = make_engine()
    assert isinstance(engine.cache, LocalCache)
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    vol.mkdir("d")
    vol.write("d/a", io.BytesIO(b"a"))
    assert [e.name for e in vol.listdir("d")] == ["a"]
    hits = engine.cache.stats.hits
    assert [e.name for e in vol.listdir("d")] == ["a"]
    assert engine.cache.stats.hits == hits + 1
    vol.write("d/b", io.BytesIO(b"bb"))
    vol.set_properties("d/b", {"{urn:x}p": "1"})
    assert [(e.name, e.size) for e in vol.listdir("d")] == [("a", 1), ("b", 2)]
    assert list(vol.child_properties("d").values()) == [{"{urn:x}p": "1"}]


def test_block_lists_are_cached_by_version(make_engine: EngineFactory) -> None:
    engine = make_engine()
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    data = bytes(range(256)) * 4000
    vol.write("f", io.BytesIO(data))
    with vol.open("f") as r:
        assert r.read() == data
    seen = _selects(engine)
    with vol.open("f") as r:
        assert r.read() == data
    assert not any("version_blocks" in s for s in seen)


def test_the_local_cache_is_bounded_by_bytes() -> None:
    cache = LocalCache(max_bytes=1000)
    for i in range(50):
        cache.set(f"k{i}", b"x" * 100)
    assert cache.get("k0") is None and cache.get("k49") == b"x" * 100
    assert sum(size for _, size in cache._items.values()) <= 1000


@pytest.fixture
def shared(make_engine: EngineFactory, pg_url: str, redis_url: str) -> tuple[Engine, Engine]:
    """Two engines (two nodes) on one PostgreSQL database and one Redis."""
    database = fresh_pg_database(pg_url)
    a = make_engine(database, redis_url=redis_url)
    b = make_engine(database, redis_url=redis_url, master_key=a.config.master_key)
    a.accounts.create("alice", "alice-password")
    return a, b


@pytest.mark.services
def test_a_commit_on_one_node_is_seen_by_the_next_read_on_the_other(shared: tuple[Engine, Engine]) -> None:
    a, b = shared
    assert isinstance(b.cache, RedisCache)
    va, vb = a.volume("alice"), b.volume("alice")
    va.mkdir("d")
    for i in range(100):
        data = f"round {i}".encode()
        va.write(f"d/f{i % 7}", io.BytesIO(data))
        listing = {e.name: e.size for e in vb.listdir("d")}
        assert listing[f"f{i % 7}"] == len(data)
        with vb.open(f"d/f{i % 7}") as r:
            assert r.read() == data
        vb.listdir("d")  # a hit
    assert b.cache.stats.hits >= 100


@pytest.mark.services
def test_deployments_sharing_a_redis_by_default_never_read_each_others_entries(
    make_engine: EngineFactory, pg_url: str, redis_url: str
) -> None:
    """Two deployments (own databases, same Redis, no namespace configured) whose account,
    folder and generation numbers coincide; nodes of one deployment share its namespace."""
    first, second = fresh_pg_database(pg_url), fresh_pg_database(pg_url)
    a = make_engine(first, redis_url=redis_url, redis_namespace=None)
    b = make_engine(second, redis_url=redis_url, redis_namespace=None)
    a_node2 = make_engine(first, redis_url=redis_url, redis_namespace=None, master_key=a.config.master_key)
    assert a.redis_namespace == a_node2.redis_namespace != b.redis_namespace
    assert a.redis_namespace.startswith("davserver:")
    volumes = []
    for engine, name in ((a, "only-in-a.txt"), (b, "only-in-b.txt")):
        engine.accounts.create("alice", "alice-password")
        vol = engine.volume("alice")
        vol.write(name, io.BytesIO(b"x"))
        volumes.append(vol)
    va, vb = volumes
    assert va.change_seq() == vb.change_seq()  # the same cache key but for the namespace
    assert [e.name for e in va.listdir("")] == ["only-in-a.txt"]  # now cached in Redis
    assert [e.name for e in vb.listdir("")] == ["only-in-b.txt"]
    assert [e.name for e in a_node2.volume("alice").listdir("")] == ["only-in-a.txt"]
    assert a_node2.cache.stats.hits == 1  # the other node of a's deployment used a's entry


@pytest.mark.services
def test_a_bad_value_in_redis_is_a_miss(shared: tuple[Engine, Engine]) -> None:
    _, b = shared
    vol = b.volume("alice")
    vol.mkdir("d")
    generation = vol.change_seq()
    b.cache.set(f"ls:{vol.account.id}:{generation}:d", b"\x80 not json")
    assert vol.listdir("d") == []


@pytest.mark.services
def test_redis_down_means_bypassed_then_used_again(
    make_engine: EngineFactory, pg_url: str, redis_service: services.Service
) -> None:
    if not redis_service.controllable:
        pytest.fail("this test stops and restarts Redis: run it with the test session's own Redis")
    engine = make_engine(fresh_pg_database(pg_url), redis_url=redis_service.url)
    cache = engine.cache
    assert isinstance(cache, RedisCache)
    cache._pause = 0.2  # retry Redis sooner than in production
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    vol.mkdir("d")
    vol.listdir("d")
    redis_service.stop()
    try:
        for i in range(5):
            vol.write(f"d/f{i}", io.BytesIO(b"x"))
            assert len(vol.listdir("d")) == i + 1
        assert cache.stats.errors >= 1 and cache.stats.bypassed >= 1
    finally:
        redis_service.start()
    time.sleep(0.3)
    deadline = time.monotonic() + 10
    hits = cache.stats.hits
    while cache.stats.hits == hits:
        assert time.monotonic() < deadline, "the cache was not used again after Redis came back"
        assert len(vol.listdir("d")) == 5
        time.sleep(0.05)
    assert cache.shared_stats() is not None
