"""A writer killed with SIGKILL mid-write: the previous version survives whole."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from storage.engine import Engine
from storage.keys import MasterKey
from tests.storage.conftest import EngineFactory

WRITER = r"""
import hashlib, sys
from pathlib import Path
from storage.config import StorageConfig, PasswordHashing
from storage.engine import Engine
from storage.keys import MasterKey
from storage.chunker import ChunkerParams

db_url, blocks_url, key_file, marker = sys.argv[1:5]
engine = Engine.open(StorageConfig(
    database_url=db_url, blocks_url=blocks_url, master_key=MasterKey.load(key_file),
    chunker=ChunkerParams(16 << 10, 64 << 10, 256 << 10), pin_every_bytes=1 << 20,
    password_hashing=PasswordHashing(1, 8, 1)))

class Endless:
    '''Distinct pseudo-random bytes forever; says when 8 MiB have been read.'''
    def __init__(self):
        self.sent = 0
        self.counter = 0
    def read(self, n=-1):
        n = n if n > 0 else 65536
        out = bytearray()
        while len(out) < n:
            self.counter += 1
            out += hashlib.sha512(self.counter.to_bytes(8, "big")).digest() * 16
        self.sent += n
        if self.sent > (8 << 20):
            Path(marker).touch()
        return bytes(out[:n])

engine.volume("crash").write("victim.bin", Endless())
"""


def test_sigkill_mid_write_leaves_old_version_and_no_leak(
    make_engine: EngineFactory, database_url: str, tmp_path: Path
) -> None:
    key = MasterKey.generate()
    key_file = tmp_path / "master.key"
    key.save(key_file)
    blocks_url = f"file://{tmp_path / 'blocks'}"
    engine: Engine = make_engine(database_url, blocks_url, master_key=key)
    engine.accounts.create("crash", "password1")
    vol = engine.volume("crash")
    old = os.urandom(3 << 20)
    vol.write("victim.bin", __import__("io").BytesIO(old))
    revisions_before = vol.revisions("victim.bin")

    marker = tmp_path / "halfway"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, database_url, blocks_url, str(key_file), str(marker)],
        cwd=Path(__file__).resolve().parents[2],
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert child.poll() is None, "the writer ended before it was killed"
        assert time.monotonic() < deadline, "the writer never got halfway"
        time.sleep(0.01)
    time.sleep(0.3)  # let it store and pin more blocks
    child.send_signal(signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL

    with vol.open("victim.bin") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(old).digest()
    assert vol.revisions("victim.bin") == revisions_before
    assert engine.stats().blocks > 0
    # The killed upload's pins expire with its lease; then gc takes everything it stored.
    report = engine.gc(now=time.time() + engine.config.write_lease_seconds + 1, grace_seconds=0)
    assert report.expired_uploads == 1
    assert report.blocks_deleted + report.orphan_objects_deleted > 0
    check = engine.fsck(deep=True)
    assert check.clean, check.problems
    assert check.leak_free, check
    with vol.open("victim.bin") as f:
        assert f.read() == old
