"""Byte-level damage for the fuzzer (pure): the mutations a hand-edited, truncated,
mis-encoded or hostile file shows.

Each mutation is small (one splice) so most mutants stay near the grammar and reach the
checks behind the parser; a few are gross (invalid UTF-8, a NUL, deep nesting, a huge
integer, a size just over the reader's bound).
"""

from __future__ import annotations

import random
from collections.abc import Callable

#: fragments spliced in: syntax of the three formats, encodings, and known hard values
TOKENS: tuple[bytes, ...] = (
    b"[", b"]", b"{", b"}", b"[[", b"]]", b'"', b"'", b'"""', b"'''", b"=", b":", b",", b"#",
    b"\n", b"\r\n", b"\t", b"\x00", b"\x1b", b"\x7f", b"\xff", b"\xc3", b"\xed\xa0\x80",
    b"\xef\xbb\xbf", b"\\u0000", b"\\ud800", b"\\", b"&a", b"*a", b"!!", b"<<", b"- ", b"? ",
    b"---", b"...", b"%TAG", b"true", b"null", b"nan", b"-0", b"1e309", b"0x", b"1_6",
    "²".encode(), "١٢".encode(), "\u202e".encode(), b"/..", b"/./", b"//", b"/dev/vfio/",
    b"/dev/vfio/devices/vfio", b"9" * 5000, b"[" * 2000, b"{\"a\":" * 2000,
)


def _flip(r: random.Random, data: bytes) -> bytes:
    if not data:
        return bytes([r.randrange(256)])
    i = r.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << r.randrange(8))]) + data[i + 1:]


def _insert(r: random.Random, data: bytes) -> bytes:
    i = r.randrange(len(data) + 1)
    return data[:i] + TOKENS[r.randrange(len(TOKENS))] + data[i:]


def _delete(r: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = r.randrange(len(data))
    return data[:i] + data[i + r.randrange(1, 16):]


def _duplicate(r: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = r.randrange(len(data))
    j = min(len(data), i + r.randrange(1, 200))
    return data[:j] + data[i:j] + data[j:]


def _truncate(r: random.Random, data: bytes) -> bytes:
    return data[:r.randrange(len(data) + 1)]


def _replace_number(r: random.Random, data: bytes) -> bytes:
    digits = [i for i, b in enumerate(data) if 0x30 <= b <= 0x39]
    if not digits:
        return _insert(r, data)
    i = digits[r.randrange(len(digits))]
    new = (b"-1", b"0", b"4294967296", b"18446744073709551616", "٣".encode(), b"1.5",
           b"017")[r.randrange(7)]
    return data[:i] + new + data[i + 1:]


def _oversize(r: random.Random, data: bytes) -> bytes:
    """Just over the input reader's 16 MiB bound (rarely chosen: it costs a write)."""
    return data + b"#" * ((16 << 20) + 1 - len(data))


MUTATIONS: tuple[tuple[Callable[[random.Random, bytes], bytes], float], ...] = (
    (_flip, 3.0), (_insert, 4.0), (_delete, 2.0), (_duplicate, 1.0), (_truncate, 1.0),
    (_replace_number, 2.0), (_oversize, 0.002),
)


def mutate(r: random.Random, data: bytes, rounds: int | None = None) -> bytes:
    """``data`` with 1-3 mutations (or ``rounds``)."""
    ops, weights = zip(*MUTATIONS, strict=True)
    for _ in range(rounds if rounds is not None else r.choice((1, 1, 1, 2, 3))):
        data = r.choices(ops, weights)[0](r, data)
    return data
