"""``/account``: the authenticated account's usage, and its device tokens.

A sync client logs in once with the password, asks for a device token and keeps
only that; revoking the token (here or with ``davserver token revoke``) cuts the
device off without touching the password. The secret is in the creation's
answer only: the server stores its SHA-256 (:mod:`storage.accounts`). As with a
password change, a revocation bites within the authenticator's credential cache
time (30 s by default, see the README). Token ids are looked up within the
authenticated account, so another account's id is a 404, like an unknown one.
"""

from __future__ import annotations

from typing import Any

from storage.accounts import Accounts
from storage.model import TokenInfo
from sync_ext.api.routing import Request, Response
from webcommon.numbers import digits
from webcommon.problems import bad_request

MAX_LABEL = 100


def token_json(info: TokenInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "account": info.account,
        "label": info.label,
        "created_at": info.created_at,
        "last_used_at": info.last_used_at,
        "revoked": info.revoked,
    }


def account(req: Request) -> Response:
    quota = req.volume.quota()
    return Response.json(
        200,
        {"name": req.volume.account.name, "used_bytes": quota.used_bytes, "quota_bytes": quota.limit_bytes},
    )


class Tokens:
    """The token handlers, over the engine's account service (more than a volume reaches)."""

    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    def create(self, req: Request) -> Response:
        label = req.json().get("label")
        if not isinstance(label, str) or not 1 <= len(label) <= MAX_LABEL:
            raise bad_request(f"'label' (a string of 1 to {MAX_LABEL} characters) is required")
        info, secret = self._accounts.create_token(req.volume.account.name, label)
        return Response.json(
            201, {"id": info.id, "label": info.label, "token": secret, "created_at": info.created_at}
        )

    def listing(self, req: Request) -> Response:
        infos = self._accounts.list_tokens(req.volume.account.name)
        return Response.json(200, {"tokens": [token_json(info) for info in infos]})

    def revoke(self, req: Request) -> Response:
        token_id = digits(req.path_params["token_id"])
        if token_id is None:
            raise bad_request("a token id is a number")
        self._accounts.revoke_token(req.volume.account.name, token_id)
        return Response(204)
