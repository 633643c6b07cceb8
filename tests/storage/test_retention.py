"""Retention: thinning by age with an injected clock, pins, limits, trash expiry."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.engine import Engine
from storage.retention import DAY, HOUR, MINUTE, WEEK, RetentionPolicy, VersionInfo, versions_to_drop
from tests.storage.conftest import EngineFactory

POLICY = RetentionPolicy()
NOW = 1_000_000_000.0


def _every(step: float, span: float) -> list[VersionInfo]:
    """A version every ``step`` seconds over the last ``span`` seconds (ids grow with time)."""
    count = int(span // step)
    return [VersionInfo(i + 1, NOW - span + i * step) for i in range(count)]


def test_recent_versions_are_all_kept() -> None:
    versions = _every(10, 9 * MINUTE)
    assert versions_to_drop(versions, versions[-1].id, POLICY, NOW) == set()


def test_thinning_keeps_one_per_bucket_of_each_tier() -> None:
    versions = _every(10, 3 * DAY)  # a version every 10 s for three days
    current = versions[-1].id
    kept = {v.id for v in versions} - versions_to_drop(versions, current, POLICY, NOW)
    by_age = sorted(NOW - v.created_at for v in versions if v.id in kept)
    recent = [a for a in by_age if a < 10 * MINUTE]
    minutely = [a for a in by_age if 10 * MINUTE <= a < HOUR]
    hourly = [a for a in by_age if HOUR <= a < DAY]
    daily = [a for a in by_age if a >= DAY]
    assert len(recent) == 59  # all of the first ten minutes (ages 10 s .. 590 s)
    assert 49 <= len(minutely) <= 51  # one per minute
    assert 22 <= len(hourly) <= 24  # one per hour
    assert 2 <= len(daily) <= 3  # one per day
    assert current in kept


def test_pinned_and_current_versions_survive_everything() -> None:
    versions = [VersionInfo(1, NOW - 400 * DAY, pinned=True), *_every(DAY, 100 * DAY)[1:]]
    current = versions[1].id  # an old version made current again is still current
    strict = RetentionPolicy(max_versions=3, max_age_seconds=30 * DAY)
    kept = {v.id for v in versions} - versions_to_drop(versions, current, strict, NOW)
    assert {1, current} <= kept
    assert len(kept) == 3
    assert all(NOW - v.created_at <= 30 * DAY for v in versions if v.id in kept - {1, current})


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=400 * DAY), min_size=1, max_size=60),
    st.data(),
)
def test_thinning_laws(ages: list[float], data: st.DataObject) -> None:
    versions = [VersionInfo(i + 1, NOW - age, pinned=data.draw(st.booleans())) for i, age in enumerate(ages)]
    current = data.draw(st.sampled_from([v.id for v in versions]))
    max_versions = data.draw(st.one_of(st.none(), st.integers(min_value=1, max_value=20)))
    policy = RetentionPolicy(max_versions=max_versions)
    drop = versions_to_drop(versions, current, policy, NOW)
    kept = [v for v in versions if v.id not in drop]
    assert current not in drop and not any(v.pinned for v in versions if v.id in drop)
    assert drop <= {v.id for v in versions}
    assert (
        all(v.id not in drop for v in versions if NOW - v.created_at < policy.keep_all_seconds)
        or max_versions
    )
    if max_versions is not None:
        protected = sum(1 for v in versions if v.pinned or v.id == current)
        assert len(kept) <= max(max_versions, protected)
    assert versions_to_drop(kept, current, policy, NOW) == set()  # a second pass changes nothing


def test_a_pass_thins_real_files_and_frees_their_blocks(
    make_engine: EngineFactory, database_url: str
) -> None:
    clock = [NOW - 10 * DAY]
    engine: Engine = make_engine(database_url, clock=lambda: clock[0])
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    for i in range(48):  # hourly edits for two days, eight days ago
        vol.write("doc.txt", io.BytesIO(f"edit {i} ".encode() * 1000))
        clock[0] += HOUR
    pinned = vol.revisions("doc.txt")[-5].version_id
    vol.pin_revision("doc.txt", pinned)
    clock[0] = NOW
    used_before = vol.quota().used_bytes
    report = engine.apply_retention()
    revs = vol.revisions("doc.txt")
    assert vol.quota().used_bytes == sum(r.size for r in revs) < used_before  # retention gives room back
    assert report.versions_removed == 48 - len(revs)
    assert len(revs) <= 4  # one per day for the two days, the current one, the pinned one
    assert revs[0].is_current and pinned in {r.version_id for r in revs}
    assert engine.gc(grace_seconds=0).blocks_deleted > 0
    assert engine.fsck(deep=True).clean
    assert engine.apply_retention().versions_removed == 0


def test_trash_expires_and_accounts_override_the_server(
    make_engine: EngineFactory, database_url: str
) -> None:
    clock = [NOW]
    engine: Engine = make_engine(database_url, clock=lambda: clock[0])
    for name in ("alice", "bob"):
        engine.accounts.create(name, f"{name}-password-1")
        vol = engine.volume(name)
        for i in range(5):
            vol.write("f", io.BytesIO(b"v%d" % i))
            clock[0] += WEEK
        vol.write("gone", io.BytesIO(b"bye"))
        vol.delete("gone")
    engine.accounts.set_retention("bob", {"max_versions": 2, "trash_seconds": None})
    with pytest.raises(ValueError, match="unknown"):
        engine.accounts.set_retention("bob", {"max_verions": 2})
    clock[0] += 31 * DAY
    engine.apply_retention()
    alice, bob = engine.volume("alice"), engine.volume("bob")
    assert len(alice.revisions("f")) == 5  # weekly edits, weekly buckets: all kept
    assert len(bob.revisions("f")) == 2
    assert alice.trash() == [] and len(bob.trash()) == 1


@pytest.mark.parametrize("removal", ["retention", "trash purge", "trash item purge"])
def test_a_download_outlives_the_removal_of_its_version_for_the_gc_grace(
    make_engine: EngineFactory, database_url: str, removal: str
) -> None:
    # Blocks written long ago and released now by retention or a purge stay for the gc
    # grace from their release, not from their creation: the download that opened the
    # version before it went finishes.
    clock = [NOW - 10 * DAY]
    engine: Engine = make_engine(database_url, clock=lambda: clock[0])
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    old = random.Random(7).randbytes(3_000_000)  # ~45 blocks: far more than the reader prefetches
    vol.write("f.bin", io.BytesIO(old))
    version = vol.stat("f.bin").version_id
    clock[0] = NOW - DAY
    if removal == "retention":
        vol.write("f.bin", io.BytesIO(b"the new content"))
        engine.accounts.set_retention("alice", {"max_versions": 1})
    else:
        vol.delete("f.bin")
    clock[0] = NOW
    reader = vol.open("f.bin", version_id=version, include_deleted=removal != "retention")
    with reader:
        head = reader.read(100_000)
        if removal == "retention":
            assert engine.apply_retention().versions_removed == 1
        elif removal == "trash purge":
            assert vol.purge_trash() == 1
        else:
            vol.purge_trash_item(vol.trash()[0].id)
        assert engine.gc().blocks_deleted == 0, "released now: within the grace"
        assert head + reader.read() == old
    clock[0] += engine.config.gc_grace_seconds + 1
    assert engine.gc().blocks_deleted > 0
    check = engine.fsck(deep=True)
    assert check.clean and check.leak_free, check
