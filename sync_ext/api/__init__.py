"""The extension API at ``/api/v1``: JSON, problem+json errors, an OpenAPI document.

:func:`create_api` builds the WSGI app from an engine; the composition root
(``davserver.app``) mounts it behind the authenticator, which puts the account
id in the environ under ``account_key``.
"""

from __future__ import annotations

from typing import Any

from storage.engine import Engine
from sync_ext.api import files
from sync_ext.api.openapi import PATH_PARAM, document, json_body, problem, query, ref
from sync_ext.api.routing import Api, Request, Response, Route

PREFIX = "/api/v1"


def create_api(engine: Engine, *, account_key: str) -> Api:
    served: dict[str, Any] = {}

    def openapi(req: Request) -> Response:
        return Response.json(200, served["document"])

    operation = {
        "operationId": "openapi",
        "summary": "This document",
        "responses": {"200": {"description": "The OpenAPI document", "content": {"application/json": {}}}},
    }
    routes = [*_routes(), Route("GET", "/openapi.json", openapi, operation, public=True)]
    served["document"] = document(routes, PREFIX)
    return Api(engine, routes, prefix=PREFIX, account_key=account_key)


def _routes() -> list[Route]:
    rev_param = query(
        "rev", "A revision id (default: the current one)", schema={"type": "integer", "minimum": 1}
    )
    binary: dict[str, Any] = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return [
        Route(
            "GET",
            "/files/metadata",
            files.metadata,
            {
                "operationId": "files_metadata",
                "summary": "A file's or folder's metadata (also for a file in the trash)",
                "parameters": [PATH_PARAM],
                "responses": {
                    "200": json_body(ref("Metadata"), "The metadata"),
                    "404": problem("No such file, folder or trashed file"),
                },
            },
        ),
        Route(
            "GET",
            "/files/list_revisions",
            files.list_revisions,
            {
                "operationId": "files_list_revisions",
                "summary": "A file's revisions, newest first (also for a file in the trash)",
                "parameters": [
                    PATH_PARAM,
                    query(
                        "limit",
                        "At most this many (default 100, up to 1000)",
                        schema={"type": "integer", "minimum": 1},
                    ),
                    query(
                        "before_rev",
                        "Only revisions older than this one",
                        schema={"type": "integer", "minimum": 0},
                    ),
                ],
                "responses": {
                    "200": json_body(ref("RevisionList"), "One page of revisions"),
                    "404": problem("No such file"),
                    "409": problem("The path is a folder"),
                },
            },
        ),
        Route(
            "POST",
            "/files/restore",
            files.restore,
            {
                "operationId": "files_restore",
                "summary": "Make a revision current again, as a new revision (brings a trashed file back)",
                "requestBody": json_body(ref("RestoreRequest"), "The file and the revision"),
                "responses": {
                    "200": json_body(ref("Metadata"), "The file, at its new revision"),
                    "404": problem("No such file or revision"),
                    "409": problem("The parent folder is gone, or the path is a folder"),
                    "415": problem("The body is not JSON"),
                    "507": problem("Over quota"),
                },
            },
        ),
        Route(
            "GET",
            "/files/download",
            files.download,
            {
                "operationId": "files_download",
                "summary": "The content of the current or a given revision (single byte ranges supported)",
                "parameters": [
                    PATH_PARAM,
                    rev_param,
                    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "The whole content", "content": binary},
                    "206": {"description": "The requested range", "content": binary},
                    "304": {"description": "If-None-Match matched the ETag"},
                    "404": problem("No such file or revision"),
                    "409": problem("The path is a folder"),
                    "416": problem("The range selects nothing of the file"),
                },
            },
        ),
        Route(
            "POST",
            "/files/upload",
            files.upload,
            {
                "operationId": "files_upload",
                "summary": "Store the request body as the file's new content (uploadType=media)",
                "parameters": [
                    PATH_PARAM,
                    query("uploadType", "media", required=True, schema={"enum": ["media"]}),
                    query("mtime", "Modification time, seconds since the epoch", schema={"type": "number"}),
                    {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "requestBody": {"required": True, "content": binary},
                "responses": {
                    "200": json_body(ref("Metadata"), "A new revision of an existing file"),
                    "201": json_body(ref("Metadata"), "A new file"),
                    "409": problem("The parent folder does not exist, or the path is a folder"),
                    "412": problem("If-Match did not hold"),
                    "413": problem("Over the per-file limit"),
                    "507": problem("Over quota"),
                },
            },
        ),
    ]
