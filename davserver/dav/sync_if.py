"""DAV:sync-token values in ``If`` headers (RFC 6578 section 5, a MUST).

WsgiDAV's ``If`` evaluation knows lock tokens and entity tags only (a sync-token
there always fails) and evaluates only the lists of the request-URI. So, before
WsgiDAV sees the header, each condition naming one of our sync-tokens is
evaluated here: it holds when the token is the account's current one, i.e.
nothing in the account changed since the client got it (our tokens are
account-wide, so the resource a list is tagged with does not change the answer).

* A header made of sync-token conditions only is decided here: it holds if one of
  its lists does (RFC 4918 section 10.4.3); then it is removed, else the request
  gets 412.
* Mixed with lock tokens or entity tags, each sync-token condition is replaced by
  one WsgiDAV evaluates the same way -- ``Not <NEVER>`` (always true: no resource
  holds that lock) or ``<NEVER>`` (always false) -- and the rest is WsgiDAV's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from davserver.dav.sync_token import BASE, InvalidToken, decode

#: A state token no lock ever has.
NEVER = "urn:x-davserver:no-such-lock"
# Resource tags <...> and lists (...), as RFC 4918 section 10.4.2 writes them.
_PART = re.compile(r"\s*(?:<([^>]*)>|\(([^)]*)\))")
_CONDITION = re.compile(r"\s*(Not\s+)?(<[^>]*>|\[[^\]]*\])", re.IGNORECASE)

IsCurrent = Callable[[int, int], bool]


@dataclass(frozen=True, slots=True)
class _Condition:
    negated: bool
    atom: str

    @property
    def sync_token(self) -> str | None:
        inner = self.atom[1:-1]
        return inner if self.atom.startswith("<") and inner.startswith(BASE) else None


def mentions_sync_token(header: str) -> bool:
    return BASE in header


def evaluate(header: str, is_current: IsCurrent) -> str | bool | None:
    """What to do with an ``If`` header that names sync-tokens.

    Returns True (the header holds: drop it), False (412), a rewritten header
    for WsgiDAV, or None when the header cannot be parsed (WsgiDAV answers it).
    ``is_current(account_id, position)``: whether that is the account's position now.
    """
    parts = _parse(header)
    if parts is None:
        return None
    lists = [conds for tag, conds in parts if conds is not None]
    if all(c.sync_token is not None for conds in lists for c in conds):
        return any(all(_holds(c, is_current) for c in conds) for conds in lists)
    out = []
    for tag, conds in parts:
        if conds is None:
            out.append(f"<{tag}>")
            continue
        rendered = [
            (f"Not <{NEVER}>" if _holds(c, is_current) else f"<{NEVER}>")
            if c.sync_token is not None
            else ("Not " if c.negated else "") + c.atom
            for c in conds
        ]
        out.append(f"({' '.join(rendered)})")
    return " ".join(out)


def _parse(header: str) -> list[tuple[str | None, list[_Condition] | None]] | None:
    parts: list[tuple[str | None, list[_Condition] | None]] = []
    pos, end = 0, len(header.rstrip())
    while pos < end:
        part = _PART.match(header, pos)
        if part is None:
            return None
        pos = part.end()
        if part.group(1) is not None:
            parts.append((part.group(1), None))
            continue
        conds = _conditions(part.group(2))
        if not conds:
            return None
        parts.append((None, conds))
    return parts


def _conditions(text: str) -> list[_Condition] | None:
    found: list[_Condition] = []
    pos, end = 0, len(text.rstrip())
    while pos < end:
        cond = _CONDITION.match(text, pos)
        if cond is None:
            return None
        pos = cond.end()
        found.append(_Condition(bool(cond.group(1)), cond.group(2)))
    return found


def _holds(cond: _Condition, is_current: IsCurrent) -> bool:
    """The condition's truth, ``Not`` applied (sync-token conditions only)."""
    text = cond.sync_token
    assert text is not None
    try:
        token = decode(text)
        current = token.resume is None and is_current(token.account_id, token.position)
    except InvalidToken:
        current = False
    return current != cond.negated
