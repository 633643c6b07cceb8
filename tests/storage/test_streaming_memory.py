"""Memory stays flat: writing and reading 1 GiB grows peak RSS by < 150 MB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json, os, sys, threading, time
import psutil
from storage.config import StorageConfig, PasswordHashing
from storage.engine import Engine
from storage.keys import MasterKey

root = sys.argv[1]
size = 1 << 30
proc = psutil.Process()
peak = 0
stop = threading.Event()
def sample():
    global peak
    while not stop.is_set():
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.005)

engine = Engine.open(StorageConfig(
    database_url=f"sqlite:///{root}/meta.db", blocks_url=f"file://{root}/blocks",
    master_key=MasterKey.generate(), password_hashing=PasswordHashing(1, 8, 1), durable=False))
engine.accounts.create("m", "password1")
vol = engine.volume("m")
seed = os.urandom(1 << 20)

class Source:
    def __init__(self):
        self.left = size
        self.i = 0
    def read(self, n=-1):
        n = min(self.left, 1 << 20 if n < 0 else n)
        self.left -= n
        self.i += 1
        block = self.i.to_bytes(8, "big") + seed[8:]
        return (block * (n // len(block) + 1))[:n]

baseline = proc.memory_info().rss
threading.Thread(target=sample, daemon=True).start()
vol.write("big.bin", Source(), size_hint=size)
total = 0
with vol.open("big.bin") as f:
    while chunk := f.read(1 << 20):
        total += len(chunk)
stop.set()
print(json.dumps({"baseline": baseline, "peak": peak, "read": total}))
"""


@pytest.mark.slow
def test_one_gib_round_trip_keeps_memory_flat(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["read"] == 1 << 30
    growth = result["peak"] - result["baseline"]
    assert growth < 150e6, f"peak RSS grew by {growth / 1e6:.0f} MB"
