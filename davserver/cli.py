"""The ``davserver`` command line (click): set-up, accounts, tokens and maintenance."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from davserver import config as config_mod
from storage.engine import Engine
from storage.errors import StorageError
from storage.keys import MasterKey

DEFAULT_CONFIG = """\
# davserver configuration. Every key is optional; environment variables
# (DAVSERVER_DATABASE_URL, DAVSERVER_BLOCKS_URL, DAVSERVER_REDIS_URL, ...) and
# command-line flags override what is written here.

[server]
host = "127.0.0.1"
port = 8080
threads = 32

[storage]
# database_url = "postgresql+psycopg://user@db-host/davserver"
# blocks_url = "s3://bucket/prefix?endpoint=https://s3.example.com&region=us-east-1"
durable = true
zstd_level = 1
max_file_size = "10G"
"""


def _data_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file.")(
        fn
    )
    return click.option("--data-dir", type=click.Path(file_okay=False), help="Data folder (default ./data).")(
        fn
    )


def _load(data_dir: str | None, config_file: str | None, **overrides: Any) -> config_mod.ServerConfig:
    try:
        return config_mod.load(data_dir=data_dir, config_file=config_file, overrides=overrides)
    except config_mod.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@contextlib.contextmanager
def _engine(cfg: config_mod.ServerConfig, *, auto_migrate: bool | None = None) -> Iterator[Engine]:
    try:
        engine = Engine.open(cfg.storage_config(auto_migrate=auto_migrate))
    except (StorageError, config_mod.ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield engine
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.close()


def _read_password(from_stdin: bool, *, confirm: bool = True) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    if len(password) < 8:
        raise click.ClickException("passwords need at least 8 characters")
    return password


@click.group()
@click.version_option(package_name="davserver")
def main() -> None:
    """davserver: a WebDAV file server with sync extensions."""


@main.command()
@click.option(
    "--create-admin",
    metavar="NAME",
    help="Also create this account if no account exists yet; its generated password is printed once.",
)
@_data_options
def init(data_dir: str | None, config_file: str | None, create_admin: str | None) -> None:
    """Create the data folder, master key, database and block folder (idempotent)."""
    cfg = _load(data_dir, config_file)
    cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config_path = cfg.data_dir / config_mod.CONFIG_NAME
    if not config_file and not config_path.exists():
        config_path.write_text(DEFAULT_CONFIG, encoding="utf-8")
        click.echo(f"wrote {config_path}")
    if not cfg.master_key_file.exists():
        MasterKey.generate().save(cfg.master_key_file)
        click.echo(f"created master key {cfg.master_key_file} (back it up: without it no file can be read)")
    with _engine(cfg, auto_migrate=True) as engine:
        if create_admin and not engine.accounts.list_all():
            password = secrets.token_urlsafe(18)
            engine.accounts.create(create_admin, password, None)
            click.echo(f"created account {create_admin!r} with password: {password}")
            click.echo("  (shown once; change it with 'davserver user passwd')")
    click.echo(f"data folder {cfg.data_dir} is ready")


@main.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port (default 8080).")
@click.option("--threads", type=int, help="Worker threads (default 32).")
@click.option("--certfile", type=click.Path(dir_okay=False, exists=True), help="TLS certificate (PEM).")
@click.option("--keyfile", type=click.Path(dir_okay=False, exists=True), help="TLS private key (PEM).")
@_data_options
def serve(
    data_dir: str | None,
    config_file: str | None,
    host: str | None,
    port: int | None,
    threads: int | None,
    certfile: str | None,
    keyfile: str | None,
) -> None:
    """Serve WebDAV at /dav/ until SIGTERM or Ctrl-C."""
    from davserver.app import AppSettings, create_app
    from davserver.maintenance import RetentionTimer
    from davserver.server import (
        ListenSettings,
        freeze_startup_objects,
        make_server,
        serve_forever,
        tune_malloc,
    )

    tune_malloc()

    cfg = _load(
        data_dir, config_file, host=host, port=port, threads=threads, certfile=certfile, keyfile=keyfile
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # WsgiDAV logs every client-caused PUT failure with a traceback; the
    # failures that matter (unexpected exceptions) come from its error printer.
    logging.getLogger("wsgidav").setLevel(logging.ERROR)
    logging.getLogger("wsgidav.request_server").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        settings = AppSettings.from_config(cfg)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    with _engine(cfg) as engine:
        listen = ListenSettings(
            host=cfg.host,
            port=cfg.port,
            threads=cfg.threads,
            certfile=cfg.certfile,
            keyfile=cfg.keyfile,
            shutdown_seconds=cfg.shutdown_seconds,
        )
        try:
            server = make_server(create_app(engine, settings), listen)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {cfg.host}:{cfg.port}: {exc}") from None

        def ready(url: str) -> None:
            click.echo(f"davserver serving {url}/dav/ (data {cfg.data_dir})", err=True)

        upkeep = RetentionTimer(engine, cfg.retention_interval_minutes * 60)
        upkeep.start()
        engine.notifications.start()
        freeze_startup_objects()
        try:
            serve_forever(server, on_ready=ready)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {cfg.host}:{cfg.port}: {exc}") from None
        finally:
            upkeep.stop()


@main.command()
@_data_options
def migrate(data_dir: str | None, config_file: str | None) -> None:
    """Apply database schema migrations."""
    cfg = _load(data_dir, config_file)
    Engine.migrate(cfg.storage_config(auto_migrate=True))
    click.echo("schema is up to date")


@main.group()
def user() -> None:
    """Manage accounts."""


@user.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--quota", help="Quota, e.g. 10G (binary units: 10G = 10 GiB; default: none).")
@_data_options
def user_add(
    name: str, password_stdin: bool, quota: str | None, data_dir: str | None, config_file: str | None
) -> None:
    """Create an account."""
    cfg = _load(data_dir, config_file)
    password = _read_password(password_stdin)
    with _engine(cfg) as engine:
        engine.accounts.create(name, password, _quota(quota))
    click.echo(f"account {name} created")


@user.command("list")
@_data_options
def user_list(data_dir: str | None, config_file: str | None) -> None:
    """List accounts with usage and quota."""
    with _engine(_load(data_dir, config_file)) as engine:
        for info in engine.accounts.list_all():
            quota = _human(info.quota_bytes) if info.quota_bytes is not None else "none"
            click.echo(f"{info.name}\tused {_human(info.used_bytes)}\tquota {quota}")


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True)
@_data_options
def user_passwd(name: str, password_stdin: bool, data_dir: str | None, config_file: str | None) -> None:
    """Change an account's password."""
    cfg = _load(data_dir, config_file)
    password = _read_password(password_stdin)
    with _engine(cfg) as engine:
        engine.accounts.set_password(name, password)
    click.echo(f"password of {name} changed")


