"""Background upkeep while the server runs, on a timer: the retention pass, journal
compaction, and writing out which blocks were read (for the archive tier).

Garbage collection stays with ``davserver gc`` (it lists the whole block store);
the retention pass only reads and deletes metadata rows, so the server can run it
itself. The first pass runs one interval after start, so starting stays fast.
"""

from __future__ import annotations

import logging
import threading

from storage.engine import Engine

log = logging.getLogger("davserver.maintenance")


class RetentionTimer:
    def __init__(self, engine: Engine, interval_seconds: float) -> None:
        self._engine = engine
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="davserver-retention", daemon=True)

    def start(self) -> None:
        if self._interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                report = self._engine.apply_retention()
                self._engine.compact_journal()
                self._engine.flush_reads()
            except Exception:
                log.exception("retention pass failed; trying again in %.0f s", self._interval)
                continue
            if report.versions_removed or report.trash_nodes_purged:
                log.info(
                    "retention: %d old versions removed, %d trashed entries purged",
                    report.versions_removed,
                    report.trash_nodes_purged,
                )
