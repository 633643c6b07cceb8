"""Header validation the WebDAV face adds in front of WsgiDAV's lenient parsers."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from davserver.dav.provider import valid_if_header, valid_range
from davserver.wsgi import http_date


@pytest.mark.parametrize(
    "header",
    [
        "(<opaquelocktoken:abc>)",
        '(<urn:uuid:1> ["etag"])',
        "(Not <DAV:no-lock>)",
        '<http://x/a> (<opaquelocktoken:1>) (["e"])',
        "(<a>) (<b>)",
        '([W/"x"])',
        "(<opaquelocktoken:abc>)  ",
        "(opaquelocktoken:abc)",  # Windows, without the angle brackets
        '<http://x/a> (urn:uuid:1 ["e"])',
    ],
)
def test_well_formed_if_headers(header: str) -> None:
    assert valid_if_header(header)


@pytest.mark.parametrize(
    "header",
    [
        "((((garbage",
        "(",
        "()",
        "(Not)",
        "garbage",
        "(<a>",
        "<http://x/a>",
        "(<a>)junk",
        "(Not Not <a>)",
        "opaquelocktoken:abc",
        "(opaque locktoken)",
    ],
)
def test_malformed_if_headers(header: str) -> None:
    assert not valid_if_header(header)


@pytest.mark.parametrize("header", ["bytes=0-0", "bytes=-5", "bytes=5-", "bytes=0-1, 4-5", "BYTES = 1-2"])
def test_valid_ranges(header: str) -> None:
    assert valid_range(header)


@pytest.mark.parametrize("header", ["bytes=9-3", "items=0-1", "bytes=abc", "bytes=", "bytes=1-2-3"])
def test_invalid_ranges_are_ignored(header: str) -> None:
    assert not valid_range(header)


@pytest.mark.parametrize("secs", [0, 86399.9, 1_500_000_000, 1_700_000_000.5, 4_102_444_800, -1.5])
def test_http_date_matches_the_standard_library(secs: float) -> None:
    assert http_date(secs) == formatdate(secs, usegmt=True)
