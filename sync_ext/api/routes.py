"""The API's routes and their OpenAPI operations, declared side by side (one list per area)."""

from __future__ import annotations

from typing import Any

from sync_ext.api import account as account_api
from sync_ext.api import blocks as blocks_api
from sync_ext.api import changes as changes_api
from sync_ext.api import files as files_api
from sync_ext.api import trash as trash_api
from sync_ext.api import tree as tree_api
from sync_ext.api.openapi import PATH_PARAM, json_body, problem, query, ref
from sync_ext.api.routing import Handler, Route

#: What a write answers when a WebDAV client has the path locked (routing.LockCheck).
LOCKED = problem("A WebDAV client holds a lock on the path (problem type locked); retry later")


def files() -> list[Route]:
    rev_param = query(
        "rev", "A revision id (default: the current one)", schema={"type": "integer", "minimum": 1}
    )
    binary: dict[str, Any] = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return [
        Route(
            "GET",
            "/files/metadata",
            files_api.metadata,
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
            files_api.list_revisions,
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
            files_api.restore,
            {
                "operationId": "files_restore",
                "summary": "Make a revision current again, as a new revision (brings a trashed file back)",
                "requestBody": json_body(ref("RestoreRequest"), "The file and the revision"),
                "responses": {
                    "200": json_body(ref("Metadata"), "The file, at its new revision"),
                    "404": problem("No such file or revision"),
                    "409": problem("The parent folder is gone, or the path is a folder"),
                    "415": problem("The body is not JSON"),
                    "423": LOCKED,
                    "507": problem("Over quota"),
                },
            },
        ),
        Route(
            "POST",
            "/files/pin_revision",
            files_api.pin_revision,
            {
                "operationId": "files_pin_revision",
                "summary": "Pin a revision so retention never removes it (pinned: false unpins)",
                "requestBody": json_body(ref("PinRequest"), "The file, the revision, pinned or not"),
                "responses": {
                    "200": json_body(ref("Revision"), "The revision"),
                    "404": problem("No such file or revision"),
                    "415": problem("The body is not JSON"),
                },
            },
        ),
        Route(
            "GET",
            "/files/download",
            files_api.download,
            {
                "operationId": "files_download",
                "summary": "The current or a given revision (also of a trashed file); single byte ranges",
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
            files_api.upload,
            {
                "operationId": "files_upload",
                "summary": "media: store the body as the file's content; resumable: start a session",
                "parameters": [
                    PATH_PARAM,
                    query(
                        "uploadType",
                        "media or resumable",
                        required=True,
                        schema={"enum": ["media", "resumable"]},
                    ),
                    query("mtime", "Modification time, seconds since the epoch", schema={"type": "number"}),
                    {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}},
                    {
                        "name": "X-Upload-Content-Length",
                        "in": "header",
                        "required": False,
                        "description": "resumable: the total size, when known",
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {"required": False, "content": binary},
                "responses": {
                    "200": json_body(
                        {"oneOf": [ref("Metadata"), ref("ResumableSession")]},
                        "media: a new revision; resumable: the session (its URL also in Location)",
                    ),
                    "201": json_body(ref("Metadata"), "A new file"),
                    "409": problem("The parent folder does not exist, or the path is a folder"),
                    "412": problem("If-Match did not hold"),
                    "413": problem("Over the per-file limit"),
                    "423": LOCKED,
                    "507": problem("Over quota"),
                },
            },
        ),
        Route(
            "PUT",
            "/files/upload",
            files_api.resume,
            {
                "operationId": "files_upload_resume",
                "summary": "Send a piece of a resumable upload, or ask for its state",
                "parameters": [
                    query("upload_id", "The session (from the Location of the POST)", required=True),
                    {
                        "name": "Content-Range",
                        "in": "header",
                        "required": False,
                        "description": "bytes a-b/total (total may be *); bytes */total asks the state",
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {"required": False, "content": binary},
                "responses": {
                    "200": json_body(ref("Metadata"), "Complete: a new revision of an existing file"),
                    "201": json_body(ref("Metadata"), "Complete: a new file"),
                    "308": {
                        "description": "Incomplete; Range: bytes=0-N is what the server holds (none: nothing)"
                    },
                    "404": problem("No such session (or it expired)"),
                    "409": problem("The target's folder disappeared, or the path became a folder"),
                    "412": problem("If-Match no longer holds"),
                    "413": problem("More data than the declared total"),
                    "423": LOCKED,
                    "507": problem("Over quota"),
                },
            },
        ),
    ]


def tus(h: dict[str, Any]) -> list[Route]:
    def header(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
        return {
            "name": name,
            "in": "header",
            "required": required,
            "description": description,
            "schema": {"type": "string"},
        }

    resumable = header("Tus-Resumable", "1.0.0", required=True)
    upload_id = {"name": "upload_id", "in": "path", "required": True, "schema": {"type": "string"}}
    chunk: dict[str, Any] = {
        "application/offset+octet-stream": {"schema": {"type": "string", "format": "binary"}}
    }
    tus_problems = {
        "404": problem("No such upload (or it expired)"),
        "412": problem("Unsupported Tus-Resumable version"),
    }
    return [
        Route(
            "OPTIONS",
            "/uploads/",
            h["options"],
            {
                "operationId": "tus_options",
                "summary": "tus capabilities (Tus-Version, Tus-Extension, Tus-Max-Size, ...)",
                "responses": {"204": {"description": "Capabilities in the headers"}},
            },
        ),
        Route(
            "POST",
            "/uploads/",
            h["create"],
            {
                "operationId": "tus_create",
                "summary": "Create an upload: creation, creation-with-upload, defer-length, concatenation",
                "parameters": [
                    resumable,
                    header("Upload-Length", "Total size in bytes"),
                    header("Upload-Defer-Length", "1 when the size is not known yet"),
                    header("Upload-Metadata", "base64 pairs: path (or filename), mtime"),
                    header("Upload-Concat", "partial, or final;<upload URLs>"),
                    header("Upload-Checksum", "with a body: '<sha1|sha256|md5> <base64>'"),
                ],
                "requestBody": {"required": False, "content": chunk},
                "responses": {
                    "201": {"description": "Created; Location is the upload's URL"},
                    **tus_problems,
                    "409": problem("The target's folder does not exist, or a partial upload is unfinished"),
                    "413": problem("Upload-Length over Tus-Max-Size"),
                    "415": problem("A body that is not application/offset+octet-stream"),
                    "423": LOCKED,
                    "460": problem("The body does not match Upload-Checksum"),
                    "507": problem("Over quota"),
                },
            },
        ),
        Route(
            "HEAD",
            "/uploads/{upload_id}",
            h["head"],
            {
                "operationId": "tus_head",
                "summary": "The upload's offset (Upload-Offset) and length",
                "parameters": [resumable, upload_id],
                "responses": {"200": {"description": "State in the headers"}, **tus_problems},
            },
        ),
        Route(
            "PATCH",
            "/uploads/{upload_id}",
            h["patch"],
            {
                "operationId": "tus_patch",
                "summary": "Append data at Upload-Offset",
                "parameters": [
                    resumable,
                    upload_id,
                    header("Upload-Offset", "Where this data starts", required=True),
                    header("Upload-Length", "The total size, if it was deferred"),
                    header("Upload-Checksum", "'<sha1|sha256|md5> <base64>' of this body"),
                ],
                "requestBody": {"required": True, "content": chunk},
                "responses": {
                    "204": {"description": "Appended; Upload-Offset is the new offset"},
                    **tus_problems,
                    "403": problem("A final (concatenated) upload takes no data"),
                    "409": problem("Upload-Offset is not the upload's offset"),
                    "413": problem("More data than Upload-Length"),
                    "415": problem("The body is not application/offset+octet-stream"),
                    "423": LOCKED,
                    "460": problem("The body does not match Upload-Checksum; it was discarded"),
                    "507": problem("Over quota"),
                },
            },
        ),
        Route(
            "DELETE",
            "/uploads/{upload_id}",
            h["terminate"],
            {
                "operationId": "tus_terminate",
                "summary": "Terminate the upload (tus termination)",
                "parameters": [resumable, upload_id],
                "responses": {"204": {"description": "Terminated"}, **tus_problems},
            },
        ),
    ]


def trash() -> list[Route]:
    item_id = {"name": "item_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    return [
        Route(
            "POST",
            "/files/delete",
            trash_api.delete,
            {
                "operationId": "files_delete",
                "summary": "Move a file or folder to the trash (with rev: a file only at that revision)",
                "requestBody": json_body(ref("DeleteRequest"), "What to delete"),
                "responses": {
                    "200": json_body(ref("Deleted"), "The trashed file or folder, with its trash item id"),
                    "404": problem("No such file or folder"),
                    "409": problem(
                        "The root folder cannot be deleted, or the file is not at rev "
                        "(type stale-parent; current_rev says what is; nothing was deleted)"
                    ),
                    "415": problem("The body is not JSON"),
                    "423": LOCKED,
                },
            },
        ),
        Route(
            "GET",
            "/trash",
            trash_api.listing,
            {
                "operationId": "trash_list",
                "summary": "What was deleted, most recent first",
                "parameters": [
                    query("limit", "At most this many (up to 1000)", schema={"type": "integer", "minimum": 1})
                ],
                "responses": {"200": json_body(ref("TrashList"), "The trash")},
            },
        ),
        Route(
            "POST",
            "/trash/restore",
            trash_api.restore,
            {
                "operationId": "trash_restore",
                "summary": "Restore a trash item to where it was, or to 'path'; never over an existing file",
                "requestBody": json_body(ref("TrashRestoreRequest"), "The item and, optionally, where to"),
                "responses": {
                    "200": json_body(ref("Metadata"), "The restored file or folder"),
                    "404": problem("No such trash item"),
                    "409": problem("Something exists at the target, or its folder does not"),
                    "415": problem("The body is not JSON"),
                    "423": LOCKED,
                    "507": problem("Over quota"),
                },
            },
        ),
        Route(
            "DELETE",
            "/trash/{item_id}",
            trash_api.purge,
            {
                "operationId": "trash_purge",
                "summary": "Delete a trash item for good",
                "parameters": [item_id],
                "responses": {"204": {"description": "Purged"}, "404": problem("No such trash item")},
            },
        ),
    ]


def changes(longpoll: Handler) -> list[Route]:
    cursor = query("cursor", "A cursor from latest_cursor or list", required=True)
    reset = problem("The cursor is older than the kept history (type cursor-reset): list everything again")
    return [
        Route(
            "GET",
            "/changes/latest_cursor",
            changes_api.latest_cursor,
            {
                "operationId": "changes_latest_cursor",
                "summary": "A cursor at the current state, optionally scoped to a folder (recursive)",
                "parameters": [query("path", "Only changes at or below this folder (default: everything)")],
                "responses": {
                    "200": json_body(ref("Cursor"), "The cursor"),
                    "404": problem("No such folder"),
                    "409": problem("The path is a file"),
                },
            },
        ),
        Route(
            "GET",
            "/changes/list",
            changes_api.list_changes,
            {
                "operationId": "changes_list",
                "summary": "Changes after the cursor, in commit order, and the cursor to continue from",
                "parameters": [
                    cursor,
                    query(
                        "limit",
                        "At most this many entries (default 500, up to 2000)",
                        schema={"type": "integer", "minimum": 1},
                    ),
                ],
                "responses": {"200": json_body(ref("ChangeList"), "One page of changes"), "410": reset},
            },
        ),
        Route(
            "GET",
            "/changes/longpoll",
            longpoll,
            {
                "operationId": "changes_longpoll",
                "summary": "Wait until something changes after the cursor (then call list), or the timeout",
                "parameters": [
                    cursor,
                    query(
                        "timeout",
                        "Seconds to wait, 30 to 480 (default 30); up to a quarter more is added as jitter",
                        schema={"type": "integer", "minimum": 30, "maximum": 480},
                    ),
                ],
                "responses": {
                    "200": json_body(ref("LongpollResult"), "Whether there are changes"),
                    "410": reset,
                },
            },
        ),
    ]


def blocks() -> list[Route]:
    sha = {
        "name": "sha256",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    }
    binary: dict[str, Any] = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return [
        Route(
            "GET",
            "/config",
            blocks_api.config,
            {
                "operationId": "config",
                "summary": "How to cut files like the server (chunker and this account's seed), and limits",
                "responses": {"200": json_body(ref("SyncConfig"), "The configuration")},
            },
        ),
        Route(
            "POST",
            "/blocks/missing",
            blocks_api.missing,
            {
                "operationId": "blocks_missing",
                "summary": "Which of these block hashes the account does not have",
                "requestBody": json_body(ref("HashList"), "Up to 10,000 SHA-256 hashes (hex)"),
                "responses": {
                    "200": json_body(ref("MissingBlocks"), "The missing ones, in the order asked"),
                    "415": problem("The body is not JSON"),
                },
            },
        ),
        Route(
            "PUT",
            "/blocks/{sha256}",
            blocks_api.put_block,
            {
                "operationId": "blocks_put",
                "summary": "Upload one block (checked against its name, compressed, encrypted); idempotent",
                "parameters": [sha],
                "requestBody": {"description": "The block's plaintext", "content": binary, "required": True},
                "responses": {
                    "201": json_body(ref("BlockStored"), "Stored"),
                    "200": json_body(ref("BlockStored"), "The account had it already"),
                    "413": problem("Larger than the chunker's maximum block"),
                },
            },
        ),
        Route(
            "GET",
            "/blocks/{sha256}",
            blocks_api.get_block,
            {
                "operationId": "blocks_get",
                "summary": "One block's plaintext",
                "parameters": [sha],
                "responses": {
                    "200": {"description": "The block", "content": binary},
                    "404": problem("The account has no such block"),
                },
            },
        ),
        Route(
            "POST",
            "/files/commit",
            blocks_api.commit,
            {
                "operationId": "files_commit",
                "summary": "Make an ordered list of uploaded blocks a file's new revision",
                "requestBody": json_body(ref("CommitRequest"), "The file as a block list"),
                "responses": {
                    "201": json_body(ref("Metadata"), "A new file"),
                    "200": json_body(ref("Metadata"), "A new revision of the file"),
                    "409": problem(
                        "parent_rev no longer holds (type stale-parent; current_rev says what is)"
                    ),
                    "413": problem("Larger than the file size limit"),
                    "415": problem("The body is not JSON"),
                    "423": LOCKED,
                    "507": problem("Over quota"),
                },
            },
        ),
        Route(
            "GET",
            "/files/manifest",
            blocks_api.manifest,
            {
                "operationId": "files_manifest",
                "summary": "A file's (or one revision's) ordered block list",
                "parameters": [
                    PATH_PARAM,
                    query(
                        "rev",
                        "A revision id (default: the current one)",
                        schema={"type": "integer", "minimum": 1},
                    ),
                ],
                "responses": {
                    "200": json_body(ref("Manifest"), "The metadata and the blocks"),
                    "404": problem("No such file or revision"),
                    "409": problem("The path is a folder"),
                },
            },
        ),
    ]


def tree() -> list[Route]:
    return [
        Route(
            "GET",
            "/files/list_folder",
            tree_api.list_folder,
            {
                "operationId": "files_list_folder",
                "summary": "A folder's entries in path order (parents first), paged by path, with a cursor",
                "parameters": [
                    query("path", "The folder (default: the root)"),
                    query(
                        "recursive",
                        "true: the whole subtree; false (default): direct children",
                        schema={"enum": ["true", "false"]},
                    ),
                    query(
                        "limit",
                        f"At most this many (default {tree_api.DEFAULT_PAGE}, up to {tree_api.MAX_PAGE})",
                        schema={"type": "integer", "minimum": 1},
                    ),
                    query("after", "Only entries whose path sorts after this one (a page's next_after)"),
                ],
                "responses": {
                    "200": json_body(ref("FolderListing"), "One page of entries"),
                    "404": problem("No such folder"),
                    "409": problem("The path is a file"),
                },
            },
        ),
        Route(
            "POST",
            "/files/create_folder",
            tree_api.create_folder,
            {
                "operationId": "files_create_folder",
                "summary": "Create a folder (its parent must exist)",
                "requestBody": json_body(ref("CreateFolderRequest"), "Where, and optionally its mtime"),
                "responses": {
                    "201": json_body(ref("Metadata"), "The new folder"),
                    "409": problem("Something exists there, or the parent folder does not"),
                    "415": problem("The body is not JSON"),
                    "423": LOCKED,
                },
            },
        ),
        Route(
            "POST",
            "/files/move",
            tree_api.move,
            {
                "operationId": "files_move",
                "summary": "Move or rename a file or folder (it keeps its id and history); never overwrites",
                "requestBody": json_body(ref("MoveRequest"), "From where to where (with rev: conditional)"),
                "responses": {
                    "200": json_body(ref("Metadata"), "The file or folder at its new path"),
                    "404": problem("No such file or folder at from_path"),
                    "409": problem(
                        "Something exists at to_path, its folder does not, a folder into itself; or the "
                        "file is not at rev (type stale-parent; current_rev says what is; nothing moved)"
                    ),
                    "415": problem("The body is not JSON"),
                    "423": LOCKED,
                },
            },
        ),
    ]


def account(tokens: account_api.Tokens) -> list[Route]:
    token_id = {"name": "token_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    return [
        Route(
            "GET",
            "/account",
            account_api.account,
            {
                "operationId": "account",
                "summary": "The authenticated account: name, bytes used, quota",
                "responses": {"200": json_body(ref("Account"), "The account")},
            },
        ),
        Route(
            "POST",
            "/account/tokens",
            tokens.create,
            {
                "operationId": "account_tokens_create",
                "summary": "A new device token for this account (its secret is shown this once)",
                "requestBody": json_body(ref("TokenRequest"), "A label naming the device"),
                "responses": {
                    "201": json_body(ref("NewToken"), "The token, with its secret"),
                    "415": problem("The body is not JSON"),
                },
            },
        ),
        Route(
            "GET",
            "/account/tokens",
            tokens.listing,
            {
                "operationId": "account_tokens_list",
                "summary": "This account's device tokens (never their secrets), revoked ones included",
                "responses": {"200": json_body(ref("TokenList"), "The tokens")},
            },
        ),
        Route(
            "DELETE",
            "/account/tokens/{token_id}",
            tokens.revoke,
            {
                "operationId": "account_tokens_revoke",
                "summary": "Revoke a device token of this account",
                "parameters": [token_id],
                "responses": {
                    "204": {"description": "Revoked"},
                    "404": problem("This account has no such active token"),
                },
            },
        ),
    ]
