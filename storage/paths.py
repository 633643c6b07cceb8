"""Path and name policy, the same for every face.

A stored path is a tuple of names joined by ``/`` with no leading slash; the
account root is ``""``. Every name is Unicode NFC, so the NFD names macOS sends
and the NFC names everybody else sends reach one file.

Refused with :class:`InvalidName` (clients would otherwise mis-handle them):
NUL and other control characters, ``\\`` (a path separator to Windows clients
and a traversal risk for naive sync clients), ``.`` and ``..`` as names, names
over 255 UTF-8 bytes and paths over 4096. Names Windows cannot show but other
systems can (``:``, ``*``, ``?``, ``"``, ``<``, ``>``, ``|``, trailing dots or
spaces) are stored as given: refusing them would break macOS and Linux users,
and Windows clients simply do not list them. This policy is documented in the
README.
"""

from __future__ import annotations

import unicodedata

from storage.errors import InvalidName

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096


def normalize_name(name: str) -> str:
    name = unicodedata.normalize("NFC", name)
    if name in ("", ".", ".."):
        raise InvalidName(f"invalid name {name!r}")
    if "/" in name or "\\" in name:
        raise InvalidName("a name may not contain '/' or '\\'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidName("a name may not contain control characters")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidName("name longer than 255 bytes")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("name is not valid Unicode") from None
    return name


def normalize_path(path: str) -> str:
    """``"/a//b/"`` -> ``"a/b"``; ``"/"`` -> ``""``. Raises :class:`InvalidName`."""
    parts = [p for p in path.split("/") if p not in ("",)]
    names = [normalize_name(p) for p in parts if p != "."]
    joined = "/".join(names)
    if len(joined.encode("utf-8")) > MAX_PATH_BYTES:
        raise InvalidName("path longer than 4096 bytes")
    return joined


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def name_of(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def is_within(path: str, ancestor: str) -> bool:
    """True when ``path`` is ``ancestor`` or below it."""
    return ancestor == "" or path == ancestor or path.startswith(ancestor + "/")
