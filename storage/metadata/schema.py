"""The metadata schema (SQLAlchemy Core), identical on SQLite and PostgreSQL.

Why it looks the way it does:

* ``nodes.path`` is materialised (NFC, no leading slash, root = ``""``) so a path
  resolves in one indexed lookup and a folder's subtree is one range scan
  (``path > 'a/' AND path < 'a0'``); the column uses byte order ("C" collation)
  on PostgreSQL so that range is right whatever the database locale. A MOVE
  rewrites the subtree's paths in one statement; node ids never change.
* Block lists are rows (``version_blocks``) with a foreign key to ``blocks``.
  The database itself then refuses to delete a block any version or upload still
  references, which is what makes garbage collection safe against concurrent
  writers without a global lock (``storage/gc.py`` explains the protocol).
* ``accounts.change_seq`` is bumped by every committing transaction of the
  account. It is the gap-free, commit-ordered sequence of the change journal
  (a global sequence could commit out of order on PostgreSQL and make a cursor
  skip an entry) and the cache generation the Redis cache is keyed by.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# SQLite only auto-increments INTEGER PRIMARY KEY columns.
Id = BigInteger().with_variant(Integer(), "sqlite")
PathText = Text().with_variant(Text(collation="C"), "postgresql")

KIND_FILE = "f"
KIND_DIR = "d"

#: One row (id 1): this deployment's random key, made by migration 0012. Nodes sharing the
#: database share it; the default Redis namespace comes from it (storage.engine).
deployment = Table(
    "deployment",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("key", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
)

chunkers = Table(
    "chunkers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("algorithm", String(32), nullable=False),
    Column("implementation", String(64), nullable=False),
    Column("min_size", Integer, nullable=False),
    Column("avg_size", Integer, nullable=False),
    Column("max_size", Integer, nullable=False),
    Column("normalization", SmallInteger, nullable=False),
    UniqueConstraint("algorithm", "implementation", "min_size", "avg_size", "max_size", "normalization"),
    sqlite_autoincrement=True,
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("password_hash", String(256)),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("master_key_id", String(32), nullable=False),
    Column("key_epoch", Integer, nullable=False, server_default=text("1")),
    Column("chunker_id", ForeignKey("chunkers.id"), nullable=False),
    Column("root_node_id", BigInteger),
    Column("quota_bytes", BigInteger),
    Column("used_bytes", BigInteger, nullable=False, server_default=text("0")),
    Column("change_seq", BigInteger, nullable=False, server_default=text("0")),
    #: Journal entries with seq <= this were compacted away; older cursors must reset.
    Column("journal_floor", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", Float, nullable=False),
    #: The account's own retention settings (JSON; storage.retention), over the server's.
    Column("retention", Text),
    sqlite_autoincrement=True,
)

device_tokens = Table(
    "device_tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("label", String(200), nullable=False),
    Column("token_hash", LargeBinary(32), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float),
    Column("revoked_at", Float),
    sqlite_autoincrement=True,
)

nodes = Table(
    "nodes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("parent_id", ForeignKey("nodes.id", ondelete="CASCADE")),
    Column("name", Text, nullable=False),
    Column("path", PathText, nullable=False),
    Column("kind", String(1), nullable=False),
    Column("version_id", BigInteger),
    Column("size", BigInteger, nullable=False, server_default=text("0")),
    Column("mtime", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("deleted_at", Float),
    Column("trash_id", BigInteger),
    Index(
        "uq_nodes_live_path",
        "account_id",
        "path",
        unique=True,
        sqlite_where=text("deleted_at IS NULL"),
        postgresql_where=text("deleted_at IS NULL"),
    ),
    Index("ix_nodes_parent_id", "parent_id"),
    Index("ix_nodes_trash", "account_id", "trash_id"),
    sqlite_autoincrement=True,
)

versions = Table(
    "versions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("node_id", ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", LargeBinary(32), nullable=False),
    Column("mtime", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("device", String(200)),
    Column("chunker_id", ForeignKey("chunkers.id"), nullable=False),
    Column("block_count", Integer, nullable=False),
    Column("pinned", Boolean, nullable=False, server_default=text("false")),
    Index("ix_versions_node", "node_id", "id"),
    sqlite_autoincrement=True,
)

blocks = Table(
    "blocks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("sha256", LargeBinary(32), nullable=False),
    Column("name", String(128), nullable=False, unique=True),
    Column("size", Integer, nullable=False),
    Column("stored_size", Integer, nullable=False),
    Column("codec", SmallInteger, nullable=False),
    Column("key_epoch", Integer, nullable=False),
    Column("tier", SmallInteger, nullable=False, server_default=text("0")),
    Column("created_at", Float, nullable=False),
    #: When a read was last recorded (batched, storage.tiering); None: never since created.
    Column("last_read_at", Float),
    #: When versions naming this block were last removed for good (retention, trash purge):
    #: gc waits its grace from then too, so a download that opened such a version earlier
    #: still finds its blocks. None: never.
    Column("released_at", Float),
    #: Uploaded through the block API and not yet committed by it (storage.delta's cap).
    Column("pending", Boolean, nullable=False, server_default=text("false")),
    #: A small block's sealed object, kept here instead of the block store (StorageConfig
    #: .inline_block_bytes); None: the object is in the store under ``name``.
    Column("inline_data", LargeBinary),
    UniqueConstraint("account_id", "sha256"),
    Index(
        "ix_blocks_pending",
        "account_id",
        sqlite_where=text("pending"),
        postgresql_where=text("pending"),
    ),
    sqlite_autoincrement=True,
)

version_blocks = Table(
    "version_blocks",
    metadata,
    Column("version_id", ForeignKey("versions.id", ondelete="CASCADE"), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("block_id", ForeignKey("blocks.id"), nullable=False),
    Column("offset", BigInteger, nullable=False),
    PrimaryKeyConstraint("version_id", "idx"),
    Index("ix_version_blocks_block_id", "block_id"),
)

uploads = Table(
    "uploads",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
)

upload_blocks = Table(
    "upload_blocks",
    metadata,
    Column("upload_id", ForeignKey("uploads.id", ondelete="CASCADE"), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("block_id", ForeignKey("blocks.id"), nullable=False),
    Column("offset", BigInteger, nullable=False),
    PrimaryKeyConstraint("upload_id", "idx"),
    Index("ix_upload_blocks_block_id", "block_id"),
)

properties = Table(
    "properties",
    metadata,
    Column("node_id", ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(512), nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("node_id", "name"),
)

journal = Table(
    "journal",
    metadata,
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("node_id", BigInteger, nullable=False),
    Column("op", String(8), nullable=False),
    Column("kind", String(1), nullable=False),
    Column("path", PathText, nullable=False),
    Column("old_path", PathText),
    Column("version_id", BigInteger),
    Column("size", BigInteger),
    Column("mtime", Float),
    Column("at", Float, nullable=False),
    PrimaryKeyConstraint("account_id", "seq"),
    Index("ix_journal_at", "at"),
)

lock_records = Table(
    "lock_records",
    metadata,
    Column("token", String(200), primary_key=True),
    Column("root", PathText, nullable=False, index=True),
    Column("data", Text, nullable=False),
    Column("expire", Float, nullable=False),
)

upload_sessions = Table(
    "upload_sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    #: The pin row holding the session's blocks (upload_blocks), expiring with the session.
    Column("upload_id", ForeignKey("uploads.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("path", PathText),
    Column("length", BigInteger),
    Column("offset", BigInteger, nullable=False),
    #: upload_blocks rows of the session (idx 0..count-1): the blocks up to the last real cut point.
    Column("block_count", Integer, nullable=False),
    #: The object holding the bytes after it (at most one block), sealed (storage.uploads).
    Column("tail_name", String(160)),
    Column("mtime", Float),
    Column("if_match", String(200)),
    Column("device", String(200)),
    Column("meta", Text),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    Column("completed_at", Float),
    Index("ix_upload_sessions_account", "account_id"),
)
