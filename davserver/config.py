"""The one configuration loader: defaults < config file (TOML) < environment < flags.

No other module reads ``os.environ``. Environment overrides (documented in the
README): ``DAVSERVER_DATA_DIR``, ``DAVSERVER_CONFIG``, ``DAVSERVER_DATABASE_URL``,
``DAVSERVER_BLOCKS_URL``, ``DAVSERVER_REDIS_URL``, ``DAVSERVER_ARCHIVE_URL``,
``DAVSERVER_MASTER_KEY_FILE``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from storage.config import PasswordHashing, StorageConfig
from storage.keys import MasterKey
from storage.retention import RetentionPolicy

CONFIG_NAME = "davserver.toml"
MASTER_KEY_NAME = "master.key"

_ENV = {
    "DAVSERVER_DATABASE_URL": "database_url",
    "DAVSERVER_BLOCKS_URL": "blocks_url",
    "DAVSERVER_REDIS_URL": "redis_url",
    "DAVSERVER_ARCHIVE_URL": "archive_url",
    "DAVSERVER_MASTER_KEY_FILE": "master_key_file",
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    database_url: str
    blocks_url: str
    master_key_file: Path
    redis_url: str | None = None
    archive_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int = 32
    #: On SIGTERM, in-flight requests get this long to finish (a rolling restart should not
    #: cut uploads); the listening socket closes at once. Keep systemd's TimeoutStopSec above it.
    shutdown_seconds: float = 10.0
    certfile: Path | None = None
    keyfile: Path | None = None
    durable: bool = True
    zstd_level: int = 1
    rehash_reads: bool = False
    max_file_size: int = 10 << 30
    gc_grace_seconds: float = 6 * 3600
    max_pending_block_bytes: int = 20 << 30
    #: Blocks whose sealed object is at most this size live in their metadata row (0: never).
    inline_block_bytes: int = 32 << 10
    #: Retention (storage.retention): every version kept this long, then thinned by age.
    keep_all_minutes: float = 10
    max_versions: int | None = None
    max_version_age_days: float | None = None
    trash_days: float | None = 30
    #: How often the server runs the retention pass (0: only `davserver gc` does).
    retention_interval_minutes: float = 60
    upload_session_days: float = 7
    #: Answer a resumable upload's chunk once stored and commit it while the next arrives
    #: (storage.uploads); None: on exactly when there is no Redis (a single node).
    pipelined_appends: bool | None = None
    #: Pipelined chunks of one upload are synced and committed together once they hold this
    #: many bytes, or this many seconds after the first was answered (0: each on its own).
    append_commit_bytes: int = 64 << 20
    append_commit_seconds: float = 1.0
    #: Change-feed history kept (cursors older than this get "cursor-reset"; "none": forever).
    journal_days: float | None = 90
    #: Blocks not read for this many days move to archive_url on `davserver tier`.
    archive_after_days: float = 30
    #: Prefix of this deployment's Redis keys and channels; unset: one made from the database's
    #: deployment key, so deployments sharing a Redis differ and nodes sharing a database agree.
    redis_namespace: str | None = None
    #: Folder listings and block lists cached (in Redis when redis_url is set, else in-process).
    metadata_cache: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    def storage_config(
        self, *, password_hashing: PasswordHashing | None = None, auto_migrate: bool | None = None
    ) -> StorageConfig:
        if not self.master_key_file.exists():
            raise ConfigError(f"master key file {self.master_key_file} does not exist (run 'davserver init')")
        return StorageConfig(
            database_url=self.database_url,
            blocks_url=self.blocks_url,
            master_key=MasterKey.load(self.master_key_file),
            durable=self.durable,
            zstd_level=self.zstd_level,
            rehash_reads=self.rehash_reads,
            max_file_size=self.max_file_size,
            gc_grace_seconds=self.gc_grace_seconds,
            max_pending_block_bytes=self.max_pending_block_bytes,
            inline_block_bytes=self.inline_block_bytes,
            upload_session_seconds=self.upload_session_days * 86400,
            pipelined_appends=self.pipelined_appends,
            append_commit_bytes=self.append_commit_bytes,
            append_commit_seconds=self.append_commit_seconds,
            retention=RetentionPolicy(
                keep_all_seconds=self.keep_all_minutes * 60,
                max_versions=self.max_versions,
                max_age_seconds=None
                if self.max_version_age_days is None
                else self.max_version_age_days * 86400,
                trash_seconds=None if self.trash_days is None else self.trash_days * 86400,
            ),
            journal_seconds=None if self.journal_days is None else self.journal_days * 86400,
            redis_url=self.redis_url,
            archive_url=self.archive_url,
            archive_after_days=self.archive_after_days,
            metadata_cache=self.metadata_cache,
            redis_namespace=self.redis_namespace,
            db_pool_size=max(5, self.threads + 4),
            auto_migrate=self.database_url.startswith("sqlite") if auto_migrate is None else auto_migrate,
            password_hashing=password_hashing or PasswordHashing(),
        )


def parse_size(text: str | int) -> int:
    """``"10G"``, ``"500 MiB"``, ``"1.5T"`` or a plain byte count -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"not a size: {text!r} (use e.g. 500M, 10G, 1.5T)")
    number, unit = float(m.group(1)), m.group(2).lower()
    return int(number * (1 << (10 * " kmgtp".index(unit or " "))))


