"""Provider resources used directly, for orderings HTTP tests cannot pin down."""

from __future__ import annotations

import io

import pytest
from wsgidav.dav_error import DAVError

from davserver.dav.provider import ACCOUNT_KEY, VolumeProvider
from tests.storage.conftest import EngineFactory


def test_get_serves_the_version_whose_headers_were_sent(make_engine: EngineFactory) -> None:
    """A PUT committing between WsgiDAV's headers and the body must not change the body."""
    engine = make_engine()
    engine.accounts.create("alice", "alice-password")
    vol = engine.volume("alice")
    vol.write("f", io.BytesIO(b"version one"))
    provider = VolumeProvider(engine)
    environ = {ACCOUNT_KEY: engine.accounts.context_by_name("alice").id, "wsgidav.provider": provider}
    res = provider.get_resource_inst("/f", environ)
    assert res is not None and res.get_content_length() == len(b"version one")
    vol.write("f", io.BytesIO(b"the second version, longer"))
    body = res.get_content()
    try:
        assert body.read(-1) == b"version one"
    finally:
        body.close()


def test_mkcol_that_loses_a_race_is_405(make_engine: EngineFactory) -> None:
    """WsgiDAV checks that the name is free, then creates; another MKCOL in between wins."""
    engine = make_engine()
    engine.accounts.create("alice", "alice-password")
    provider = VolumeProvider(engine)
    environ = {ACCOUNT_KEY: engine.accounts.context_by_name("alice").id, "wsgidav.provider": provider}
    root = provider.get_resource_inst("/", environ)
    assert root is not None and provider.get_resource_inst("/d", environ) is None
    engine.volume("alice").mkdir("d")  # the other request
    with pytest.raises(DAVError) as caught:
        root.create_collection("d")
    assert caught.value.value == 405
