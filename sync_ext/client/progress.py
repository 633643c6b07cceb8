"""What ``davsync`` tells its user: one line per action, progress bars on long transfers.

Bars (rich) appear only on a terminal and only for files of at least
:data:`BAR_FROM` bytes; lines go to stderr so ``--stats`` output on stdout stays
machine-readable.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

BAR_FROM = 8 << 20


def size_text(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


class Reporter:
    def __init__(
        self, *, verbose: bool = True, bars: bool | None = None, stream: TextIO | None = None
    ) -> None:
        self.verbose = verbose
        self.console = Console(file=stream or sys.stderr, highlight=False, soft_wrap=True)
        self.bars = self.console.is_terminal if bars is None else bars
        self._skipped: set[str] = set()
        self._locked: set[str] = set()
        # One live display for all transfers at once (rich allows one): started with the
        # first bar, stopped with the last.
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._bars = 0

    def _line(self, text: str) -> None:
        if self.verbose:
            self.console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False)

    def note(self, text: str) -> None:
        self._line(text)

    def warn(self, text: str) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} warning: {text}", markup=False)

    def error(self, path: str, reason: str) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} could not sync {path}: {reason}", markup=False)

    def locked(self, path: str) -> None:
        """``path`` is locked on the server: said once, until :meth:`still_locked` drops it."""
        with self._lock:
            if path in self._locked:
                return
            self._locked.add(path)
        self.warn(f"{path} is locked by a WebDAV client (open in an editor?); retrying until it is unlocked")

    def still_locked(self, paths: Iterable[str]) -> None:
        """After a pass: only ``paths`` are still locked; another lock on the others is news."""
        with self._lock:
            self._locked.intersection_update(paths)

    def skip(self, path: str, reason: str) -> None:
        if path not in self._skipped:  # once per run, not once per scan
            self._skipped.add(path)
            self.warn(f"skipping {path}: {reason}")

    def uploaded(self, path: str, size: int, sent: int, total: int) -> None:
        self._line(f"up   {path} ({size_text(size)}, sent {sent} of {total} blocks)")

    def downloaded(self, path: str, size: int, from_local: int, total: int) -> None:
        self._line(f"down {path} ({size_text(size)}, {from_local} of {total} blocks found locally)")

    def folder(self, path: str, *, remote_side: bool) -> None:
        self._line(f"{'up  ' if remote_side else 'down'} {path}/ (folder)")

    def moved(self, old: str, new: str, *, remote_side: bool) -> None:
        self._line(f"{'up  ' if remote_side else 'down'} moved {old} -> {new}")

    def deleted(self, path: str, *, remote_side: bool) -> None:
        self._line(f"{'up  ' if remote_side else 'down'} deleted {path}")

    def conflict(self, path: str, copy: str) -> None:
        self._line(f"conflict: {path} was edited on both sides; this side's version is now {copy}")

    @contextmanager
    def transfer(self, path: str, size: int, *, up: bool) -> Iterator[Callable[[int], None]]:
        """A progress callback (bytes done); a bar while it lasts, for big files on a terminal."""
        if not self.bars or size < BAR_FROM:
            yield lambda n: None
            return
        with self._lock:
            if self._progress is None:
                self._progress = Progress(*_columns(), console=self.console, transient=True)
                self._progress.start()
            bar = self._progress
            task = bar.add_task(f"{'up  ' if up else 'down'} {path}", total=size)
            self._bars += 1
        try:
            yield lambda n: bar.advance(task, n)
        finally:
            with self._lock:
                bar.remove_task(task)
                self._bars -= 1
                if self._bars == 0:
                    bar.stop()
                    self._progress = None


def _columns() -> tuple[ProgressColumn, ...]:
    return (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
