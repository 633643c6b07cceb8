"""The extension API at ``/api/v1``: JSON, problem+json errors, an OpenAPI document.

:func:`create_api` builds the WSGI app from an engine; the composition root
(``davserver.app``) mounts it behind the authenticator, which puts the account
id in the environ under ``account_key``.
"""

from __future__ import annotations

from typing import Any

from storage.engine import Engine
from sync_ext.api import routes as declared
from sync_ext.api import tus
from sync_ext.api.account import Tokens
from sync_ext.api.changes import Longpoll, LongpollSettings
from sync_ext.api.openapi import document
from sync_ext.api.routing import PREFIX, Api, LockCheck, Request, Response, Route

__all__ = ["PREFIX", "create_api"]


def create_api(
    engine: Engine,
    *,
    account_key: str,
    longpoll: LongpollSettings | None = None,
    lock_check: LockCheck | None = None,
) -> Api:
    """The API over ``engine``; the authenticated account's id is read from ``environ[account_key]``.

    ``lock_check``: the WebDAV locks writes must respect (None: no WebDAV face, no locks).
    """
    served: dict[str, Any] = {}

    def openapi(req: Request) -> Response:
        return Response.json(200, served["document"])

    operation = {
        "operationId": "openapi",
        "summary": "This document",
        "responses": {"200": {"description": "The OpenAPI document", "content": {"application/json": {}}}},
    }
    routes = [
        *declared.files(),
        *declared.tree(),
        *declared.tus(tus.make_handlers(PREFIX, engine.config.max_file_size)),
        *declared.trash(),
        *declared.blocks(),
        *declared.changes(Longpoll(engine.notifications, longpoll or LongpollSettings())),
        *declared.account(Tokens(engine.accounts)),
        Route("GET", "/openapi.json", openapi, operation, public=True),
    ]
    served["document"] = document(routes, PREFIX)
    return Api(engine, routes, prefix=PREFIX, account_key=account_key, lock_check=lock_check)
