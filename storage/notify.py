"""Change notifications: wake whoever waits on an account as soon as it commits.

Three parts, one per row of the design's topology:

* :class:`Notifier` -- every waiter of this process, held by an asyncio loop on
  one thread (not a thread per waiter). A waiter is (account, position, scope,
  deadline, callback); an event (:class:`~storage.model.Committed`: account, new
  sequence, paths touched) wakes the waiters it concerns. Events and new waiters
  are handed to the loop in order, and the last few events of each account are
  kept, so a waiter registered just after "nothing new" was read from the
  database still hears of a commit that landed in between.
* :class:`RedisBus` -- publishes this node's commits on a Redis channel and feeds
  every other node's into the notifier. Pub/sub delivers at most once and not
  while disconnected, hence the third part.
* :class:`JournalPoller` -- for accounts that have waiters, compares the
  database's change sequence with what the notifier has heard: every
  ``fallback_seconds`` while the bus is down or absent (commits of other nodes or
  processes then still wake waiters, seconds later), every ``safety_seconds``
  while it is up (to repair a lost message). Slower, never wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from storage.changes import affects
from storage.metadata import schema as t
from storage.metadata.db import Database
from storage.model import Committed

log = logging.getLogger("davserver.notify")

OnDone = Callable[[bool], None]

#: Recent events kept per account, and accounts remembered (least recently changed dropped first).
RECENT_EVENTS = 32
RECENT_ACCOUNTS = 50_000


@dataclass(eq=False)
class _Watch:
    account_id: int
    after: int
    scope: str
    on_done: OnDone
    fd: int | None
    timer: asyncio.TimerHandle | None = None
    done: bool = False


@dataclass
class _Recent:
    seq: int = 0
    events: deque[Committed] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))


class Notifier:
    """The waiters of this process; thread-safe entry points, one asyncio loop inside."""

    def __init__(self) -> None:
        #: Made by start() (so an engine that never serves long-polls owns no loop).
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: Guards _watches and _recent: a commit records itself in _recent and looks for
        #: watches under it, a watch being added looks at _recent and registers under it,
        #: so one of the two always sees the other (and the loop is woken only then).
        self._lock = threading.Lock()
        self._watches: dict[int, set[_Watch]] = {}
        self._recent: OrderedDict[int, _Recent] = OrderedDict()
        self._count = 0
        self._closed = False

    # -- thread-safe API ---------------------------------------------------------------

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._closed:
                self._event_loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._run, name="davserver-notify", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Answer every waiter "no change" and stop the loop."""
        with self._start_lock:
            self._closed = True
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._loop.call_soon_threadsafe(self._shutdown)
        thread.join(10)

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        assert self._event_loop is not None, "the notifier is not started"
        return self._event_loop

    @property
    def waiting(self) -> int:
        """How many waiters are held now (read without locking: a gauge)."""
        return self._count

    def publish(self, committed: Committed) -> None:
        """An account committed (here, on another node, or found by polling).

        Recorded on the caller's thread; the loop is woken only when the account has
        waiters (a small PUT paid for waking it every time: about 5% of its CPU).
        """
        with self._lock:
            recent = self._recent.get(committed.account_id)
            if recent is None:
                recent = self._recent[committed.account_id] = _Recent()
                if len(self._recent) > RECENT_ACCOUNTS:
                    self._recent.popitem(last=False)
            else:
                self._recent.move_to_end(committed.account_id)
            recent.seq = max(recent.seq, committed.seq)
            recent.events.append(committed)
            waited_on = committed.account_id in self._watches
        if waited_on and self._thread is not None:
            self._loop.call_soon_threadsafe(self._publish, committed)

    def watch(
        self,
        account_id: int,
        after: int,
        *,
        scope: str = "",
        timeout: float,
        on_done: OnDone,
        cancel_fd: int | None = None,
    ) -> None:
        """Call ``on_done(True)`` on the loop thread once the account commits past ``after``
        with a change that concerns ``scope``, or ``on_done(False)`` after ``timeout`` seconds.

        ``cancel_fd``: a socket whose becoming readable (the client hung up, or sent
        something it should not have) ends the wait early with ``on_done(False)``.
        """
        self.start()
        watch = _Watch(account_id, after, scope, on_done, cancel_fd)
        if self._closed or self._event_loop is None:  # the server is stopping
            self._call(watch, False)
            return
        self._loop.call_soon_threadsafe(self._add, watch, timeout)

    def accounts_waited_on(self) -> dict[int, int]:
        """{account: the lowest position its waiters hold} (for the poller; a snapshot)."""
        snapshot: dict[int, int] = {}
        with self._lock:
            waiting = [(account_id, list(watches)) for account_id, watches in self._watches.items()]
        for account_id, watches in waiting:
            positions = [w.after for w in watches]
            if positions:
                snapshot[account_id] = min(positions)
        return snapshot

    def heard(self, account_id: int) -> int:
        with self._lock:
            recent = self._recent.get(account_id)
            return 0 if recent is None else recent.seq

    # -- on the loop thread ------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _shutdown(self) -> None:
        with self._lock:
            watches = [w for ws in self._watches.values() for w in ws]
        for watch in watches:
            self._finish(watch, False)
        self._loop.stop()

    def _add(self, watch: _Watch, timeout: float) -> None:
        if self._closed:
            self._call(watch, False)
            return
        with self._lock:
            recent = self._recent.get(watch.account_id)
            seen = recent is not None and any(self._concerns(e, watch) for e in recent.events)
            if not seen:
                self._watches.setdefault(watch.account_id, set()).add(watch)
                self._count += 1
        if seen:
            self._call(watch, True)
            return
        watch.timer = self._loop.call_later(timeout, self._finish, watch, False)
        if watch.fd is not None:
            try:
                self._loop.add_reader(watch.fd, self._finish, watch, False)
            except (OSError, ValueError):
                watch.fd = None
                self._finish(watch, False)

    def _publish(self, committed: Committed) -> None:
        """On the loop: answer the account's waiters that the (recorded) commit concerns."""
        with self._lock:
            watches = list(self._watches.get(committed.account_id, ()))
        for watch in watches:
            if self._concerns(committed, watch):
                self._finish(watch, True)

    @staticmethod
    def _concerns(event: Committed, watch: _Watch) -> bool:
        if event.seq <= watch.after:
            return False
        return not watch.scope or any(affects(p, watch.scope) for p in event.paths)

    def _finish(self, watch: _Watch, changed: bool) -> None:
        if watch.done:
            return
        with self._lock:
            watches = self._watches.get(watch.account_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[watch.account_id]
            self._count -= 1
        if watch.timer is not None:
            watch.timer.cancel()
        if watch.fd is not None:
            self._loop.remove_reader(watch.fd)
        self._call(watch, changed)

    @staticmethod
    def _call(watch: _Watch, changed: bool) -> None:
        watch.done = True
        try:
            watch.on_done(changed)
        except Exception:
            log.exception("a change waiter's callback failed")


class RedisBus:
    """Commits of every node, through one Redis pub/sub channel."""

    def __init__(self, url: str, notifier: Notifier, *, namespace: str = "davserver") -> None:
        #: Pub/sub ignores Redis database numbers: the namespace keeps deployments apart.
        self.channel = f"{namespace}:commits"
        import redis

        self._redis = redis
        self._url = url
        self._notifier = notifier
        self._node = os.urandom(8).hex()
        self._outbox: queue.Queue[Committed | None] = queue.Queue(maxsize=10_000)
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def connected(self) -> bool:
        """Subscribed now: other nodes' commits reach this one within milliseconds."""
        return self._subscribed.is_set()

    def start(self) -> None:
        for target, name in ((self._listen, "davserver-redis-sub"), (self._send, "davserver-redis-pub")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._outbox.put_nowait(None)
        for thread in self._threads:
            thread.join(5)

    def publish(self, committed: Committed) -> None:
        """Queue a local commit for the other nodes (never blocks a commit on Redis)."""
        # When Redis is stuck the queue fills; the other nodes' pollers catch up.
        with contextlib.suppress(queue.Full):
            self._outbox.put_nowait(committed)

    def _client(self) -> Any:
        return self._redis.Redis.from_url(self._url, socket_timeout=5, socket_connect_timeout=2)

    def _send(self) -> None:
        client = self._client()
        while not self._stop.is_set():
            committed = self._outbox.get()
            if committed is None:
                break
            message = json.dumps(
                {"n": self._node, "a": committed.account_id, "s": committed.seq, "p": committed.paths}
            )
            try:
                client.publish(self.channel, message)
            except (self._redis.RedisError, OSError) as exc:
                log.debug("change not published to Redis: %s", exc)

    def _listen(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            pubsub = self._client().pubsub()
            try:
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._subscribed.set()
                        delay = 0.5
                    elif message["type"] == "message":
                        self._receive(message["data"])
            except (self._redis.RedisError, OSError) as exc:
                if self._subscribed.is_set():
                    log.warning("Redis notifications lost (%s); polling the journal until it is back", exc)
                self._subscribed.clear()
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
            finally:
                self._subscribed.clear()
                pubsub.close()

    def _receive(self, data: bytes) -> None:
        try:
            doc = json.loads(data)
            if doc["n"] == self._node:
                return
            committed = Committed(int(doc["a"]), int(doc["s"]), tuple(str(p) for p in doc["p"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed message on %s", self.channel)
            return
        self._notifier.publish(committed)


class JournalPoller:
    """Finds commits the notifier did not hear of, for accounts someone waits on."""

    def __init__(
        self,
        db: Database,
        notifier: Notifier,
        *,
        bus_connected: Callable[[], bool],
        fallback_seconds: float,
        safety_seconds: float,
    ) -> None:
        self._db = db
        self._notifier = notifier
        self._bus_connected = bus_connected
        self._fallback = fallback_seconds
        self._safety = safety_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="davserver-journal-poll", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        last = time.monotonic()
        # Ticks at the fallback rate, so a bus going down is noticed within one tick.
        while not self._stop.wait(self._fallback):
            if self._bus_connected() and time.monotonic() - last < self._safety:
                continue
            last = time.monotonic()
            try:
                self.poll()
            except Exception as exc:  # the database may be down; try again next round
                log.warning("journal poll failed: %s", exc)

    def poll(self) -> int:
        """One round; returns how many accounts had news."""
        waited = self._notifier.accounts_waited_on()
        if not waited:
            return 0
        a, j = t.accounts.c, t.journal.c
        news = 0
        with self._db.read() as conn:
            rows = conn.execute(select(a.id, a.change_seq).where(a.id.in_(list(waited)))).all()
            for account_id, seq in rows:
                since = max(waited[account_id], self._notifier.heard(account_id))
                if seq <= since:
                    continue
                touched = conn.execute(
                    select(j.path, j.old_path).where(j.account_id == account_id, j.seq > since).limit(1001)
                ).all()
                if len(touched) > 1000:
                    paths: tuple[str, ...] = ("",)
                else:
                    paths = tuple({p for row in touched for p in row if p is not None})
                self._notifier.publish(Committed(account_id, int(seq), paths))
                news += 1
        return news


class Notifications:
    """What an engine offers to long-polls: the notifier, fed by commits, Redis and polling."""

    def __init__(
        self,
        db: Database,
        *,
        redis_url: str | None,
        namespace: str = "davserver",
        fallback_seconds: float = 1.0,
        safety_seconds: float = 30.0,
    ) -> None:
        self.notifier = Notifier()
        self._bus = RedisBus(redis_url, self.notifier, namespace=namespace) if redis_url else None
        self._poller = JournalPoller(
            db,
            self.notifier,
            bus_connected=lambda: self._bus is not None and self._bus.connected,
            fallback_seconds=fallback_seconds,
            safety_seconds=safety_seconds,
        )
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the loop, the Redis bus and the poller (idempotent; servers call it at start)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self.notifier.start()
        if self._bus is not None:
            self._bus.start()
        self._poller.start()

    def close(self) -> None:
        with self._lock:
            started, self._started = self._started, False
        if not started:
            return
        self._poller.close()
        if self._bus is not None:
            self._bus.close()
        self.notifier.close()

    @property
    def redis_connected(self) -> bool:
        return self._bus is not None and self._bus.connected

    def committed(self, committed: Committed) -> None:
        """The engine's commit listener."""
        self.notifier.publish(committed)
        if self._bus is not None and self._started:
            self._bus.publish(committed)

    def watch(
        self,
        account_id: int,
        after: int,
        *,
        scope: str = "",
        timeout: float,
        on_done: OnDone,
        cancel_fd: int | None = None,
    ) -> None:
        self.start()
        self.notifier.watch(
            account_id, after, scope=scope, timeout=timeout, on_done=on_done, cancel_fd=cancel_fd
        )

    @property
    def waiting(self) -> int:
        return self.notifier.waiting
