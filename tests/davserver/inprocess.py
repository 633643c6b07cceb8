"""What the in-process tests of the WebDAV face share (httpx's WSGI transport, no socket)."""

from __future__ import annotations

from typing import Any

import httpx

LOCKINFO = (
    '<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
    "<D:locktype><D:write/></D:locktype></D:lockinfo>"
)


def wsgi_client(app: Any, user: str = "alice", password: str = "alice-password") -> httpx.Client:
    """A client of ``app`` in this process, with Basic credentials."""
    return httpx.Client(
        transport=httpx.WSGITransport(app=app), base_url="http://127.0.0.1", auth=(user, password)
    )
