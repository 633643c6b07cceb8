"""Background upkeep while the server runs, on timers: the retention pass with journal
compaction (every ``retention_interval_minutes``), and writing out which blocks were
read, for the archive tier (every few minutes, whatever the retention interval).

Garbage collection stays with ``davserver gc`` (it lists the whole block store);
the retention pass only reads and deletes metadata rows, so the server can run it
itself. The first pass runs one interval after start, so starting stays fast.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from storage.engine import Engine

log = logging.getLogger("davserver.maintenance")

#: How often the blocks read are written to the database (when an archive tier is set).
READS_FLUSH_SECONDS = 300.0


class RetentionTimer:
    def __init__(
        self, engine: Engine, interval_seconds: float, flush_seconds: float = READS_FLUSH_SECONDS
    ) -> None:
        self._engine = engine
        self._interval = interval_seconds
        self._flush = flush_seconds if engine.reads is not None else 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="davserver-retention", daemon=True)

    def start(self) -> None:
        if self._interval > 0 or self._flush > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        ticks = [t for t in (self._interval, self._flush) if t > 0]
        next_retention = time.monotonic() + self._interval
        while not self._stop.wait(min(ticks)):
            if self._flush > 0:
                self._guarded("flushing block reads", self._engine.flush_reads)
            if self._interval > 0 and time.monotonic() >= next_retention:
                next_retention = time.monotonic() + self._interval
                self._guarded("retention pass", self._retention)

    def _retention(self) -> None:
        report = self._engine.apply_retention()
        self._engine.compact_journal()
        if report.versions_removed or report.trash_nodes_purged:
            log.info(
                "retention: %d old versions removed, %d trashed entries purged",
                report.versions_removed,
                report.trash_nodes_purged,
            )

    def _guarded(self, what: str, job: Callable[[], object]) -> None:
        try:
            job()
        except Exception:
            log.exception("%s failed; trying again at the next tick", what)
