"""Bounded quoting of bad values in error messages.

A client controls the values it sends: a 1 MB style name, 10,000 unknown keys or a 5,000-digit
number must give a short message (and one short log line), never an echo of the whole value.
Standard library only: vLLM's API process imports this to validate requests.
"""
from __future__ import annotations

import math
import reprlib
from typing import Any, Iterable

MAX_QUOTED_CHARS = 100  # characters of a bad value quoted in a message
MAX_LISTED = 5  # items of a list (unknown keys, configured names) named in a message

_containers = reprlib.Repr()
_containers.maxlevel = 2  # nesting shown; deeper levels print as [...]
_containers.maxlist = _containers.maxtuple = _containers.maxset = _containers.maxdict = 4
_containers.maxstring = 24
_containers.maxlong = 24
_containers.maxother = 40


class HugeInteger:
    """A JSON integer too long for Python's int() (more than sys.get_int_max_str_digits() digits).

    The raw-JSON reader (request_args.loads_request_json) returns one instead of failing the whole
    body, so the message can name the key that holds it. It is out of every range."""

    __slots__ = ("digits",)

    def __init__(self, digits: str):
        self.digits = digits  # the literal, sign included

    def __repr__(self) -> str:
        return _long_literal(self.digits)


def _long_literal(s: str) -> str:
    return s if len(s) <= 40 else f"{s[:20]}...{s[-6:]} ({len(s.lstrip('-')):,} digits)"


def _int_repr(value: int) -> str:
    try:
        return _long_literal(repr(value))
    except ValueError:  # beyond Python's integer-to-string limit: estimate the length instead
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"{'-' if value < 0 else ''}<an integer of about {digits:,} digits>"


def brief(value: Any) -> str:
    """repr(value), bounded: at most ~MAX_QUOTED_CHARS characters of it, plus the size of the rest."""
    if isinstance(value, str):
        if len(value) <= MAX_QUOTED_CHARS:
            return repr(value)
        return f"{value[:MAX_QUOTED_CHARS]!r}... ({len(value):,} characters)"
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return _int_repr(value)
    if isinstance(value, HugeInteger):
        return repr(value)
    try:
        text = _containers.repr(value)  # bounded in depth and width, whatever the nesting
    except Exception:  # a foreign object whose repr fails: its type is enough
        text = f"<{type(value).__name__}>"
    if len(text) > MAX_QUOTED_CHARS:
        text = text[:MAX_QUOTED_CHARS] + "..."
    if isinstance(value, (list, tuple, dict, set, frozenset)) and len(value) > _containers.maxlist:
        text += f" ({len(value):,} items)"
    return text


def kind(value: Any) -> str:
    """The type name a message shows ('int' for a HugeInteger: that is what the client sent)."""
    return "int" if isinstance(value, HugeInteger) else type(value).__name__


def listing(items: Iterable[str], quote: bool = False, limit: int = MAX_LISTED) -> str:
    """'a, b, c' with at most `limit` items (each briefly quoted), then 'and N more'."""
    items = list(items)
    shown = [brief(i) if quote else (i if len(i) <= MAX_QUOTED_CHARS else brief(i)) for i in items[:limit]]
    more = len(items) - len(shown)
    return ", ".join(shown) + (f" and {more:,} more" if more > 0 else "")
