"""The server's tree as the change feed describes it: the ``remote`` table of the index.

The mirror only ever takes the feed's word, applied in commit order from a listing
that was a snapshot at its cursor, so it is exactly the server's tree at that
position. This client's own changes are not written into it (echoes of its moves
and deletes applied early would let later entries land on the wrong paths);
instead the mirror is marked as lagging before the server is changed, and the
next pass reads the feed first. The mark is kept in the index, so a client killed
in between pulls first when it starts again: else its own last uploads would
look deleted on the server.
"""

from __future__ import annotations

from typing import Any

from sync_ext.client.index import Index, RemoteEntry, relative
from sync_ext.client.progress import Reporter
from sync_ext.client.remote import ApiError, Remote

#: Listings retried while the account keeps changing under them.
RELIST_TRIES = 5

Move = tuple[str, str, bool]


class Mirror:
    def __init__(self, remote: Remote, index: Index, report: Reporter) -> None:
        self._remote = remote
        self._index = index
        self._report = report
        self._lags = index.get_meta("mirror_lags") == "1"
        self._cursor = index.get_meta("cursor")

    @property
    def cursor(self) -> str | None:
        return self._cursor

    @property
    def lags(self) -> bool:
        """This client changed the server since the feed was last read."""
        return self._lags

    def pull(self) -> list[Move]:
        """Bring the remote mirror up to date; returns the moves the feed reported."""
        cursor = self._cursor
        if cursor is None:
            self._relist()
            return []
        moves: list[Move] = []
        while True:
            try:
                page = self._remote.changes(cursor)
            except ApiError as exc:
                if exc.slug != "cursor-reset":
                    raise
                self._report.note("the server's change history was reset: listing everything again")
                self._relist()
                return []
            with self._index.transaction():
                for doc in page["entries"]:
                    self._apply_change(doc, moves)
                self._index.set_meta("cursor", page["cursor"])
                if not page["has_more"]:
                    self._caught_up()
            self._cursor = page["cursor"]
            cursor = page["cursor"]
            if not page["has_more"]:
                return moves

    def _relist(self) -> None:
        """List the whole account into the mirror, as of one change-feed position.

        Pages are separate reads; the listing counts as a snapshot only when the
        account's position did not move while it was read, so the feed is then
        replayed from exactly the state listed. Under constant writes it is retried,
        and after RELIST_TRIES accepted as it is (replay converges on a later pass).
        """
        self._report.note("listing the account's files")
        for attempt in range(1, RELIST_TRIES + 1):
            listing = iter(self._remote.list_folder("", recursive=True))
            cursor = next(listing)
            with self._index.transaction():
                self._index.remote_clear()
                for doc in listing:
                    self._index.remote_put(RemoteEntry.from_api(doc))
                self._index.set_meta("cursor", cursor)
                self._caught_up()
            self._cursor = cursor
            if self._remote.latest_cursor() == cursor:
                return
            self._report.note(f"the account changed while it was listed; listing again ({attempt})")

    def _apply_change(self, doc: dict[str, Any], moves: list[Move]) -> None:
        path = relative(str(doc["path"]))
        if doc["op"] == "delete":
            self._index.remote_delete_tree(path)
            return
        entry = RemoteEntry.from_api(doc)
        if doc["op"] == "move":
            old = relative(str(doc["old_path"]))
            if self._index.remote_get(old) is not None:
                self._index.remote_move_tree(old, path)
            moves.append((old, path, entry.is_dir))
        else:
            before = self._index.remote_get(path)
            if before is not None and before.is_dir != entry.is_dir:
                self._index.remote_delete_tree(path)
        self._index.remote_put(entry)

    def _caught_up(self) -> None:
        self._lags = False
        self._index.set_meta("mirror_lags", None)

    def touched(self) -> None:
        """Mark the mirror as lagging: call before changing anything on the server."""
        if not self._lags:
            self._lags = True
            self._index.set_meta("mirror_lags", "1")
