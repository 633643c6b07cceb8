"""Nothing stored reveals file content: no marker in the block store or the database."""

from __future__ import annotations

import io
import os
from pathlib import Path

from tests.storage.conftest import EngineFactory

MARKER = b"PLAINTEXT-MARKER-7f3a9c"


def test_no_marker_string_reaches_the_block_store_or_the_database(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'meta.db'}", f"file://{tmp_path / 'blocks'}")
    engine.accounts.create("m", "password1")
    vol = engine.volume("m")
    compressible = (MARKER + b" some log line that repeats\n") * 50_000
    incompressible = os.urandom(200_000) + MARKER + os.urandom(200_000)
    precompressed = os.urandom(100_000) + MARKER
    vol.write("log.txt", io.BytesIO(compressible))
    vol.write("noise.bin", io.BytesIO(incompressible))
    vol.write("photo.jpg", io.BytesIO(precompressed))  # stored without zstd by type
    vol.set_properties("log.txt", {"{urn:x}note": "harmless"})
    engine.close()

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.parent.parent.name == "blocks" or "blocks" in p.parts for p in files)
    assert any(p.name.startswith("meta.db") for p in files)
    for path in files:
        data = path.read_bytes()
        assert MARKER not in data, f"{path} contains the marker"
        assert MARKER.hex().encode() not in data
