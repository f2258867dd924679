"""One canonical form for the strings and numbers podplug reads from others (pure).

Inputs come from the operator (Kata's configuration), the pod author (the spec and its
annotations), device vendors (CDI) and the node's kernel (sysfs), so none is trusted to be
well formed:

* :func:`shown` is how any such string is printed (errors, trees, tables): control and other
  non-printable characters escaped, at most ``limit`` characters, so one value can neither
  forge an extra line nor fill a terminal;
* :func:`path_problem` is the rule for every container and host path: absolute and normal
  (no ``.``, ``..``, ``//`` or trailing ``/``), no NUL or control characters;
* :func:`parse_uint` reads a number as Go's ``strconv.ParseUint(s, 10, bits)`` does (Kata
  parses its annotation counts so): ASCII digits only, no sign, no ``_``, no spaces, within
  ``bits``; ``str.isdigit`` and ``int()`` would take ``²``, ``١٢`` or ``1_6``.
"""

from __future__ import annotations

import posixpath

ASCII_DIGITS = frozenset("0123456789")


def shown(value: object, limit: int = 120) -> str:
    """``repr``-like, always one line: non-printable characters escaped, the result cut to
    ``limit`` characters (then ``…``)."""
    text = value if isinstance(value, str) else str(value)
    out: list[str] = []
    length = 0
    for char in text:
        if char == "\\":
            piece = "\\\\"
        elif char.isprintable():
            piece = char
        else:
            code = ord(char)
            piece = (f"\\x{code:02x}" if code < 0x100 else
                     f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        if length + len(piece) > limit:
            return "".join(out) + "…"
        out.append(piece)
        length += len(piece)
    return "".join(out)


def has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def path_problem(path: str) -> str:
    """Why ``path`` is not an absolute, normal path ("" when it is)."""
    if not path.startswith("/"):
        return "must be an absolute path"
    if "\x00" in path or has_control(path):
        return "must not hold NUL or control characters"
    if posixpath.normpath(path) != path or path.startswith("//"):
        return "must be normal: no ., .., // or trailing /"
    return ""


def is_ascii_digits(text: str) -> bool:
    return bool(text) and all(c in ASCII_DIGITS for c in text)


def parse_uint(text: str, bits: int = 32) -> int:
    """``strconv.ParseUint(text, 10, bits)``; raises ``ValueError`` naming what is wrong."""
    if not is_ascii_digits(text):
        raise ValueError(f"{shown(text, 40)} is not a number (ASCII digits only)")
    if len(text) > 20:
        raise ValueError(f"{shown(text, 40)} is out of range (at most {2**bits - 1})")
    value = int(text)
    if value >= 2**bits:
        raise ValueError(f"{text} is out of range (at most {2**bits - 1})")
    return value
