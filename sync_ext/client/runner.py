"""Continuous sync: remote changes wake it through the long-poll, local ones through a scan.

A background thread holds a long-poll on the change feed from the last cursor
the sync stored; when the server says something changed it wakes the main loop,
which pulls and syncs. Local changes are found by a periodic scan (``stat``
only); a pass without remote news makes no request unless it finds local work,
and decides nothing when the disk is as the last pass left it. The scan interval
grows with the tree, so scanning stays a small share of one core. Network trouble is waited out with
exponential backoff; an authentication failure stops the run with its message.
"""

from __future__ import annotations

import random
import threading
import time

from sync_ext.client.remote import AuthError, ClientError, Offline
from sync_ext.client.syncer import Syncer

#: The change feed is read at least this often even without a wake-up (a lost
#: long-poll answer, a proxy that cut it).
PULL_EVERY = 300.0
#: Local scans use at most about 1/SCAN_SHARE of one core.
SCAN_SHARE = 20


class Runner:
    def __init__(self, syncer: Syncer, *, scan_interval: float = 5.0, longpoll_timeout: int = 60) -> None:
        self.syncer = syncer
        self.scan_interval = scan_interval
        self.longpoll_timeout = longpoll_timeout
        #: Setting it also ends the remote's retry waits, so a stop never waits on the network.
        self.stop = syncer.remote.cancelled
        self._wake = threading.Event()
        self._remote_news = threading.Event()
        self._pulled = threading.Event()
        self.fatal: ClientError | None = None

    def run(self) -> None:
        poller = threading.Thread(target=self._poll, name="davsync-longpoll", daemon=True)
        report = self.syncer.report
        delay = 1.0
        last_pull = float("-inf")  # the first pass always reads the feed
        started = False
        failed: list[str] = []  # the last pass's errors: repeated passes do not repeat the note
        while not self.stop.is_set() and self.fatal is None:
            pull = self._remote_news.is_set() or time.monotonic() - last_pull > PULL_EVERY
            self._remote_news.clear()
            began = time.monotonic()
            try:
                summary = self.syncer.sync(pull=pull)
            except AuthError as exc:
                self.fatal = exc
                break
            except Offline as exc:
                if self.stop.is_set():
                    break
                report.note(f"{exc}; retrying in {delay:.0f} s")
                self.stop.wait(delay)
                delay = min(60.0, delay * 2)
                self._remote_news.set()
                continue
            delay = 1.0
            if pull:
                last_pull = time.monotonic()
            self._pulled.set()
            if not started:
                started = True
                poller.start()
                report.note("in sync; watching for changes")
            report.still_locked(summary.locked)
            if summary.errors and summary.errors != failed:
                report.note(f"{len(summary.errors)} item(s) could not be synced; retrying later")
            failed = summary.errors
            # Scanning stays a small share of the time, however big the tree: an idle pass
            # (the scan, mostly) is waited for SCAN_SHARE times over before the next one.
            idle = time.monotonic() - began if not summary.actions else 0.0
            self._wake.wait(max(self.scan_interval, SCAN_SHARE * idle))
            self._wake.clear()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _poll(self) -> None:
        delay = 1.0
        while not self.stop.is_set():
            cursor = self.syncer.cursor
            if cursor is None:
                self.stop.wait(1.0)
                continue
            try:
                answer = self.syncer.remote.longpoll(cursor, self.longpoll_timeout)
            except AuthError as exc:
                # Not a stop (that would end quietly): the main loop sees ``fatal`` and fails.
                self.fatal = exc
                self._wake.set()
                return
            except ClientError as exc:
                # Offline, or a cursor the server reset: the main loop's pull sorts it out.
                self.syncer.report.note(f"waiting for changes failed ({exc}); again in {delay:.0f} s")
                self._remote_news.set()
                self._wake.set()
                self.stop.wait(delay * (0.5 + random.random()))
                delay = min(60.0, delay * 2)
                continue
            delay = 1.0
            if answer.get("changes"):
                self._pulled.clear()
                self._remote_news.set()
                self._wake.set()
                # Hold the next long-poll until the main loop has read the feed past this cursor.
                while not self.stop.is_set() and not self._pulled.wait(1.0):
                    pass
            if answer.get("backoff"):
                self.stop.wait(float(answer["backoff"]))
