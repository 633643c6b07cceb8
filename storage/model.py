"""Plain values the facade returns; no database rows or connections leak out."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Entry:
    """A file or folder as the faces see it."""

    node_id: int
    path: str
    name: str
    is_dir: bool
    size: int
    mtime: float
    created_at: float
    version_id: int | None = None
    sha256: bytes | None = None
    #: When the file or folder went to the trash (only set by look-ups that include the trash).
    deleted_at: float | None = None

    @property
    def etag(self) -> str | None:
        """Strong entity tag: the identity of the current version (files only)."""
        if self.is_dir or self.version_id is None:
            return None
        return f'"{self.node_id:x}-{self.version_id:x}"'


@dataclass(frozen=True, slots=True)
class TreePage:
    """One page of a folder listing (:meth:`storage.volume.Volume.walk_page`)."""

    entries: list[Entry]
    #: Whether nodes after the last entry remain (continue with ``after`` = its path).
    has_more: bool
    #: The account's change-feed position, read before the listing.
    position: int


@dataclass(frozen=True, slots=True)
class Revision:
    version_id: int
    size: int
    sha256: bytes
    mtime: float
    created_at: float
    device: str | None
    pinned: bool
    is_current: bool


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change journal."""

    seq: int
    op: str
    node_id: int
    is_dir: bool
    path: str
    old_path: str | None
    version_id: int | None
    size: int | None
    mtime: float | None
    at: float
    #: The version's content hash (None for folders, deletes, and versions since thinned away).
    sha256: bytes | None = None


@dataclass(frozen=True, slots=True)
class BlockAt:
    """A stored block at an offset of a version being committed."""

    block_id: int
    offset: int


@dataclass(frozen=True, slots=True)
class Committed:
    """One committed transaction of an account, told to listeners after the commit."""

    account_id: int
    #: The account's change sequence after it (the position a reader reaches).
    seq: int
    #: Paths its journal entries name (new and old), or one common ancestor when there are many.
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Quota:
    used_bytes: int
    limit_bytes: int | None

    @property
    def available_bytes(self) -> int | None:
        if self.limit_bytes is None:
            return None
        return max(0, self.limit_bytes - self.used_bytes)


@dataclass(frozen=True, slots=True)
class AccountInfo:
    id: int
    name: str
    quota_bytes: int | None
    used_bytes: int
    created_at: float


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    account: str
    label: str
    created_at: float
    last_used_at: float | None
    revoked: bool


@dataclass(slots=True)
class GcReport:
    expired_uploads: int = 0
    blocks_deleted: int = 0
    bytes_freed: int = 0
    orphan_objects_deleted: int = 0
    blocks_skipped_in_use: int = 0


@dataclass(slots=True)
class FsckReport:
    blocks_checked: int = 0
    versions_checked: int = 0
    problems: list[str] = field(default_factory=list)
    #: stored objects no block row points at (reclaimed by gc after the grace period)
    orphan_objects: int = 0
    #: blocks nothing references (reclaimed by gc after the grace period)
    unreferenced_blocks: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def leak_free(self) -> bool:
        return self.orphan_objects == 0 and self.unreferenced_blocks == 0


@dataclass(frozen=True, slots=True)
class Stats:
    accounts: int
    files: int
    folders: int
    versions: int
    logical_bytes: int
    current_bytes: int
    unique_block_bytes: int
    stored_bytes: int
    blocks: int

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.unique_block_bytes if self.unique_block_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.unique_block_bytes / self.stored_bytes if self.stored_bytes else 1.0


@dataclass(frozen=True, slots=True)
class UploadSession:
    """A resumable upload: ``offset`` bytes of ``length`` (None: not declared yet) are durable."""

    id: str
    kind: str
    path: str | None
    length: int | None
    offset: int
    meta: str | None
    created_at: float
    expires_at: float
    #: The file as committed, once the last byte arrived (None before).
    completed: Entry | None = None
    #: Set by the call that committed the file: whether that created it (False: a new version).
    created: bool = False


@dataclass(frozen=True, slots=True)
class TrashItem:
    """Something deleted: restorable to ``path`` (where it was) or elsewhere, until purged."""

    id: int
    path: str
    is_dir: bool
    #: Bytes of the files in it.
    size: int
    deleted_at: float