@user.command("retention")
@click.argument("name")
@click.option("--max-versions", help="At most this many versions per file ('none': no limit).")
@click.option("--max-version-age-days", help="No version older than this ('none': no limit).")
@click.option("--trash-days", help="Purge trash items older than this ('none': never).")
@click.option("--reset", is_flag=True, help="Drop the account's own settings: the server's apply.")
@_data_options
def user_retention(
    name: str,
    max_versions: str | None,
    max_version_age_days: str | None,
    trash_days: str | None,
    reset: bool,
    data_dir: str | None,
    config_file: str | None,
) -> None:
    """Give an account its own retention settings (over the server's)."""
    overrides: dict[str, Any] = {}
    try:
        if max_versions is not None:
            overrides["max_versions"] = _limit(max_versions, int, 1)
        if max_version_age_days is not None:
            days = _limit(max_version_age_days, float, 86400)
            overrides["max_age_seconds"] = days
        if trash_days is not None:
            overrides["trash_seconds"] = _limit(trash_days, float, 86400)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    with _engine(_load(data_dir, config_file)) as engine:
        engine.accounts.set_retention(name, None if reset else overrides)
    click.echo(f"retention of {name}: {'server default' if reset else overrides or 'server default'}")


def _limit(text: str, kind: Any, scale: float) -> Any:
    """A positive number times ``scale``, or None for 'none'."""
    if text.strip().lower() == "none":
        return None
    value = kind(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be positive (or 'none')")
    return kind(value * scale)


@user.command("quota")
@click.argument("name")
@click.argument("size")
@_data_options
def user_quota(name: str, size: str, data_dir: str | None, config_file: str | None) -> None:
    """Set an account's quota (e.g. 10G, or 'none')."""
    with _engine(_load(data_dir, config_file)) as engine:
        engine.accounts.set_quota(name, _quota(size))
    click.echo(f"quota of {name} set to {size}")


@user.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_data_options
def user_delete(name: str, yes: bool, data_dir: str | None, config_file: str | None) -> None:
    """Delete an account with all its files and history."""
    if not yes:
        click.confirm(f"Delete {name} and all its files?", abort=True)
    with _engine(_load(data_dir, config_file)) as engine:
        engine.delete_account(name)
    click.echo(f"account {name} deleted")


@main.group()
def token() -> None:
    """Manage device tokens (usable as the Basic password or a Bearer token)."""


@token.command("create")
@click.argument("name")
@click.option("--label", default="device", show_default=True)
@_data_options
def token_create(name: str, label: str, data_dir: str | None, config_file: str | None) -> None:
    """Create a token; it is printed once and never stored in clear."""
    with _engine(_load(data_dir, config_file)) as engine:
        info, secret = engine.accounts.create_token(name, label)
    click.echo(f"token {info.id} ({label}) for {name}:", err=True)
    click.echo(secret)


@token.command("list")
@click.argument("name")
@_data_options
def token_list(name: str, data_dir: str | None, config_file: str | None) -> None:
    """List an account's tokens."""
    with _engine(_load(data_dir, config_file)) as engine:
        for info in engine.accounts.list_tokens(name):
            state = "revoked" if info.revoked else "active"
            click.echo(f"{info.id}\t{info.label}\t{state}")


@token.command("revoke")
@click.argument("name")
@click.argument("token_id", type=int)
@_data_options
def token_revoke(name: str, token_id: int, data_dir: str | None, config_file: str | None) -> None:
    """Revoke a token by id."""
    with _engine(_load(data_dir, config_file)) as engine:
        engine.accounts.revoke_token(name, token_id)
    click.echo(f"token {token_id} revoked")


@main.command()
@click.option("--grace", type=float, help="Seconds an unreferenced block is kept (default from config).")
@click.option(
    "--no-retention", is_flag=True, help="Skip the retention pass (old versions, old trash, old journal)."
)
@_data_options
def gc(grace: float | None, no_retention: bool, data_dir: str | None, config_file: str | None) -> None:
    """Apply retention, then reclaim blocks no version or live upload references."""
    with _engine(_load(data_dir, config_file)) as engine:
        if not no_retention:
            kept = engine.apply_retention()
            click.echo(
                f"retention: {kept.versions_removed} old versions removed, "
                f"{kept.trash_nodes_purged} trashed entries purged"
            )
            click.echo(f"change journal: {engine.compact_journal()} entries past retention removed")
        report = engine.gc(grace_seconds=grace)
    click.echo(
        f"expired uploads {report.expired_uploads}, blocks deleted {report.blocks_deleted} "
        f"({_human(report.bytes_freed)}), orphan objects deleted {report.orphan_objects_deleted}, "
        f"skipped (in use) {report.blocks_skipped_in_use}"
    )


@main.command()
@click.option("--deep", is_flag=True, help="Fetch, decrypt and re-hash every block.")
@_data_options
def fsck(deep: bool, data_dir: str | None, config_file: str | None) -> None:
    """Check metadata and block store consistency (exit 1 on problems)."""
    with _engine(_load(data_dir, config_file)) as engine:
        report = engine.fsck(deep=deep)
    for problem in report.problems:
        click.echo(f"PROBLEM: {problem}")
    click.echo(
        f"versions {report.versions_checked}, blocks verified {report.blocks_checked}, "
        f"unreferenced blocks {report.unreferenced_blocks}, orphan objects {report.orphan_objects}, "
        f"problems {len(report.problems)}"
    )
    if not report.clean:
        sys.exit(1)


@main.command()
@_data_options
def stats(data_dir: str | None, config_file: str | None) -> None:
    """Files, versions, logical vs stored bytes, dedup and compression ratios."""
    with _engine(_load(data_dir, config_file)) as engine:
        s = engine.stats()
        cache = engine.cache.shared_stats()
        tiers = engine.bytes_per_tier()
    click.echo(f"accounts            {s.accounts}")
    click.echo(f"files / folders     {s.files} / {s.folders}")
    click.echo(f"versions            {s.versions}")
    click.echo(f"current bytes       {_human(s.current_bytes)}")
    click.echo(f"all versions bytes  {_human(s.logical_bytes)}")
    click.echo(f"unique block bytes  {_human(s.unique_block_bytes)} in {s.blocks} blocks")
    click.echo(f"stored bytes        {_human(s.stored_bytes)}")
    click.echo(f"dedup ratio         {s.dedup_ratio:.2f}x")
    click.echo(f"compression ratio   {s.compression_ratio:.2f}x")
    for tier, label in ((0, "hot store"), (1, "archive"), (-1, "inline in database")):
        count, size = tiers.get(tier, (0, 0))
        click.echo(f"{label:<20}{_human(size)} in {count} blocks")
    if cache is not None:
        click.echo(f"metadata cache      {cache.hits} hits, {cache.misses} misses (all nodes, Redis)")


@main.command()
@click.option("--days", type=float, help="Blocks not read for this many days are cold (default from config).")
@click.option("--limit", type=int, help="Move at most this many blocks in this run.")
@_data_options
def tier(days: float | None, limit: int | None, data_dir: str | None, config_file: str | None) -> None:
    """Move cold blocks to the archive store (archive_url); reads fall through to it."""
    with _engine(_load(data_dir, config_file)) as engine:
        try:
            report = engine.tier(days=days, limit=limit)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(
        f"moved {report.blocks_moved} blocks ({_human(report.bytes_moved)}) to the archive"
        + (f"; finished {report.finished} interrupted moves" if report.finished else "")
    )


@main.group()
def keys() -> None:
    """Master key management."""


@keys.command("rotate")
@_data_options
def keys_rotate(data_dir: str | None, config_file: str | None) -> None:
    """Generate a new master key and re-wrap every account key with it (blocks untouched).

    The new key is written beside the old one first (master.key.new); only after
    the database commit does it replace the old file, which is kept as
    master.key.old-<id>. Running the command again after an interruption
    finishes or discards the interrupted rotation, whichever the database says.
    """
    cfg = _load(data_dir, config_file)
    key_file = cfg.master_key_file
    pending = key_file.with_name(key_file.name + ".new")
    if pending.exists():
        new_key = MasterKey.load(pending)
        with _engine(cfg) as engine:
            in_use = engine.accounts.master_key_ids()
        if in_use == {new_key.key_id}:
            _swap_master_key(key_file, pending)
            click.echo(f"finished an interrupted rotation; master key id is now {new_key.key_id}")
            return
        if new_key.key_id in in_use:
            raise click.ClickException(f"{pending}: accounts use both keys; restore the database backup")
        pending.unlink()
        click.echo("discarded an interrupted rotation that had not committed")
    new_key = MasterKey.generate()
    new_key.save(pending)
    with _engine(cfg) as engine:
        count = engine.accounts.rotate_master_key(new_key)
    _swap_master_key(key_file, pending)
    click.echo(f"re-wrapped {count} account keys; new master key id {new_key.key_id}")


def _swap_master_key(key_file: Path, pending: Path) -> None:
    old_id = MasterKey.load(key_file).key_id
    os.replace(key_file, key_file.with_name(f"{key_file.name}.old-{old_id}"))
    os.replace(pending, key_file)


def _quota(text: str | None) -> int | None:
    if text is None or text.lower() in ("none", "unlimited", ""):
        return None
    try:
        return config_mod.parse_size(text)
    except config_mod.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


if __name__ == "__main__":
    main()
