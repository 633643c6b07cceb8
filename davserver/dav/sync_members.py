"""Which members a sync-collection REPORT reports, worked out from the change journal.

Results are state-based (RFC 6578 section 3.5): the journal names the member URLs
touched after the token's position, and each is reported as it is now -- changed
if it exists (section 3.5.1; also when it was removed and mapped again), removed
if not (section 3.5.2; also when it was added and removed in between). So a URL
appears once however often it changed.

What the journal leaves implied, and how it is made explicit:

* A folder delete or move is one entry. At sync-level infinite the old folder is
  reported removed and its members are not (section 3.5.2: clients drop the
  subtree); a moved folder's new path and every member now below it are reported.
* A folder that was removed (deleted, moved away, replaced by MOVE or COPY with
  overwrite) and whose path is mapped again cannot be answered at level infinite:
  the client's members below the old folder would have to be reported removed,
  and the journal does not name them. The token is refused (DAV:valid-sync-token,
  one of the "absolutely necessary" cases of section 3.2) and the client lists the
  collection afresh. The same holds when the collection itself, or a folder above
  it, was removed, moved or created after the token.
* At sync-level 1 only entries naming a direct member count: a change further
  down changes no ETag of a member (folders have none; section 3.5.1).

The journal is read for the whole account (a move into the collection from
elsewhere, or of a folder above it, is needed as such); entries are processed
page by page and only the touched paths are kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

from davserver.dav.sync_token import InvalidToken, Resume, SyncToken, binding
from storage import paths
from storage.errors import Conflict, CursorExpired, NotFound
from storage.model import Change, Entry
from storage.volume import Volume

JOURNAL_PAGE = 1000
#: Touched paths spread over more folders than this: list the whole subtree once instead.
_LIST_SUBTREE_ABOVE = 32


@dataclass(frozen=True, slots=True)
class Member:
    path: str
    #: The member as it is now; None: removed.
    entry: Entry | None
    is_dir: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    #: Sorted by path, at most ``limit``.
    members: list[Member]
    token: SyncToken
    truncated: bool


@dataclass(frozen=True, slots=True)
class _Candidate:
    entry: Entry | None
    is_dir: bool
    #: Changed after the token's position: owed even if it sorts before the resume point.
    late: bool


def collect(vol: Volume, scope: str, *, infinite: bool, token: SyncToken | None, limit: int) -> Outcome:
    """The members owed to a client holding ``token`` (None: an initial sync), at most ``limit``."""
    bound = binding(scope, infinite=infinite)
    if token is not None:
        if token.account_id != vol.account.id:
            raise InvalidToken("the sync-token belongs to another account")
        if token.resume is not None and token.resume.scope != bound:
            raise InvalidToken("the sync-token resumes another collection or sync-level")
    tree = _Tree(vol, scope, infinite)
    delta = _Delta(scope, infinite)
    if token is None:
        position = vol.change_seq()
        base, after, initial = position, None, True
    else:
        base, after = token.base, token.resume.after if token.resume else None
        initial = bool(token.resume and token.resume.initial)
        position = _read_journal(vol, token, delta)
    candidates: dict[str, _Candidate] = {}

    def owe(path: str, entry: Entry | None, is_dir: bool, late: bool) -> None:
        known = candidates.get(path)
        candidates[path] = _Candidate(entry, is_dir, late or (known is not None and known.late))

    if initial:
        for entry in tree.list_all():
            owe(entry.path, entry, entry.is_dir, False)
    tree.prefetch(delta.touched)
    if any(tree.get(folder) is not None for folder in delta.removed_dirs):
        raise InvalidToken("a folder was removed and its path mapped again; list the collection afresh")
    for path, late in delta.touched.items():
        now = tree.get(path)
        owe(path, now, now.is_dir if now else delta.removed_kind.get(path, False), late)
    for folder, late in sorted(delta.expand.items()):
        moved = tree.get(folder)
        if moved is not None and moved.is_dir:
            for entry in tree.subtree(folder):
                owe(entry.path, entry, entry.is_dir, late)
    _drop_members_of_removed_folders(candidates, scope)
    owed = sorted(p for p, c in candidates.items() if after is None or p > after or c.late)
    truncated = len(owed) > limit
    owed = owed[:limit]
    members = [Member(p, candidates[p].entry, candidates[p].is_dir) for p in owed]
    resume = Resume(base, owed[-1], initial, bound) if truncated else None
    return Outcome(members, SyncToken(vol.account.id, position, resume), truncated)


def _read_journal(vol: Volume, token: SyncToken, delta: _Delta) -> int:
    """Feed every entry after the token's base to ``delta``; the position read up to."""
    try:
        page = vol.changes(token.base, limit=JOURNAL_PAGE)
        delta.add_all(page.changes, token.position)
        while page.has_more:
            page = vol.changes(page.position, limit=JOURNAL_PAGE)
            delta.add_all(page.changes, token.position)
    except CursorExpired as exc:
        raise InvalidToken(str(exc)) from exc
    if token.position > page.position:
        raise InvalidToken("the sync-token is ahead of the account's history")
    if delta.scope_changed:
        raise InvalidToken("the collection was created, removed or moved after the sync-token")
    return page.position


