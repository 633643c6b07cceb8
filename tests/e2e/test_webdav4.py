"""The webdav4 Python client (as fsspec users meet it) against a real server.

webdav4 parses PROPFIND answers strictly (sizes, dates, resource types) and
builds Destination URLs itself, so it catches listing and COPY/MOVE mistakes
that a hand-written httpx request would paper over.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from webdav4.client import Client, ResourceAlreadyExists, ResourceNotFound
from webdav4.http import Client as HTTPClient

from tests.e2e.harness import DavServer

SIZES = {"zero.bin": 0, "one.bin": 1, "mib3.bin": (1 << 20) + 3, "five.bin": 5 << 20}


@pytest.fixture
def dav(dav_server: DavServer, request: pytest.FixtureRequest) -> Iterator[Client]:
    """A webdav4 client rooted at a fresh folder of alice's home, closed afterwards (no leaked sockets)."""
    folder = "w4-" + request.node.name
    with dav_server.client("alice") as c:
        r = c.request("MKCOL", f"/dav/{folder}/")
        assert r.status_code == 201, r.text
    base = f"{dav_server.dav_url}/{folder}"
    with HTTPClient(base_url=base, auth=("alice", dav_server.accounts["alice"]), timeout=60.0) as http:
        yield Client(base_url=base, http_client=http)


def _payloads() -> dict[str, bytes]:
    return {name: os.urandom(size) for name, size in SIZES.items()}


def _upload_all(dav: Client, folder: str, payloads: dict[str, bytes]) -> None:
    dav.mkdir(folder)
    for name, data in payloads.items():
        dav.upload_fileobj(io.BytesIO(data), f"{folder}/{name}")


def _download(dav: Client, path: str) -> bytes:
    buf = io.BytesIO()
    dav.download_fileobj(path, buf)
    return buf.getvalue()


def test_upload_list_download(dav: Client) -> None:
    payloads = _payloads()
    before = time.time()
    _upload_all(dav, "data", payloads)

    listing = {entry["name"]: entry for entry in dav.ls("data", detail=True)}
    assert set(listing) == {f"data/{n}" for n in payloads}, listing
    for name, data in payloads.items():
        entry = listing[f"data/{name}"]
        assert entry["type"] == "file", entry
        assert entry["content_length"] == len(data), entry
        # getlastmodified has one-second resolution: allow for truncation and a slow upload.
        modified = entry["modified"]
        assert modified is not None and modified.tzinfo is not None, entry
        assert before - 2 <= modified.timestamp() <= time.time() + 2, (modified, before)
        assert _download(dav, f"data/{name}") == data, name

    assert dav.isdir("data")
    assert dav.isfile("data/one.bin")
    assert dav.content_length("data/mib3.bin") == (1 << 20) + 3


def test_chunked_upload(dav: Client) -> None:
    """A stream of unknown length goes up with Transfer-Encoding: chunked."""
    data = os.urandom((2 << 20) + 11)

    class Unsized(io.RawIOBase):
        """Hides the length so webdav4 cannot send Content-Length."""

        def __init__(self) -> None:
            self._src = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            chunk = self._src.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    dav.upload_fileobj(Unsized(), "streamed.bin")
    assert dav.content_length("streamed.bin") == len(data)
    assert _download(dav, "streamed.bin") == data


def test_mtime_from_client(dav: Client, dav_server: DavServer) -> None:
    """Sync clients set mtimes: X-OC-Mtime on PUT, or PROPPATCH of getlastmodified."""
    dav.upload_fileobj(io.BytesIO(b"dated"), "oc.txt", headers={"X-OC-Mtime": "1500000000"})
    assert dav.modified("oc.txt") == datetime.fromtimestamp(1500000000, UTC)

    dav.upload_fileobj(io.BytesIO(b"patched"), "pp.txt")
    when = datetime(2011, 3, 4, 5, 6, 7, tzinfo=UTC)
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop>'
        f"<D:getlastmodified>{format_datetime(when, usegmt=True)}</D:getlastmodified>"
        "</D:prop></D:set></D:propertyupdate>"
    )
    folder = str(dav.base_url.path).rstrip("/")
    with dav_server.client("alice") as c:
        r = c.request(
            "PROPPATCH", f"{folder}/pp.txt", content=body, headers={"Content-Type": "application/xml"}
        )
    assert r.status_code == 207, r.text
    assert "200 OK" in r.text, r.text
    assert dav.modified("pp.txt") == when


def test_move_copy_remove_exists(dav: Client) -> None:
    payloads = _payloads()
    _upload_all(dav, "src", payloads)

    dav.copy("src/five.bin", "five-copy.bin")
    assert dav.exists("src/five.bin") and dav.exists("five-copy.bin")
    assert _download(dav, "five-copy.bin") == payloads["five.bin"]

    dav.move("src/one.bin", "moved.bin")
    assert not dav.exists("src/one.bin")
    assert _download(dav, "moved.bin") == payloads["one.bin"]

    # Without overwrite the destination must survive; with it, it is replaced.
    with pytest.raises(ResourceAlreadyExists):
        dav.copy("src/zero.bin", "moved.bin")
    assert _download(dav, "moved.bin") == payloads["one.bin"]
    dav.copy("src/zero.bin", "moved.bin", overwrite=True)
    assert _download(dav, "moved.bin") == b""

    # Whole collections.
    dav.copy("src", "src-copy")
    assert sorted(e["name"] for e in dav.ls("src-copy", detail=True)) == sorted(
        f"src-copy/{n}" for n in payloads if n != "one.bin"
    )
    assert _download(dav, "src-copy/mib3.bin") == payloads["mib3.bin"]
    dav.move("src-copy", "renamed")
    assert not dav.exists("src-copy")
    assert dav.isdir("renamed")
    assert _download(dav, "renamed/five.bin") == payloads["five.bin"]

    dav.remove("renamed")
    dav.remove("moved.bin")
    assert not dav.exists("renamed")
    assert not dav.exists("renamed/five.bin")
    assert not dav.exists("moved.bin")
    assert dav.exists("src/mib3.bin")
    with pytest.raises(ResourceNotFound):
        dav.remove("moved.bin")
