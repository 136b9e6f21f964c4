"""ASCII character classes as bits, and in_class: what a regex's character class matches, for the str
readings that stand in for regexes in grammar and deliverytail (its own module: both read the one table,
and deliverytail, which grammar imports, cannot import grammar back)."""

from __future__ import annotations

from typing import Final

# (Final: mypyc compiles each into the code; a plain module name is a dict lookup at every use)
HEX: Final = 1
B52: Final = 2
DIGIT: Final = 4
DELAY: Final = 8
DELAYS: Final = 16
STATUS: Final = 32
FIELD: Final = 64
_CLASSES: Final = (
    (HEX, "0123456789ABCDEF"), (B52, "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"),
    (DIGIT, "0123456789"), (DELAY, "0123456789."), (DELAYS, "0123456789./"),
    (STATUS, "abcdefghijklmnopqrstuvwxyz-"),
    (FIELD, "".join(chr(o) for o in range(0x21, 0x7F) if chr(o) != ",")),  # no \s, no comma
)
_CLASS: Final = bytes(sum(bit for bit, chars in _CLASSES if chr(o) in chars) for o in range(128))


def in_class(text: str, start: int, end: int, kind: int) -> bool:
    """Every character of text[start:end] (none: True) is ASCII of the class `kind` of _CLASS.
    A loop over ord() compiles (mypyc) to less than a regex call or str.strip(alphabet)."""
    for k in range(start, end):
        o = ord(text[k])
        if o >= 128 or not _CLASS[o] & kind:
            return False
    return True