def _drop_members_of_removed_folders(candidates: dict[str, _Candidate], scope: str) -> None:
    """Section 3.5.2: below a folder reported removed, nothing is reported removed."""
    gone = {p for p, c in candidates.items() if c.entry is None}
    for path in gone:
        parent = paths.parent_of(path)
        while parent != scope and paths.is_within(parent, scope):
            if parent in gone:
                del candidates[path]
                break
            parent = paths.parent_of(parent)


class _Delta:
    """Member paths the journal touched, and what its one-entry folder operations imply."""

    def __init__(self, scope: str, infinite: bool) -> None:
        self._scope = scope
        self._infinite = infinite
        #: member path -> touched after the token's position (not only before it).
        self.touched: dict[str, bool] = {}
        #: folders moved to these paths: their whole present subtree is owed.
        self.expand: dict[str, bool] = {}
        #: folders removed from these paths (level infinite).
        self.removed_dirs: set[str] = set()
        #: whether what was last removed from a path was a folder (its href ends in '/').
        self.removed_kind: dict[str, bool] = {}
        self.scope_changed = False

    def add_all(self, changes: Iterable[Change], position: int) -> None:
        for change in changes:
            self.add(change, late=change.seq > position)

    def add(self, change: Change, *, late: bool) -> None:
        if change.op == "move":
            assert change.old_path is not None
            gone, came = [change.old_path], [change.path]
        elif change.op == "delete":
            gone, came = [change.path], []
        else:
            gone, came = [], [change.path]
        if any(paths.is_within(self._scope, p) for p in (*gone, *came)):
            self.scope_changed = True
        for path in gone:
            member = self._member(path)
            if member is not None:
                self._touch(member, late)
                self.removed_kind[member] = change.is_dir
                if change.is_dir and self._infinite:
                    self.removed_dirs.add(member)
        for path in came:
            member = self._member(path)
            if member is not None:
                self._touch(member, late)
                if change.op == "move" and change.is_dir and self._infinite:
                    self.expand[member] = late or self.expand.get(member, False)

    def _touch(self, member: str, late: bool) -> None:
        self.touched[member] = late or self.touched.get(member, False)

    def _member(self, path: str) -> str | None:
        """The member URL (storage path) a journal path names, at this sync-level; None: none."""
        if path == self._scope or not paths.is_within(path, self._scope):
            return None
        if self._infinite or paths.parent_of(path) == self._scope:
            return path
        return None


class _Tree:
    """Present entries below the collection, each folder listed at most once (one query each)."""

    def __init__(self, vol: Volume, scope: str, infinite: bool) -> None:
        self._vol = vol
        self._scope = scope
        self._infinite = infinite
        self._known: dict[str, Entry] = {}
        self._listed: set[str] = set()
        #: Every member at this sync-level is in ``_known``.
        self._complete = False

    def list_all(self) -> list[Entry]:
        entries = self._vol.walk(self._scope) if self._infinite else self._vol.listdir(self._scope)
        self._known.update((e.path, e) for e in entries)
        self._complete = True
        return entries

    def subtree(self, folder: str) -> list[Entry]:
        try:
            entries = self._vol.walk(folder)
        except NotFound:
            return []
        self._known.update((e.path, e) for e in entries)
        return entries

    def prefetch(self, members: Iterable[str]) -> None:
        folders = {paths.parent_of(p) for p in members if p not in self._known} - self._listed
        if not self._complete and len(folders) > _LIST_SUBTREE_ABOVE:
            self.list_all()

    def get(self, path: str) -> Entry | None:
        if path in self._known or self._complete:
            return self._known.get(path)
        folder = paths.parent_of(path)
        if folder not in self._listed:
            self._listed.add(folder)
            # A folder that is gone, or is a file now, has nothing below it.
            with contextlib.suppress(NotFound, Conflict):
                self._known.update((e.path, e) for e in self._vol.listdir(folder))
        return self._known.get(path)
