"""The litmus WebDAV conformance suites (Debian's litmus 0.13) against a real server.

litmus is the reference RFC 4918 checker that WsgiDAV, Apache mod_dav and
sabre/dav are measured with. Each suite runs on its own collection so one
suite's leftovers cannot fail another, and a suite counts only if it ran tests:
a run that skipped everything (say, because LOCK broke early) is a failure, not
a pass.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import DavServer, require_tool

SUITES = ("basic", "copymove", "props", "locks", "http")
_SUMMARY = re.compile(r"<- summary for `(\w+)': of (\d+) tests run: (\d+) passed, (\d+) failed")
_SKIPPED = re.compile(r"-> (\d+) tests? were skipped")
_FAILED_TEST = re.compile(r"^\s*\d+\.\s+(\w+)\.*\s.*?\bFAIL\b.*$", re.MULTILINE)


@pytest.mark.parametrize("suite", SUITES)
def test_litmus_suite(dav_server: DavServer, tmp_path: Path, suite: str) -> None:
    binary = require_tool("litmus")
    with dav_server.client("alice") as c:
        r = c.request("MKCOL", f"/dav/litmus-{suite}/")
        assert r.status_code == 201, r.text
    env = {**os.environ, "TESTS": suite}
    # litmus writes debug.log (full HTTP traces) and child.log into its working directory.
    result = subprocess.run(
        [binary, f"{dav_server.dav_url}/litmus-{suite}/", "alice", dav_server.accounts["alice"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    # litmus redraws each test's line after "\r"; keep only the final state of a line (bytes
    # are captured because universal-newline decoding would turn every "\r" into a line break).
    raw = (result.stdout + result.stderr).decode("utf-8", "replace")
    output = "\n".join(line.rsplit("\r", 1)[-1] for line in raw.split("\n"))
    report = f"litmus {suite} exited {result.returncode}; HTTP traces in {tmp_path / 'debug.log'}\n{output}"

    summaries = _SUMMARY.findall(output)
    assert len(summaries) == 1 and summaries[0][0] == suite, "no summary line\n" + report
    run, passed, failed = (int(n) for n in summaries[0][1:])
    failures = _FAILED_TEST.findall(output)
    assert failed == 0 and not failures, f"{failed} failed: {', '.join(failures)}\n" + report
    assert run > 0 and passed == run, report
    skipped = sum(int(n) for n in _SKIPPED.findall(output))
    assert skipped == 0, f"{skipped} tests skipped\n" + report
    assert result.returncode == 0, report

    warnings = [line.strip() for line in output.splitlines() if "WARNING:" in line]
    if warnings:
        # Warnings are "SHOULD" deviations; they do not fail the suite but stay visible (-rP).
        print(f"litmus {suite}: {len(warnings)} warning(s):\n" + "\n".join(warnings))
