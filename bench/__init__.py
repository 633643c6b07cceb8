"""Benchmarks: davserver side by side with plain WsgiDAV (see bench/README.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_common_options(ap: argparse.ArgumentParser, *, wait_quiet: str) -> None:
    """``--workdir``, ``--wait-quiet`` (``wait_quiet`` says before what) and ``--json``."""
    ap.add_argument(
        "--workdir", type=Path, default=None, help="parent of the (removed afterwards) bench folder"
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=f"{wait_quiet}, wait up to this long for other processes to go idle (default 0: no)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
