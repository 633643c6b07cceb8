"""The davserver command line, driven through click's runner."""

from __future__ import annotations

import io
import random
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from davserver.cli import main
from storage.config import PasswordHashing
from storage.engine import Engine
from storage.keys import MasterKey


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DAVSERVER_DATA_DIR", raising=False)
    result = CliRunner().invoke(main, ["init", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    return tmp_path


def run(data_dir: Path, *args: str, input: str | None = None) -> str:
    result = CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)], input=input)
    assert result.exit_code == 0, result.output
    return result.output


def test_init_creates_everything_and_is_idempotent(data_dir: Path) -> None:
    key = data_dir / "master.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    run(data_dir, "init")
    assert key.read_bytes() == before
    assert (data_dir / "meta.db").exists() and (data_dir / "davserver.toml").exists()


def test_user_lifecycle(data_dir: Path) -> None:
    run(data_dir, "user", "add", "carol", "--password-stdin", "--quota", "2G", input="long password\n")
    assert "carol\tused 0 B\tquota 2.0 GiB" in run(data_dir, "user", "list")
    run(data_dir, "user", "quota", "carol", "none")
    assert "quota none" in run(data_dir, "user", "list")
    run(data_dir, "user", "passwd", "carol", "--password-stdin", input="another password\n")
    run(data_dir, "user", "delete", "carol", "--yes")
    assert "carol" not in run(data_dir, "user", "list")


def test_short_passwords_and_unknown_users_are_clear_errors(data_dir: Path) -> None:
    result = CliRunner().invoke(
        main, ["user", "add", "dave", "--password-stdin", "--data-dir", str(data_dir)], input="short\n"
    )
    assert result.exit_code != 0 and "at least 8" in result.output
    result = CliRunner().invoke(main, ["user", "quota", "nobody", "1G", "--data-dir", str(data_dir)])
    assert result.exit_code != 0 and "no account" in result.output


def test_token_is_printed_once_and_authenticates(data_dir: Path) -> None:
    run(data_dir, "user", "add", "erin", "--password-stdin", input="erin password\n")
    token = run(data_dir, "token", "create", "erin", "--label", "laptop").strip().splitlines()[-1]
    assert token.startswith("dst_")
    assert "laptop\tactive" in run(data_dir, "token", "list", "erin")
    with _engine(data_dir) as engine:
        assert engine.accounts.authenticate("erin", token).name == "erin"
    run(data_dir, "token", "revoke", "erin", "1")
    assert "laptop\trevoked" in run(data_dir, "token", "list", "erin")


def test_maintenance_commands_report(data_dir: Path) -> None:
    run(data_dir, "user", "add", "fay", "--password-stdin", input="fay password\n")
    with _engine(data_dir) as engine:
        vol = engine.volume("fay")
        vol.write("a.txt", io.BytesIO(b"hello " * 10_000))
        vol.write("b.txt", io.BytesIO(b"hello " * 10_000))
    out = run(data_dir, "stats")
    assert "files / folders     2 / 0" in out and "dedup ratio         2.00x" in out
    assert "problems 0" in run(data_dir, "fsck", "--deep")
    assert "blocks deleted 0" in run(data_dir, "gc")


COLD = random.Random(7).randbytes(100_000)


def test_tier_moves_cold_blocks_and_stats_shows_both_stores(data_dir: Path) -> None:
    failed = CliRunner().invoke(main, ["tier", "--data-dir", str(data_dir)])
    assert failed.exit_code != 0 and "no archive store" in failed.output
    config = data_dir / "davserver.toml"
    config.write_text(config.read_text() + f'\narchive_url = "file://{data_dir / "archive"}"\n')
    run(data_dir, "user", "add", "gus", "--password-stdin", input="gus password\n")
    with _engine(data_dir) as engine:
        # Incompressible and over inline_block_bytes: a block object in the store, not its row.
        engine.volume("gus").write("old.txt", io.BytesIO(COLD))
    assert "moved 0 blocks" in run(data_dir, "tier")
    assert "moved 1 blocks" in run(data_dir, "tier", "--days", "0")
    out = run(data_dir, "stats")
    assert "hot store           0 B in 0 blocks" in out and "in 1 blocks" in out.split("archive")[1]
    with _engine(data_dir) as engine, engine.volume("gus").open("old.txt") as r:
        assert r.read() == COLD
    assert "problems 0" in run(data_dir, "fsck", "--deep")