def load(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerConfig:
    env = os.environ if env is None else env
    root = Path(data_dir or env.get("DAVSERVER_DATA_DIR") or "./data").resolve()
    file_values: dict[str, Any] = {}
    path = config_file or env.get("DAVSERVER_CONFIG")
    candidate = Path(path) if path else root / CONFIG_NAME
    if path and not candidate.exists():
        raise ConfigError(f"config file {candidate} does not exist")
    if candidate.exists():
        try:
            file_values = tomllib.loads(candidate.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{candidate}: {exc}") from None
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{root / 'meta.db'}",
        "blocks_url": f"file://{root / 'blocks'}",
        "master_key_file": root / MASTER_KEY_NAME,
    }
    values.update(_flatten(file_values))
    values.update({key: env[name] for name, key in _ENV.items() if env.get(name)})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return _build(root, values)


def _flatten(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Accept both flat keys and the sections of conf/davserver.example.toml."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, Mapping):
            flat.update(value)
        else:
            flat[key] = value
    return flat


#: Keys the faces read from ``ServerConfig.extra`` (documented in conf/davserver.example.toml).
FACE_KEYS = frozenset(
    {
        "apple_double",
        "propfind_infinity",
        "allow_insecure_basic",
        "trust_forwarded_proto",
        "trusted_proxies",
        "lock_storage",
    }
)


def _build(root: Path, values: dict[str, Any]) -> ServerConfig:
    known = {f for f in ServerConfig.__dataclass_fields__ if f not in ("data_dir", "extra")}
    extra = {k: v for k, v in values.items() if k not in known}
    unknown = sorted(set(extra) - FACE_KEYS)
    if unknown:
        raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
    kwargs = {k: v for k, v in values.items() if k in known}
    for key in ("master_key_file", "certfile", "keyfile"):
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key])
    for key in ("max_file_size", "max_pending_block_bytes", "inline_block_bytes", "append_commit_bytes"):
        if key in kwargs:
            kwargs[key] = parse_size(kwargs[key])
    for key in ("port", "threads", "zstd_level"):
        if key in kwargs:
            kwargs[key] = int(kwargs[key])
    for key in ("max_versions",):
        if key in kwargs:
            kwargs[key] = _optional(kwargs[key], int)
    floats = (
        "keep_all_minutes",
        "retention_interval_minutes",
        "upload_session_days",
        "append_commit_seconds",
        "archive_after_days",
        "shutdown_seconds",
    )
    for key in floats:
        if key in kwargs:
            kwargs[key] = float(kwargs[key])
    for key in ("max_version_age_days", "trash_days", "journal_days"):
        if key in kwargs:
            kwargs[key] = _optional(kwargs[key], float)
    for key in ("durable", "rehash_reads", "metadata_cache", "pipelined_appends"):
        if key in kwargs and isinstance(kwargs[key], str):
            kwargs[key] = kwargs[key].lower() not in ("0", "false", "no", "off")
    try:
        cfg = ServerConfig(data_dir=root, extra=extra, **kwargs)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    if not 1 <= cfg.zstd_level <= 22:
        raise ConfigError("zstd_level must be 1..22")
    if not 0 <= cfg.inline_block_bytes <= 1 << 20:
        raise ConfigError("inline_block_bytes must be 0..1M")
    if not 0 <= cfg.append_commit_bytes <= 1 << 30:
        raise ConfigError("append_commit_bytes must be 0..1G")
    if not 0 <= cfg.append_commit_seconds <= 60:
        raise ConfigError("append_commit_seconds must be 0..60")
    if (cfg.certfile is None) != (cfg.keyfile is None):
        raise ConfigError("certfile and keyfile go together")
    return cfg


def _optional(value: Any, kind: Any) -> Any:
    """A number, or None for "none" / "" (no limit)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"not a number: {value!r}") from None


def with_overrides(cfg: ServerConfig, **changes: Any) -> ServerConfig:
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})
