"""Numbers as HTTP requests carry them (headers, query parameters, JSON), parsed strictly.

Shared by the WebDAV face and the extension API: neither imports the other.
"""

from __future__ import annotations

import re
from typing import TypeGuard

_SECONDS = re.compile(r"\s*\d+(?:\.\d*)?(?:[eE][+-]?\d+)?\s*", re.ASCII)
#: Modification times are taken from the epoch up to this (2**40 s: the year 36812).
MAX_EPOCH = 2.0**40


def epoch_in_range(value: float) -> float:
    """``value`` as a modification time, or ValueError (also for NaN)."""
    if not 0 <= value < MAX_EPOCH:
        raise ValueError("out of range")
    return value


def epoch_seconds(text: str) -> float:
    """A modification time in seconds since the epoch (X-OC-Mtime, ``mtime=``); ValueError if not.

    Plain ASCII decimals only: ``float`` also takes full-width digits, "1_000", "nan" and "inf".
    """
    if not _SECONDS.fullmatch(text):
        raise ValueError("not a number of seconds since the epoch")
    return epoch_in_range(float(text))


#: Integers the database keeps (ids, offsets, sizes) are signed 64-bit: a larger one names
#: nothing there, and SQLite's driver cannot even bind it (an OverflowError, a 500).
INT64_MAX = (1 << 63) - 1


_LONG_NUMBER = re.compile(r"\d{19,}")
#: What a number of more than 18 digits is read as: beyond any size, offset, id or timeout here.
HUGE = 10**18 - 1


def clamp_numbers(text: str) -> str:
    """``text`` with every number of more than 18 digits written as :data:`HUGE`.

    Python's ``int`` refuses strings of over 4300 digits (a ValueError where a 400
    belongs), and no size, offset or timeout this server deals in comes near 18 digits,
    so a range, a timeout or a length means the same with the number clamped.
    """
    return _LONG_NUMBER.sub(str(HUGE), text)


def digits(raw: str) -> int | None:
    """``raw`` (ASCII digits, surrounding blanks allowed) as a non-negative integer, else None;
    more than 18 digits read as :data:`HUGE` (which the database can hold: as an id it names
    nothing, as a bound it bounds nothing).

    ``str.isdigit`` alone also passes "²" and other digits that ``int`` refuses.
    """
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()):
        return None
    return int(raw) if len(raw) <= 18 else HUGE


def json_int(value: object) -> TypeGuard[int]:
    """Whether a JSON value is an integer (not a boolean) the database can hold."""
    return isinstance(value, int) and not isinstance(value, bool) and -INT64_MAX - 1 <= value <= INT64_MAX
