"""A real davserver process on a real port, for end-to-end tests.

The server runs as ``python -m davserver.cli serve`` in a child process (so
tests can SIGKILL it mid-request); accounts are created beforehand through the
storage facade with cheap argon2 parameters.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from davserver import config as config_mod
from storage.engine import Engine
from storage.keys import MasterKey
from tests.storage.conftest import WEAK_HASHING

_READY = re.compile(r"serving (https?://\S+)/dav/")


@dataclass
class DavServer:
    data_dir: Path
    settings: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)
    url: str = ""
    proc: subprocess.Popen[str] | None = None
    _stderr: list[str] = field(default_factory=list)
    _pump_thread: threading.Thread | None = None

    # -- set-up ----------------------------------------------------------------------

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{k} = {_toml(v)}" for k, v in self.settings.items()]
        (self.data_dir / config_mod.CONFIG_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
        key = self.data_dir / config_mod.MASTER_KEY_NAME
        if not key.exists():
            MasterKey.generate().save(key)

    def engine(self) -> Engine:
        cfg = config_mod.load(data_dir=self.data_dir, env=self._env())
        return Engine.open(cfg.storage_config(password_hashing=WEAK_HASHING, auto_migrate=True))

    def add_account(self, name: str, password: str, quota: int | None = None) -> None:
        engine = self.engine()
        try:
            engine.accounts.create(name, password, quota)
        finally:
            engine.close()
        self.accounts[name] = password

    # -- process ---------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAVSERVER_")}
        env.update(self.env)
        return env

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._stderr = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "davserver.cli", "serve", "--data-dir", str(self.data_dir), "--port", "0"],
            env=self._env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        found: queue.Queue[str] = queue.Queue()
        self._pump_thread = threading.Thread(target=self._pump, args=(self.proc, found), daemon=True)
        self._pump_thread.start()
        try:
            self.url = found.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise RuntimeError("davserver did not start:\n" + "".join(self._stderr)) from None

    def _pump(self, proc: subprocess.Popen[str], found: queue.Queue[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self._stderr.append(line)
            m = _READY.search(line)
            if m:
                found.put(m.group(1))

    @property
    def log(self) -> str:
        return "".join(self._stderr)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reap()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reap()

    def _reap(self) -> None:
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=10)
            self._pump_thread = None
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- clients ---------------------------------------------------------------------

    @property
    def dav_url(self) -> str:
        return self.url + "/dav"

    def client(self, account: str | None = None, **kw: Any) -> httpx.Client:
        name = account or next(iter(self.accounts))
        kw.setdefault("timeout", 60.0)
        return httpx.Client(base_url=self.url, auth=(name, self.accounts[name]), **kw)

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False


D = "{DAV:}"


def propfind(c: httpx.Client, path: str, depth: str = "1", body: str | None = None) -> ET.Element:
    r = c.request("PROPFIND", path, headers={"Depth": depth}, content=body)
    assert r.status_code == 207, r.text
    return ET.fromstring(r.content)


def member_names(tree: ET.Element, folder: str) -> set[str]:
    """The names of the members a Depth 1 PROPFIND of ``folder`` (a /dav/ path) listed."""
    hrefs = (unquote(h.text or "").rstrip("/") for h in tree.iter(f"{D}href"))
    return {h.rsplit("/", 1)[1] for h in hrefs if h != folder.rstrip("/")}


def lock_tokens(tree: ET.Element) -> list[str]:
    """The tokens of the active locks a PROPFIND reported (lockdiscovery)."""
    return [href.text or "" for token in tree.iter(f"{D}locktoken") for href in token.iter(f"{D}href")]


def require_tool(name: str, package: str | None = None, *, where: Sequence[str] = ()) -> str:
    """The path of a client binary; missing is a failure under CI and a skip elsewhere.

    ``where``: folders to look in besides PATH (/usr/sbin, /usr/libexec).
    """
    found = shutil.which(name) or next(
        (str(Path(d) / name) for d in where if os.access(Path(d) / name, os.X_OK)), None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (apt-get install {package or name})")
        pytest.skip(f"{name} is not installed")
    return found


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
