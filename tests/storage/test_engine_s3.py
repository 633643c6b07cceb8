"""The whole engine on the scale-out engines: PostgreSQL metadata, S3 blocks."""

from __future__ import annotations

import io
import os
import secrets

from tests.storage.conftest import EngineFactory, fresh_pg_database


def test_write_read_collect_and_check_on_postgres_and_s3(
    make_engine: EngineFactory, pg_url: str, s3_url: str
) -> None:
    blocks_url = s3_url.replace("/blocks?", f"/engine-{secrets.token_hex(4)}?", 1)
    assert blocks_url != s3_url
    engine = make_engine(fresh_pg_database(pg_url), blocks_url)
    engine.accounts.create("s3user", "password1")
    vol = engine.volume("s3user")
    data = os.urandom(900_000)
    vol.write("f.bin", io.BytesIO(data))
    vol.copy("f.bin", "g.bin")
    with vol.open("g.bin") as f:
        f.seek(123_456)
        assert f.read(1000) == data[123_456:124_456]
    vol.write("gone.bin", io.BytesIO(os.urandom(300_000)))
    vol.delete("gone.bin")
    vol.purge_trash()
    report = engine.gc(grace_seconds=0)
    assert report.blocks_deleted > 0
    check = engine.fsck(deep=True)
    assert check.clean and check.leak_free, check
    assert check.blocks_checked == engine.stats().blocks