def test_account_retention_applies_at_gc(data_dir: Path) -> None:
    run(data_dir, "user", "add", "ivy", "--password-stdin", input="ivy password\n")
    with _engine(data_dir) as engine:
        vol = engine.volume("ivy")
        for i in range(4):
            vol.write("notes.txt", io.BytesIO(b"version %d" % i))
    assert "max_versions" in run(data_dir, "user", "retention", "ivy", "--max-versions", "2")
    result = CliRunner().invoke(
        main, ["user", "retention", "ivy", "--trash-days", "-3", "--data-dir", str(data_dir)]
    )
    assert result.exit_code != 0 and "positive" in result.output
    assert "retention: 2 old versions removed" in run(data_dir, "gc")
    with _engine(data_dir) as engine:
        assert len(engine.volume("ivy").revisions("notes.txt")) == 2
    run(data_dir, "user", "retention", "ivy", "--reset")
    assert "retention: 0 old versions removed" in run(data_dir, "gc")


def test_fsck_exits_nonzero_on_damage(data_dir: Path) -> None:
    run(data_dir, "user", "add", "gus", "--password-stdin", input="gus password\n")
    with _engine(data_dir) as engine:
        engine.volume("gus").write("x", io.BytesIO(COLD))  # an object in the store
    for obj in (data_dir / "blocks").rglob("*"):
        if obj.is_file():
            obj.write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["fsck", "--deep", "--data-dir", str(data_dir)])
    assert result.exit_code == 1 and "PROBLEM" in result.output


def test_key_rotation_keeps_files_readable(data_dir: Path) -> None:
    run(data_dir, "user", "add", "hal", "--password-stdin", input="hal password\n")
    with _engine(data_dir) as engine:
        engine.volume("hal").write("x", io.BytesIO(b"secret stuff"))
    old_id = MasterKey.load(data_dir / "master.key").key_id
    assert "re-wrapped 1 account keys" in run(data_dir, "keys", "rotate")
    assert (data_dir / f"master.key.old-{old_id}").exists()
    assert MasterKey.load(data_dir / "master.key").key_id != old_id
    with _engine(data_dir) as engine, engine.volume("hal").open("x") as f:
        assert f.read() == b"secret stuff"


def test_interrupted_rotation_is_finished_or_discarded(data_dir: Path) -> None:
    run(data_dir, "user", "add", "ida", "--password-stdin", input="ida password\n")
    with _engine(data_dir) as engine:
        engine.volume("ida").write("x", io.BytesIO(b"ida's data"))
    key_file, pending = data_dir / "master.key", data_dir / "master.key.new"
    # Crash before the database commit: the new key file exists, nothing uses it.
    MasterKey.generate().save(pending)
    out = run(data_dir, "keys", "rotate")
    assert "discarded an interrupted rotation" in out and "re-wrapped 1 account keys" in out
    # Crash after the commit, before the files were swapped.
    new_key = MasterKey.generate()
    new_key.save(pending)
    with _engine(data_dir) as engine:
        engine.accounts.rotate_master_key(new_key)
    assert "finished an interrupted rotation" in run(data_dir, "keys", "rotate")
    assert MasterKey.load(key_file).key_id == new_key.key_id and not pending.exists()
    with _engine(data_dir) as engine, engine.volume("ida").open("x") as f:
        assert f.read() == b"ida's data"


def test_make_run_bootstrap_creates_admin_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAVSERVER_DATA_DIR", raising=False)
    first = CliRunner().invoke(main, ["init", "--data-dir", str(tmp_path), "--create-admin", "admin"])
    assert first.exit_code == 0, first.output
    password = first.output.split("with password: ")[1].split()[0]
    again = CliRunner().invoke(main, ["init", "--data-dir", str(tmp_path), "--create-admin", "admin"])
    assert again.exit_code == 0 and "password" not in again.output
    with _engine(tmp_path) as engine:
        assert engine.accounts.authenticate("admin", password).name == "admin"


def _engine(data_dir: Path) -> Engine:
    from davserver import config

    cfg = config.load(data_dir=data_dir, env={})
    return Engine.open(cfg.storage_config(password_hashing=PasswordHashing(1, 8, 1)))
