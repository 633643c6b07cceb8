"""DAV:sync-token values (RFC 6578): what a token says and how it is written.

RFC 6578 section 3.2 wants a URI (so that a token fits an If header); these live
under the reserved ``.invalid`` name (RFC 2606), and nothing dereferences them.

Complete token, the usual one::

    http://davserver.invalid/sync/<account id>/<position>

The client has every member as of change-feed position ``<position>``
(:meth:`storage.volume.Volume.change_seq`, one counter per account). It is not
bound to a collection or a sync-level (section 3.3 allows reuse across levels):
every collection of the account shares the counter, so PROPFIND's DAV:sync-token
is this token at the current position. Changes after it are read from the change
journal; a position below the journal's compacted floor, or ahead of the account,
is refused with DAV:valid-sync-token.

Resume token, handed out with a truncated (507) answer::

    http://davserver.invalid/sync/<account id>/<position>;from=<base>;level=<1|infinite>
        ;scope=<16 hex>;after=<percent-encoded path>[;initial]

Answers are sorted by storage path. The client holds: every member at ``<base>``
(nothing, for an initial sync), plus, as of ``<position>``, every member the
interrupted sync owed up to path ``after``. The next answer therefore owes what
changed after ``<base>`` and sorts after ``after``, everything that changed after
``<position>`` wherever it sorts, and -- with ``initial`` -- every present
member that sorts after ``after``. ``scope`` is a digest of the collection's path
and the sync-level: ``after`` means nothing for another collection or level.
Path parameters (``;``), not a query: no ``&`` that XML would have to escape.

Parsing is strict: a token is accepted only if writing it back gives the same string.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from wsgidav import xml_tools

SYNC_TOKEN = "{DAV:}sync-token"  # noqa: S105 - a property name
SUPPORTED_REPORT_SET = "{DAV:}supported-report-set"
SYNC_COLLECTION = "{DAV:}sync-collection"

BASE = "http://davserver.invalid/sync/"
_HEAD = re.compile(r"([0-9]{1,18})/([0-9]{1,18})")
_DIGITS = re.compile(r"[0-9]{1,18}")
_HEX = re.compile(r"[0-9a-f]{16}")


class InvalidToken(ValueError):
    """Not a token this server wrote for this account, collection and level, or no longer usable."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a truncated answer stopped."""

    #: The position the interrupted sync started from.
    base: int
    #: The storage path of the last member handed out.
    after: str
    #: An initial sync: present members sorting after ``after`` are still owed.
    initial: bool
    #: :func:`binding` of the collection and sync-level.
    scope: str


@dataclass(frozen=True, slots=True)
class SyncToken:
    account_id: int
    position: int
    resume: Resume | None = None

    @property
    def base(self) -> int:
        """The position whose changes are owed (after the resume point, if any)."""
        return self.resume.base if self.resume else self.position

    def encode(self) -> str:
        head = f"{BASE}{self.account_id}/{self.position}"
        r = self.resume
        if r is None:
            return head
        level, _, digest = r.scope.partition(":")
        tail = ";initial" if r.initial else ""
        return f"{head};from={r.base};level={level};scope={digest};after={quote(r.after, safe='')}{tail}"


def binding(scope: str, *, infinite: bool) -> str:
    """``<level>:<digest>`` tying a resume point to one collection and sync-level."""
    level = "infinite" if infinite else "1"
    digest = hashlib.sha256(f"{level}\n{scope}".encode()).hexdigest()[:16]
    return f"{level}:{digest}"


def decode(text: str) -> SyncToken:
    """The token ``text`` encodes; :class:`InvalidToken` unless it is exactly one this module writes."""
    if not text.startswith(BASE):
        raise InvalidToken("not a sync-token of this server")
    head, *params = text[len(BASE) :].split(";")
    m = _HEAD.fullmatch(head)
    if m is None:
        raise InvalidToken("malformed sync-token")
    token = SyncToken(int(m.group(1)), int(m.group(2)), _resume(params) if params else None)
    if token.encode() != text or token.base > token.position:
        raise InvalidToken("malformed sync-token")
    return token


def _resume(params: list[str]) -> Resume:
    fields: dict[str, str] = {}
    for param in params:
        key, _, value = param.partition("=")
        fields[key] = value
    try:
        after = unquote(fields.get("after", ""), errors="strict")
    except UnicodeError:
        raise InvalidToken("malformed sync-token") from None
    base, level, digest = fields.get("from", ""), fields.get("level"), fields.get("scope", "")
    if level not in ("1", "infinite") or not (_DIGITS.fullmatch(base) and _HEX.fullmatch(digest) and after):
        raise InvalidToken("malformed sync-token")
    return Resume(base=int(base), after=after, initial="initial" in fields, scope=f"{level}:{digest}")


def supported_report_set() -> Any:
    """RFC 3253 section 3.1.5: the reports a collection answers (sync-collection, RFC 6578 section 3.2)."""
    etree = xml_tools.etree
    root = etree.Element(SUPPORTED_REPORT_SET)
    report = etree.SubElement(etree.SubElement(root, "{DAV:}supported-report"), "{DAV:}report")
    etree.SubElement(report, SYNC_COLLECTION)
    return root
