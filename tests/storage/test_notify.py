"""Long-poll wake-ups: the notifier's rules, and commits of another engine (another
node) arriving through Redis pub/sub or, without it, through journal polling."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from storage.engine import Engine
from storage.model import Committed
from storage.notify import Notifier
from tests import services
from tests.storage.conftest import EngineFactory


class Outcome:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: bool | None = None

    def __call__(self, changed: bool) -> None:
        assert self.value is None, "answered twice"
        self.value = changed
        self.event.set()

    def wait(self, seconds: float = 5.0) -> bool | None:
        self.event.wait(seconds)
        return self.value


@pytest.fixture
def notifier() -> Iterator[Notifier]:
    n = Notifier()
    n.start()
    yield n
    n.close()


def _settle(notifier: Notifier, count: int) -> None:
    deadline = time.monotonic() + 5
    while notifier.waiting != count:
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_a_commit_wakes_the_waiters_of_its_account_past_their_position(notifier: Notifier) -> None:
    behind, level, other = Outcome(), Outcome(), Outcome()
    notifier.watch(1, 4, timeout=30, on_done=behind)
    notifier.watch(1, 5, timeout=30, on_done=level)
    notifier.watch(2, 0, timeout=30, on_done=other)
    _settle(notifier, 3)
    notifier.publish(Committed(1, 5, ("a",)))
    assert behind.wait() is True
    time.sleep(0.05)
    assert level.value is None and other.value is None
    notifier.publish(Committed(1, 6, ("b",)))
    assert level.wait() is True
    assert notifier.waiting == 1


def test_a_scoped_waiter_wakes_for_its_folder_and_its_ancestors_only(notifier: Notifier) -> None:
    scoped = Outcome()
    notifier.watch(1, 0, scope="docs/sub", timeout=30, on_done=scoped)
    _settle(notifier, 1)
    notifier.publish(Committed(1, 1, ("docs/subway", "other")))
    time.sleep(0.05)
    assert scoped.value is None
    notifier.publish(Committed(1, 2, ("docs",)))  # the folder above moved or went
    assert scoped.wait() is True


def test_a_commit_just_before_the_wait_began_still_wakes_it(notifier: Notifier) -> None:
    notifier.publish(Committed(1, 8, ("x",)))
    late = Outcome()
    notifier.watch(1, 7, timeout=30, on_done=late)
    assert late.wait() is True


def test_timeouts_and_close_answer_no_change(notifier: Notifier) -> None:
    quick, held = Outcome(), Outcome()
    notifier.watch(1, 0, timeout=0.05, on_done=quick)
    notifier.watch(1, 0, timeout=30, on_done=held)
    assert quick.wait() is False
    notifier.close()
    assert held.wait() is False


def test_a_client_hanging_up_ends_its_wait(notifier: Notifier) -> None:
    server_side, client_side = socket.socketpair()
    gone = Outcome()
    notifier.watch(1, 0, timeout=30, on_done=gone, cancel_fd=server_side.fileno())
    _settle(notifier, 1)
    client_side.close()
    assert gone.wait() is False
    assert notifier.waiting == 0
    server_side.close()


def _two_nodes(make_engine: EngineFactory, database_url: str, **kw: object) -> tuple[Engine, Engine]:
    a = make_engine(database_url, **kw)
    a.accounts.create("alice", "alice-password")
    b = make_engine(database_url, master_key=a.config.master_key, **kw)
    for engine in (a, b):
        engine.notifications.start()
    return a, b


def _wait_on(engine: Engine) -> Outcome:
    vol = engine.volume("alice")
    outcome = Outcome()
    engine.notifications.watch(vol.account.id, vol.change_seq(), timeout=30, on_done=outcome)
    _settle(engine.notifications.notifier, 1)
    return outcome


def test_without_redis_another_nodes_commit_is_found_by_polling(
    make_engine: EngineFactory, database_url: str
) -> None:
    a, b = _two_nodes(make_engine, database_url, notify_fallback_seconds=0.05)
    woken = _wait_on(a)
    b.volume("alice").write("from-b", io.BytesIO(b"b"))
    assert woken.wait() is True


def _wait_subscribed(*engines: Engine) -> None:
    deadline = time.monotonic() + 10
    while not all(e.notifications.redis_connected for e in engines):
        assert time.monotonic() < deadline, "never subscribed to Redis"
        time.sleep(0.02)


@pytest.mark.services
def test_redis_carries_commits_between_nodes(make_engine: EngineFactory, redis_url: str) -> None:
    # Polling would take an hour here: only pub/sub can wake the waiter in time.
    a, b = _two_nodes(
        make_engine, None, redis_url=redis_url, notify_fallback_seconds=3600, notify_safety_seconds=3600
    )
    _wait_subscribed(a, b)
    woken = _wait_on(a)
    started = time.monotonic()
    b.volume("alice").write("from-b", io.BytesIO(b"b"))
    assert woken.wait() is True
    assert time.monotonic() - started < 5


@pytest.mark.services
def test_while_redis_is_down_polling_takes_over_and_pubsub_comes_back(
    make_engine: EngineFactory, redis_service: services.Service
) -> None:
    if not redis_service.controllable:
        pytest.fail("this test stops and restarts Redis: run it with the test session's own Redis")
    a, b = _two_nodes(
        make_engine,
        None,
        redis_url=redis_service.url,
        notify_fallback_seconds=0.1,
        notify_safety_seconds=3600,
    )
    _wait_subscribed(a, b)
    redis_service.stop()
    try:
        deadline = time.monotonic() + 10
        while a.notifications.redis_connected:
            assert time.monotonic() < deadline, "did not notice Redis going away"
            time.sleep(0.05)
        woken = _wait_on(a)
        b.volume("alice").write("while-down", io.BytesIO(b"b"))
        assert woken.wait() is True
    finally:
        redis_service.start()
    _wait_subscribed(a, b)


def test_a_wait_after_close_is_answered_at_once() -> None:
    closed = Notifier()
    closed.close()
    late = Outcome()
    closed.watch(1, 0, timeout=30, on_done=late)
    assert late.wait(0) is False


def test_a_wait_after_a_started_notifier_closed_is_answered_at_once(notifier: Notifier) -> None:
    notifier.close()
    late = Outcome()
    notifier.watch(1, 0, timeout=30, on_done=late)
    assert late.wait(0) is False


def test_commits_racing_with_new_waits_never_leave_a_waiter_behind(notifier: Notifier) -> None:
    """A commit wakes the loop only for accounts with waiters; a wait registering at that very
    moment must still see the commit (here: 300 waits, each racing one commit)."""
    outcomes = []
    for seq in range(1, 301):
        outcome = Outcome()
        outcomes.append(outcome)
        publisher = threading.Thread(target=notifier.publish, args=(Committed(7, seq, ("f",)),))
        publisher.start()
        notifier.watch(7, seq - 1, timeout=10, on_done=outcome)
        publisher.join()
    assert all(o.wait(10) is True for o in outcomes)


def test_commits_with_nobody_waiting_do_not_wake_the_loop(notifier: Notifier) -> None:
    woken = []
    notifier._publish = woken.append  # type: ignore[method-assign]
    notifier.publish(Committed(3, 1, ("a",)))
    assert woken == [] and notifier.heard(3) == 1
    outcome = Outcome()
    notifier.watch(3, 1, timeout=10, on_done=outcome)
    _settle(notifier, 1)
    notifier.publish(Committed(3, 2, ("a",)))
    deadline = time.monotonic() + 5
    while not woken:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert [c.seq for c in woken] == [2]
