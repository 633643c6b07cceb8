"""Accounts, their keys and credentials.

Passwords are hashed with argon2id; device tokens are 256-bit random strings
stored only as SHA-256 (a token is already high-entropy, so a slow hash adds
nothing but latency). An unknown account name costs the same argon2 work as a
wrong password, so response times do not reveal which names exist.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import argon2
from sqlalchemy import Connection, delete, func, insert, select, update

from storage.chunker import ChunkerParams
from storage.config import PasswordHashing
from storage.errors import AlreadyExists, AuthenticationFailed, InvalidName, NotFound
from storage.keys import AccountKeys, MasterKey, new_data_key
from storage.metadata import schema as t
from storage.metadata.db import Database
from storage.model import AccountInfo, TokenInfo
from storage.retention import RetentionPolicy

TOKEN_PREFIX = "dst_"  # noqa: S105 (a marker, not a secret)


def is_token(secret: str) -> bool:
    """Whether a secret is a device token (they carry a prefix) rather than a password."""
    return secret.startswith(TOKEN_PREFIX)


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True, slots=True)
class AccountContext:
    """What a volume needs to know about its account, resolved once."""

    id: int
    name: str
    keys: AccountKeys
    chunker_id: int
    chunker: ChunkerParams
    root_node_id: int


class Accounts:
    def __init__(
        self,
        db: Database,
        master_key: MasterKey,
        hashing: PasswordHashing,
        chunker: ChunkerParams,
        clock: Callable[[], float],
    ) -> None:
        self._db = db
        self._master = master_key
        self._chunker = chunker
        self._clock = clock
        self._hasher = argon2.PasswordHasher(
            time_cost=hashing.time_cost,
            memory_cost=hashing.memory_cost_kib,
            parallelism=hashing.parallelism,
            type=argon2.Type.ID,
        )
        self._dummy_hash: str | None = None
        self._contexts: dict[int, AccountContext] = {}
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------

    def create(self, name: str, password: str | None = None, quota: int | None = None) -> AccountInfo:
        if not _NAME_RE.match(name):
            raise InvalidName("account names are 1-64 of A-Z a-z 0-9 . _ @ - (not starting with a symbol)")
        password_hash = self._hasher.hash(password) if password else None
        now = self._clock()
        with self._db.write() as conn:
            if conn.execute(select(t.accounts.c.id).where(t.accounts.c.name == name)).first():
                raise AlreadyExists(f"account {name!r} exists")
            chunker_id = self._chunker_id(conn)
            account_id = conn.execute(
                insert(t.accounts)
                .values(
                    name=name,
                    password_hash=password_hash,
                    wrapped_key=b"",
                    master_key_id=self._master.key_id,
                    chunker_id=chunker_id,
                    quota_bytes=quota,
                    created_at=now,
                )
                .returning(t.accounts.c.id)
            ).scalar_one()
            root_id = conn.execute(
                insert(t.nodes)
                .values(account_id=account_id, name="", path="", kind=t.KIND_DIR, mtime=now, created_at=now)
                .returning(t.nodes.c.id)
            ).scalar_one()
            conn.execute(
                update(t.accounts)
                .where(t.accounts.c.id == account_id)
                .values(wrapped_key=self._master.wrap(account_id, new_data_key()), root_node_id=root_id)
            )
        return AccountInfo(account_id, name, quota, 0, now)

    def _chunker_id(self, conn: Connection) -> int:
        p = self._chunker
        values = {
            "algorithm": p.algorithm,
            "implementation": p.implementation,
            "min_size": p.min_size,
            "avg_size": p.avg_size,
            "max_size": p.max_size,
            "normalization": p.normalization,
        }
        c = t.chunkers.c
        found = conn.execute(select(c.id).where(*(getattr(c, k) == v for k, v in values.items()))).scalar()
        if found is not None:
            return int(found)
        return int(conn.execute(insert(t.chunkers).values(**values).returning(c.id)).scalar_one())

    def delete(self, name: str) -> int:
        """Delete an account and its metadata; returns its id so the caller can drop its blocks."""
        with self._db.write() as conn:
            account_id = self._id(conn, name)
            conn.execute(delete(t.accounts).where(t.accounts.c.id == account_id))
        with self._lock:
            self._contexts.pop(account_id, None)
        return account_id

    def list_all(self) -> list[AccountInfo]:
        a = t.accounts.c
        with self._db.read() as conn:
            rows = conn.execute(
                select(a.id, a.name, a.quota_bytes, a.used_bytes, a.created_at).order_by(a.name)
            ).all()
        return [AccountInfo(*row) for row in rows]

    def get(self, name: str) -> AccountInfo:
        a = t.accounts.c
        with self._db.read() as conn:
            row = conn.execute(
                select(a.id, a.name, a.quota_bytes, a.used_bytes, a.created_at).where(a.name == name)
            ).first()
        if row is None:
            raise NotFound(f"no account {name!r}")
        return AccountInfo(*row)

    def set_password(self, name: str, password: str) -> None:
        with self._db.write() as conn:
            self._id(conn, name)
            conn.execute(
                update(t.accounts)
                .where(t.accounts.c.name == name)
                .values(password_hash=self._hasher.hash(password))
            )

    def set_quota(self, name: str, quota: int | None) -> None:
        with self._db.write() as conn:
            self._id(conn, name)
            conn.execute(update(t.accounts).where(t.accounts.c.name == name).values(quota_bytes=quota))

    def set_retention(self, name: str, overrides: Mapping[str, Any] | None) -> None:
        """The account's own retention settings over the server's (None: the server's)."""
        if overrides is not None:
            RetentionPolicy().with_overrides(overrides)  # refuse unknown keys now, not at the next pass
        value = None if overrides is None else json.dumps(dict(overrides))
        with self._db.write() as conn:
            self._id(conn, name)
            conn.execute(update(t.accounts).where(t.accounts.c.name == name).values(retention=value))

    def retention_overrides(self) -> dict[int, dict[str, Any]]:
        """account id -> its retention settings, for every account (those without: empty)."""
        with self._db.read() as conn:
            rows = conn.execute(select(t.accounts.c.id, t.accounts.c.retention)).all()
        return {int(r.id): (json.loads(r.retention) if r.retention else {}) for r in rows}

    @staticmethod
    def _id(conn: Connection, name: str) -> int:
        found = conn.execute(select(t.accounts.c.id).where(t.accounts.c.name == name)).scalar()
        if found is None:
            raise NotFound(f"no account {name!r}")
        return int(found)

    # -- keys ----------------------------------------------------------------------

    def context(self, account_id: int) -> AccountContext:
        with self._lock:
            ctx = self._contexts.get(account_id)
        if ctx is not None:
            return ctx
        a, c = t.accounts.c, t.chunkers.c
        with self._db.read() as conn:
            row = conn.execute(
                select(
                    a.id,
                    a.name,
                    a.wrapped_key,
                    a.key_epoch,
                    a.root_node_id,
                    a.chunker_id,
                    c.min_size,
                    c.avg_size,
                    c.max_size,
                    c.normalization,
                    c.algorithm,
                    c.implementation,
                )
                .join(t.chunkers, t.chunkers.c.id == a.chunker_id)
                .where(a.id == account_id)
            ).first()
        if row is None:
            raise NotFound(f"no account {account_id}")
        keys = AccountKeys.derive_from(self._master.unwrap(row.id, row.wrapped_key), row.key_epoch)
        params = ChunkerParams(
            row.min_size, row.avg_size, row.max_size, row.normalization, row.algorithm, row.implementation
        )
        ctx = AccountContext(row.id, row.name, keys, row.chunker_id, params, row.root_node_id)
        with self._lock:
            self._contexts[account_id] = ctx
        return ctx

    def context_by_name(self, name: str) -> AccountContext:
        with self._db.read() as conn:
            return self.context(self._id(conn, name))

    def master_key_ids(self) -> set[str]:
        """Ids of the master keys the account keys are wrapped with (one, except mid-rotation)."""
        with self._db.read() as conn:
            return {str(k) for k in conn.execute(select(t.accounts.c.master_key_id).distinct()).scalars()}

    def rotate_master_key(self, new_key: MasterKey) -> int:
        """Re-wrap every account key under ``new_key`` in one transaction; blocks are untouched."""
        a = t.accounts.c
        with self._db.write() as conn:
            rows = conn.execute(select(a.id, a.wrapped_key)).all()
            for row in rows:
                data_key = self._master.unwrap(row.id, row.wrapped_key)
                conn.execute(
                    update(t.accounts)
                    .where(a.id == row.id)
                    .values(wrapped_key=new_key.wrap(row.id, data_key), master_key_id=new_key.key_id)
                )
        self._master = new_key
        return len(rows)

    # -- credentials ---------------------------------------------------------------

    def authenticate(self, name: str, secret: str) -> AccountInfo:
        """Check a password or a device token; raises :class:`AuthenticationFailed`."""
        a = t.accounts.c
        with self._db.read() as conn:
            row = conn.execute(
                select(a.id, a.name, a.quota_bytes, a.used_bytes, a.created_at, a.password_hash).where(
                    a.name == name
                )
            ).first()
            if row is not None and is_token(secret):
                token = conn.execute(
                    select(t.device_tokens.c.id, t.device_tokens.c.last_used_at).where(
                        t.device_tokens.c.token_hash == _token_hash(secret),
                        t.device_tokens.c.account_id == row.id,
                        t.device_tokens.c.revoked_at.is_(None),
                    )
                ).first()
                if token is not None:
                    self._touch_token(int(token.id), token.last_used_at)
                    return AccountInfo(*row[:5])
        stored = row.password_hash if row is not None and row.password_hash else self._dummy()
        try:
            self._hasher.verify(stored, secret)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            raise AuthenticationFailed("wrong account name or password") from None
        if row is None or not row.password_hash:
            raise AuthenticationFailed("wrong account name or password")
        return AccountInfo(*row[:5])

    def _dummy(self) -> str:
        """A hash to verify against when the account does not exist (equal timing)."""
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_hex(16))
        return self._dummy_hash

    def account_for_token(self, token: str) -> AccountInfo:
        """Resolve a bearer token alone (no account name) to its account."""
        a, d = t.accounts.c, t.device_tokens.c
        with self._db.read() as conn:
            row = conn.execute(
                select(
                    a.id, a.name, a.quota_bytes, a.used_bytes, a.created_at, d.id.label("tid"), d.last_used_at
                )
                .join(t.device_tokens, d.account_id == a.id)
                .where(d.token_hash == _token_hash(token), d.revoked_at.is_(None))
            ).first()
        if row is None:
            raise AuthenticationFailed("unknown or revoked token")
        self._touch_token(row.tid, row.last_used_at)
        return AccountInfo(*row[:5])

    def _touch_token(self, token_id: int, last_used_at: float | None) -> None:
        now = self._clock()
        d = t.device_tokens.c
        # At most one write per token per minute: tokens are checked on every request
        # (never cached, so a revocation bites at once), and a write takes the lock.
        if last_used_at is not None and last_used_at >= now - 60:
            return
        with self._db.write() as conn:
            conn.execute(
                update(t.device_tokens)
                .where(d.id == token_id, func.coalesce(d.last_used_at, 0) < now - 60)
                .values(last_used_at=now)
            )

    def create_token(self, name: str, label: str) -> tuple[TokenInfo, str]:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        with self._db.write() as conn:
            account_id = self._id(conn, name)
            token_id = conn.execute(
                insert(t.device_tokens)
                .values(account_id=account_id, label=label, token_hash=_token_hash(token), created_at=now)
                .returning(t.device_tokens.c.id)
            ).scalar_one()
        return TokenInfo(token_id, name, label, now, None, False), token

    def list_tokens(self, name: str) -> list[TokenInfo]:
        d = t.device_tokens.c
        with self._db.read() as conn:
            account_id = self._id(conn, name)
            rows = conn.execute(
                select(d.id, d.label, d.created_at, d.last_used_at, d.revoked_at)
                .where(d.account_id == account_id)
                .order_by(d.id)
            ).all()
        return [
            TokenInfo(r.id, name, r.label, r.created_at, r.last_used_at, r.revoked_at is not None)
            for r in rows
        ]

    def revoke_token(self, name: str, token_id: int) -> None:
        d = t.device_tokens.c
        with self._db.write() as conn:
            account_id = self._id(conn, name)
            done = conn.execute(
                update(t.device_tokens)
                .where(d.id == token_id, d.account_id == account_id, d.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            ).rowcount
        if not done:
            raise NotFound(f"no active token {token_id} for {name!r}")


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
