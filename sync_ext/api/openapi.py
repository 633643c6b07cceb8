"""The OpenAPI 3.1 document, generated from the route table.

Each route carries its operation object; this module adds the shared schemas,
the security schemes and the document's frame. Served at ``/api/v1/openapi.json``
without credentials. ``tests/sync_ext/test_openapi.py`` validates the document
and checks real answers of every operation against it.
"""

from __future__ import annotations

from typing import Any

from sync_ext.api.routing import Route

VERSION = "1.0.0"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": ref("Problem")}}}


def query(
    name: str, description: str, *, required: bool = False, schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "string"},
    }


PATH_PARAM = query("path", "File path in the account's home, e.g. /docs/report.pdf", required=True)

#: Answers every authenticated operation can give.
COMMON_PROBLEMS = {
    "400": problem("Bad request (a missing or malformed parameter)"),
    "401": problem("Missing or wrong credentials"),
    "403": problem("Credentials sent over plain HTTP from another host (use HTTPS)"),
    "429": problem("Too many failed logins; retry after Retry-After seconds"),
    "503": problem("Storage temporarily unavailable; retry after Retry-After seconds"),
}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; `type` is urn:davserver:problem:<slug>",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "current_rev": {
                "type": ["integer", "null"],
                "description": "stale-parent: the file's current revision (null: it is gone)",
            },
        },
    },
    "Metadata": {
        "type": "object",
        "required": ["path", "name", "is_dir", "size", "mtime", "rev", "content_sha256", "is_deleted"],
        "properties": {
            "path": {"type": "string"},
            "name": {"type": "string"},
            "is_dir": {"type": "boolean"},
            "size": {"type": "integer", "minimum": 0},
            "mtime": {"type": "number", "description": "seconds since the epoch"},
            "rev": {"type": ["integer", "null"], "description": "current revision (null for folders)"},
            "content_sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
            "etag": {"type": ["string", "null"]},
            "is_deleted": {"type": "boolean"},
            "deleted_at": {"type": ["number", "null"]},
        },
    },
    "Revision": {
        "type": "object",
        "required": ["rev", "size", "content_sha256", "mtime", "created_at", "pinned", "is_current"],
        "properties": {
            "rev": {"type": "integer"},
            "size": {"type": "integer", "minimum": 0},
            "content_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "mtime": {"type": "number"},
            "created_at": {"type": "number"},
            "device": {"type": ["string", "null"]},
            "pinned": {"type": "boolean"},
            "is_current": {"type": "boolean"},
        },
    },
    "RevisionList": {
        "type": "object",
        "required": ["path", "revisions", "has_more"],
        "properties": {
            "path": {"type": "string"},
            "revisions": {"type": "array", "items": ref("Revision")},
            "has_more": {"type": "boolean"},
        },
    },
    "ResumableSession": {
        "type": "object",
        "required": ["upload_id", "location"],
        "properties": {"upload_id": {"type": "string"}, "location": {"type": "string"}},
    },
    "DeleteRequest": {
        "type": "object",
        "required": ["path"],
        "properties": {
            "path": {"type": "string"},
            "rev": {
                "type": "integer",
                "minimum": 1,
                "description": "Delete the file only if it is still at this revision (ignored for folders)",
            },
        },
    },
    "FolderListing": {
        "type": "object",
        "required": ["entries", "cursor", "has_more", "next_after"],
        "properties": {
            "entries": {"type": "array", "items": ref("Metadata")},
            "cursor": {
                "type": "string",
                "description": (
                    "A change-feed cursor from before this page was read: keep the first page's and "
                    "replay /changes/list from it after the listing"
                ),
            },
            "has_more": {"type": "boolean"},
            "next_after": {
                "type": ["string", "null"],
                "description": "With has_more: the last entry's path, to pass as after for the next page",
            },
        },
    },
    "CreateFolderRequest": {
        "type": "object",
        "required": ["path"],
        "properties": {"path": {"type": "string"}, "mtime": {"type": "number"}},
    },
    "MoveRequest": {
        "type": "object",
        "required": ["from_path", "to_path"],
        "properties": {
            "from_path": {"type": "string"},
            "to_path": {"type": "string"},
            "rev": {
                "type": "integer",
                "minimum": 1,
                "description": "Move the file only if it is still at this revision (ignored for folders)",
            },
        },
    },
    "Account": {
        "type": "object",
        "required": ["name", "used_bytes", "quota_bytes"],
        "properties": {
            "name": {"type": "string"},
            "used_bytes": {
                "type": "integer",
                "minimum": 0,
                "description": "Every kept revision counts, in the trash too",
            },
            "quota_bytes": {"type": ["integer", "null"], "description": "null: no quota"},
        },
    },
    "TokenRequest": {
        "type": "object",
        "required": ["label"],
        "properties": {"label": {"type": "string", "minLength": 1, "maxLength": 100}},
    },
    "NewToken": {
        "type": "object",
        "required": ["id", "label", "token", "created_at"],
        "properties": {
            "id": {"type": "integer"},
            "label": {"type": "string"},
            "token": {"type": "string", "description": "The secret: a Bearer token or Basic password"},
            "created_at": {"type": "number"},
        },
    },
    "Token": {
        "type": "object",
        "required": ["id", "account", "label", "created_at", "last_used_at", "revoked"],
        "properties": {
            "id": {"type": "integer"},
            "account": {"type": "string"},
            "label": {"type": "string"},
            "created_at": {"type": "number"},
            "last_used_at": {"type": ["number", "null"], "description": "Recorded at most once a minute"},
            "revoked": {"type": "boolean"},
        },
    },
    "TokenList": {
        "type": "object",
        "required": ["tokens"],
        "properties": {"tokens": {"type": "array", "items": ref("Token")}},
    },
    "Deleted": {
        "allOf": [
            ref("Metadata"),
            {"type": "object", "required": ["trash_id"], "properties": {"trash_id": {"type": "integer"}}},
        ]
    },
    "TrashItem": {
        "type": "object",
        "required": ["id", "path", "is_dir", "size", "deleted_at"],
        "properties": {
            "id": {"type": "integer"},
            "path": {"type": "string"},
            "is_dir": {"type": "boolean"},
            "size": {"type": "integer", "minimum": 0},
            "deleted_at": {"type": "number"},
        },
    },
    "TrashList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": ref("TrashItem")}},
    },
    "TrashRestoreRequest": {
        "type": "object",
        "required": ["id"],
        "properties": {"id": {"type": "integer"}, "path": {"type": "string"}},
    },
    "PinRequest": {
        "type": "object",
        "required": ["path", "rev"],
        "properties": {"path": {"type": "string"}, "rev": {"type": "integer"}, "pinned": {"type": "boolean"}},
    },
    "RestoreRequest": {
        "type": "object",
        "required": ["path", "rev"],
        "properties": {"path": {"type": "string"}, "rev": {"type": "integer", "minimum": 1}},
    },
    "SyncConfig": {
        "type": "object",
        "required": ["chunker", "block_hash", "max_block_size", "max_file_size", "max_blocks_per_commit"],
        "properties": {
            "chunker": {
                "type": "object",
                "description": "Cut files with this (pyfastcdc FastCDC, this seed) to match the server",
                "required": ["algorithm", "implementation", "min_size", "avg_size", "max_size", "seed"],
                "properties": {
                    "algorithm": {"type": "string"},
                    "implementation": {"type": "string"},
                    "min_size": {"type": "integer"},
                    "avg_size": {"type": "integer"},
                    "max_size": {"type": "integer"},
                    "normalization": {"type": "integer"},
                    "seed": {"type": "integer", "description": "This account's gear-table seed"},
                },
            },
            "block_hash": {
                "enum": ["sha256"],
                "description": "Blocks are named by the SHA-256 of their plaintext",
            },
            "max_block_size": {"type": "integer"},
            "max_file_size": {"type": "integer"},
            "max_blocks_per_commit": {"type": "integer"},
        },
    },
    "HashList": {
        "type": "object",
        "required": ["hashes"],
        "properties": {"hashes": {"type": "array", "items": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}},
    },
    "MissingBlocks": {
        "type": "object",
        "required": ["missing"],
        "properties": {"missing": {"type": "array", "items": {"type": "string"}}},
    },
    "BlockStored": {
        "type": "object",
        "required": ["hash", "size", "created"],
        "properties": {
            "hash": {"type": "string"},
            "size": {"type": "integer"},
            "created": {"type": "boolean"},
        },
    },
    "CommitRequest": {
        "type": "object",
        "required": ["path", "size", "blocks", "parent_rev"],
        "properties": {
            "path": {"type": "string"},
            "size": {"type": "integer", "minimum": 0},
            "mtime": {"type": "number"},
            "parent_rev": {
                "type": ["integer", "null"],
                "description": "The revision edited; null: a new file",
            },
            "blocks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["hash", "size"],
                    "properties": {"hash": {"type": "string"}, "size": {"type": "integer", "minimum": 1}},
                },
            },
        },
    },
    "Manifest": {
        "allOf": [
            ref("Metadata"),
            {
                "type": "object",
                "required": ["blocks"],
                "properties": {
                    "blocks": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["hash", "size", "offset"],
                            "properties": {
                                "hash": {"type": "string"},
                                "size": {"type": "integer"},
                                "offset": {"type": "integer"},
                            },
                        },
                    }
                },
            },
        ]
    },
    "Cursor": {
        "type": "object",
        "required": ["cursor"],
        "properties": {"cursor": {"type": "string", "description": "Opaque; pass it back as is"}},
    },
    "ChangeEntry": {
        "type": "object",
        "description": (
            "One change. A folder delete or move is one entry for the folder (its subtree follows it); "
            "in a scoped feed a move across the scope's border is a create or a delete, and a folder "
            "arriving that way is one create (list it to learn its contents)."
        ),
        "required": ["op", "path", "node_id", "kind", "at"],
        "properties": {
            "op": {"enum": ["create", "modify", "delete", "move"]},
            "path": {"type": "string"},
            "old_path": {"type": "string", "description": "Moves: where it was"},
            "node_id": {"type": "integer"},
            "kind": {"enum": ["file", "folder"]},
            "rev": {"type": ["integer", "null"], "description": "Files (not deletes): the current revision"},
            "size": {"type": ["integer", "null"], "minimum": 0},
            "content_sha256": {
                "type": ["string", "null"],
                "description": "Files: SHA-256 of that revision's content (null once thinned by retention)",
            },
            "mtime": {"type": "number"},
            "at": {"type": "number", "description": "Commit time, seconds since the epoch"},
        },
    },
    "ChangeList": {
        "type": "object",
        "required": ["entries", "cursor", "has_more"],
        "properties": {
            "entries": {"type": "array", "items": ref("ChangeEntry")},
            "cursor": {"type": "string"},
            "has_more": {"type": "boolean", "description": "Call list again with the new cursor at once"},
        },
    },
    "LongpollResult": {
        "type": "object",
        "required": ["changes"],
        "properties": {
            "changes": {"type": "boolean"},
            "backoff": {"type": "integer", "description": "Seconds to wait before the next long-poll"},
        },
    },
}


def document(routes: list[Route], prefix: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op = dict(route.operation)
        if route.public:
            op["security"] = []
        else:
            op["responses"] = {**COMMON_PROBLEMS, **op["responses"]}
        paths.setdefault(prefix + route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "davserver extension API",
            "version": VERSION,
            "description": "Smart-client API beside WebDAV: revisions, restore, download, upload.",
        },
        "servers": [{"url": "/"}],
        "security": [{"basic": []}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic", "description": "password or device token"},
                "bearer": {"type": "http", "scheme": "bearer", "description": "device token"},
            },
        },
    }
