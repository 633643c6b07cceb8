"""The config loader: defaults < file < environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from davserver import config
from storage.keys import MasterKey


def test_defaults_live_in_the_data_dir(tmp_path: Path) -> None:
    cfg = config.load(data_dir=tmp_path, env={})
    assert cfg.database_url == f"sqlite:///{tmp_path / 'meta.db'}"
    assert cfg.blocks_url == f"file://{tmp_path / 'blocks'}"
    assert cfg.master_key_file == tmp_path / "master.key"
    assert cfg.durable is True


def test_file_then_environment_then_flags_win(tmp_path: Path) -> None:
    (tmp_path / "davserver.toml").write_text(
        '[server]\nport = 9000\nthreads = 8\n[storage]\nblocks_url = "file:///from-file"\n'
        'max_file_size = "1G"\ndurable = false\n'
    )
    env = {"DAVSERVER_BLOCKS_URL": "s3://bucket/env", "DAVSERVER_DATA_DIR": "/ignored"}
    cfg = config.load(data_dir=tmp_path, env=env, overrides={"port": 9001})
    assert cfg.port == 9001
    assert cfg.threads == 8
    assert cfg.blocks_url == "s3://bucket/env"
    assert cfg.max_file_size == 1 << 30
    assert cfg.durable is False


def test_data_dir_from_environment(tmp_path: Path) -> None:
    cfg = config.load(env={"DAVSERVER_DATA_DIR": str(tmp_path)})
    assert cfg.data_dir == tmp_path


@pytest.mark.parametrize(
    ("text", "size"), [("10G", 10 << 30), ("500 MiB", 500 << 20), ("1.5k", 1536), ("42", 42)]
)
def test_sizes_parse_in_binary_units(text: str, size: int) -> None:
    assert config.parse_size(text) == size


@pytest.mark.parametrize("bad", ["ten", "10X", "-1G"])
def test_bad_sizes_are_clear_errors(bad: str) -> None:
    with pytest.raises(config.ConfigError):
        config.parse_size(bad)


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError):
        config.load(data_dir=tmp_path, config_file=tmp_path / "missing.toml", env={})


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "davserver.toml").write_text("port = = 1")
    with pytest.raises(config.ConfigError):
        config.load(data_dir=tmp_path, env={})


def test_storage_config_needs_the_master_key(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="davserver init"):
        config.load(data_dir=tmp_path, env={}).storage_config()


def test_the_example_config_loads_and_unknown_keys_are_errors(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "conf" / "davserver.example.toml"
    cfg = config.load(data_dir=tmp_path, config_file=example, env={})
    assert cfg.extra["apple_double"] == "store" and cfg.port == 8080
    typo = tmp_path / "typo.toml"
    typo.write_text('apple_doubel = "refuse"\n')
    with pytest.raises(config.ConfigError, match="apple_doubel"):
        config.load(data_dir=tmp_path, config_file=typo, env={})


def test_rehash_reads_reaches_the_storage_config(tmp_path: Path) -> None:
    MasterKey.generate().save(tmp_path / config.MASTER_KEY_NAME)
    (tmp_path / "davserver.toml").write_text("[storage]\nrehash_reads = true\n")
    assert config.load(data_dir=tmp_path, env={}).storage_config().rehash_reads is True
    (tmp_path / "davserver.toml").write_text("")
    assert config.load(data_dir=tmp_path, env={}).storage_config().rehash_reads is False


def test_inline_block_bytes_reaches_the_storage_config(tmp_path: Path) -> None:
    MasterKey.generate().save(tmp_path / config.MASTER_KEY_NAME)
    assert config.load(data_dir=tmp_path, env={}).storage_config().inline_block_bytes == 32 << 10
    (tmp_path / "davserver.toml").write_text('[storage]\ninline_block_bytes = "4K"\n')
    assert config.load(data_dir=tmp_path, env={}).storage_config().inline_block_bytes == 4 << 10
    (tmp_path / "davserver.toml").write_text("[storage]\ninline_block_bytes = 0\n")
    assert config.load(data_dir=tmp_path, env={}).storage_config().inline_block_bytes == 0
    (tmp_path / "davserver.toml").write_text('[storage]\ninline_block_bytes = "2M"\n')
    with pytest.raises(config.ConfigError, match="inline_block_bytes"):
        config.load(data_dir=tmp_path, env={})


def test_the_append_commit_window_reaches_the_storage_config(tmp_path: Path) -> None:
    MasterKey.generate().save(tmp_path / config.MASTER_KEY_NAME)
    storage = config.load(data_dir=tmp_path, env={}).storage_config()
    assert (storage.append_commit_bytes, storage.append_commit_seconds) == (64 << 20, 1.0)
    (tmp_path / "davserver.toml").write_text(
        '[storage]\nappend_commit_bytes = "8M"\nappend_commit_seconds = 0.5\n'
    )
    storage = config.load(data_dir=tmp_path, env={}).storage_config()
    assert (storage.append_commit_bytes, storage.append_commit_seconds) == (8 << 20, 0.5)
    (tmp_path / "davserver.toml").write_text("[storage]\nappend_commit_seconds = 600\n")
    with pytest.raises(config.ConfigError, match="append_commit_seconds"):
        config.load(data_dir=tmp_path, env={})
