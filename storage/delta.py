"""Block-level sync for smart clients: only the blocks the server lacks travel.

A client cuts a file with the account's chunker (its parameters and seed are in
:meth:`BlockSync.config`), asks which block hashes the account lacks, uploads
those one by one, then commits the file as its ordered block list. Blocks
uploaded but not (yet) committed are ordinary unreferenced blocks: garbage
collection keeps them for its grace period (``gc_grace_seconds``), which is the
window a client has between uploading and committing.

A commit is a version like any other (same journal entry, ETag and quota
rules). Its whole-file SHA-256 -- what ``content_sha256`` and revisions report --
is computed by reading the listed blocks back before the commit: the client
never sends the content, so the server cannot take its word for the hash, and a
block list is only accepted once every block is present, of the stated size and
readable.

``parent_rev`` is the client's view of the file: ``None`` means "it must not
exist", a revision id means "it must still be that revision"; both are checked
again inside the commit transaction, so a concurrent writer cannot slip between.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, bindparam, func, insert, literal_column, select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from storage import paths
from storage.errors import InvalidBlockList, NotFound, PreconditionFailed, QuotaExceeded, TooLarge
from storage.metadata import schema as t
from storage.model import BlockAt, Entry

if TYPE_CHECKING:
    from storage.volume import Services, Volume

b = t.blocks.c
HASH_ALGORITHM = "sha256"
#: Blocks per commit: a 10 GB file at the chunker's minimum size, with room.
MAX_BLOCKS = 50_000

#: The partial index's own predicate, word for word: SQLite uses ix_blocks_pending only
#: then (``pending IS 1`` or ``pending = 1`` read every block of the account).
_PENDING: ColumnElement[bool] = literal_column("blocks.pending")
_BY_HASHES = select(b.id, b.sha256, b.size, b.name, b.inline_data).where(
    b.account_id == bindparam("b_account"), b.sha256.in_(bindparam("b_shas", expanding=True))
)


@dataclass(frozen=True, slots=True)
class ManifestBlock:
    sha256: bytes
    size: int
    offset: int


class _Listed:
    """A client's block list as a :class:`storage.volume.Committable`."""

    def __init__(self, refs: list[BlockAt], size: int, sha256: bytes) -> None:
        self.refs: Sequence[BlockAt] = refs
        self.size = size
        self.sha256 = sha256

    def finish_in(self, conn: Connection) -> None:
        # The listed blocks are committed now: they no longer count as parked uploads.
        ids = sorted({ref.block_id for ref in self.refs})
        for i in range(0, len(ids), 500):
            conn.execute(
                update(t.blocks).where(b.id.in_(ids[i : i + 500]), b.pending.is_(True)).values(pending=False)
            )

    def retry_after(self, exc: Exception) -> None:
        if isinstance(exc, DBIntegrityError):
            raise InvalidBlockList("a listed block was removed before the commit; upload it again") from exc
        raise exc

    def committed(self) -> None:
        return None


class BlockSync:
    """One account's block API (``Volume.block_sync``)."""

    def __init__(self, volume: Volume, services: Services) -> None:
        self._vol = volume
        self._s = services
        self._account = volume.account

    def config(self) -> dict[str, Any]:
        c = self._account.chunker
        return {
            "chunker": {
                "algorithm": c.algorithm,
                "implementation": c.implementation,
                "min_size": c.min_size,
                "avg_size": c.avg_size,
                "max_size": c.max_size,
                "normalization": c.normalization,
                "seed": self._account.keys.chunker_seed,
            },
            "block_hash": HASH_ALGORITHM,
            "max_block_size": c.max_size,
            "max_file_size": self._s.config.max_file_size,
            "max_blocks_per_commit": MAX_BLOCKS,
        }

    def missing(self, hashes: Sequence[bytes]) -> list[bytes]:
        """Those of ``hashes`` the account has no block for (in the order given, once each)."""
        present = {bytes(row.sha256) for row in self._rows(set(hashes))}
        seen: set[bytes] = set()
        out = []
        for h in hashes:
            if h not in present and h not in seen:
                seen.add(h)
                out.append(h)
        return out

    def put(self, sha256: bytes, data: bytes) -> bool:
        """Store one block (verified, compressed, sealed); False when the account had it already."""
        if len(data) > self._account.chunker.max_size or not data:
            raise TooLarge(f"a block holds 1 to {self._account.chunker.max_size} bytes")
        if hashlib.sha256(data).digest() != sha256:
            raise InvalidBlockList("the block's bytes do not hash to its name")
        with self._s.db.read() as conn:
            if self._rows_in(conn, {sha256}):
                return False
            self._check_room(conn, len(data))
        # The codec stores a block raw when compressing does not pay.
        stored = self._s.blocks.store(self._account.id, self._account.keys, data, sha256, compress=True)
        try:
            with self._s.db.write() as conn:
                conn.execute(
                    insert(t.blocks).values(
                        account_id=self._account.id,
                        sha256=sha256,
                        name=stored.name,
                        size=stored.size,
                        stored_size=stored.stored_size,
                        codec=stored.codec,
                        key_epoch=stored.key_epoch,
                        created_at=self._s.config.clock(),
                        pending=True,
                        inline_data=stored.inline,
                    )
                )
        except DBIntegrityError:
            # Another upload of the same block won; ours is an orphan object gc removes.
            return False
        return True

    def _check_room(self, conn: Connection, size: int) -> None:
        """Parked blocks (uploaded, not committed, within the gc grace) stay under the cap and
        the quota's room: a client cannot fill the store without committing files."""
        cfg = self._s.config
        a = t.accounts.c
        parked = conn.execute(
            select(func.coalesce(func.sum(b.size), 0)).where(
                b.account_id == self._account.id,
                _PENDING,
                b.created_at > cfg.clock() - cfg.gc_grace_seconds,
            )
        ).scalar_one()
        used, quota = conn.execute(select(a.used_bytes, a.quota_bytes).where(a.id == self._account.id)).one()
        if int(parked) + size > cfg.max_pending_block_bytes:
            raise QuotaExceeded("too many uploaded blocks wait for a commit: commit files, or wait")
        if quota is not None and int(used) + int(parked) + size > int(quota):
            raise QuotaExceeded("the uploaded blocks would not fit in the account's quota")

    def get(self, sha256: bytes) -> bytes:
        rows = self._rows({sha256})
        if not rows:
            raise NotFound("the account has no such block")
        row = rows[0]
        return self._s.blocks.fetch(
            self._account.keys, row.name, sha256, int(row.size), inline=row.inline_data
        )

    def manifest(self, path: str, version_id: int | None = None) -> tuple[Entry, list[ManifestBlock]]:
        with self._vol.open(path, version_id=version_id, include_deleted=version_id is not None) as reader:
            entry = reader.entry
            blocks = [ManifestBlock(x.sha256, x.size, x.offset) for x in reader.locations]
        return entry, blocks

    def commit(
        self,
        path: str,
        blocks: Sequence[tuple[bytes, int]],
        *,
        size: int,
        parent_rev: int | None,
        mtime: float | None = None,
        device: str | None = None,
    ) -> tuple[Entry, bool]:
        """Make the listed blocks the file's new version; returns its entry and whether it is new."""
        path = paths.normalize_path(path)
        if len(blocks) > MAX_BLOCKS:
            raise InvalidBlockList(f"at most {MAX_BLOCKS} blocks per file")
        if size != sum(s for _, s in blocks):
            raise InvalidBlockList("the block sizes do not add up to the file's size")
        if size > self._s.config.max_file_size:
            raise TooLarge(f"files are limited to {self._s.config.max_file_size} bytes")
        rows = {bytes(r.sha256): r for r in self._rows({h for h, _ in blocks})}
        absent = [h.hex() for h, _ in blocks if h not in rows]
        if absent:
            raise InvalidBlockList(f"blocks not uploaded: {', '.join(absent[:5])}")
        for h, s in blocks:
            if int(rows[h].size) != s:
                raise InvalidBlockList(f"block {h.hex()} has {int(rows[h].size)} bytes, not {s}")
        if_match, if_none_match = self._expectation(path, parent_rev)
        whole = hashlib.sha256()
        refs, offset = [], 0
        for h, s in blocks:
            whole.update(
                self._s.blocks.fetch(self._account.keys, rows[h].name, h, s, inline=rows[h].inline_data)
            )
            refs.append(BlockAt(int(rows[h].id), offset))
            offset += s
        return self._vol._commit_source(
            path,
            _Listed(refs, size, whole.digest()),
            if_match=if_match,
            if_none_match=if_none_match,
            mtime=mtime,
            device=device,
        )

    def _expectation(self, path: str, parent_rev: int | None) -> tuple[str | None, str | None]:
        if parent_rev is None:
            try:
                existing = self._vol.stat(path)
            except NotFound:
                return None, "*"
            raise PreconditionFailed(f"the file exists, at revision {existing.version_id}")
        try:
            current = self._vol.stat(path)
        except NotFound:
            raise PreconditionFailed("the file does not exist (any more)") from None
        if current.version_id != parent_rev:
            raise PreconditionFailed(f"the file is at revision {current.version_id}, not {parent_rev}")
        return current.etag, None

    def _rows(self, hashes: set[bytes]) -> list[Any]:
        if not hashes:
            return []
        with self._s.db.read() as conn:
            return self._rows_in(conn, hashes)

    def _rows_in(self, conn: Connection, hashes: set[bytes]) -> list[Any]:
        ordered = sorted(hashes)
        out: list[Any] = []
        for i in range(0, len(ordered), 500):
            params = {"b_account": self._account.id, "b_shas": ordered[i : i + 500]}
            out.extend(conn.execute(_BY_HASHES, params).all())
        return out
