"""Canonical strings and numbers (``podplug/model/text.py``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podplug.model.text import parse_uint, path_problem, shown


@given(st.text())
def test_shown_is_one_printable_line(text: str) -> None:
    out = shown(text, limit=50)
    assert "\n" not in out and "\r" not in out and len(out) <= 51
    assert all(c.isprintable() for c in out)


def test_shown_escapes() -> None:
    assert shown("/dev/xda\nERROR forged") == "/dev/xda\\x0aERROR forged"
    assert shown("a\x00b") == "a\\x00b" and shown("x" * 10, limit=4) == "xxxx…"


@pytest.mark.parametrize("path", ["/dev/vfio/12", "/dev/xda", "/"])
def test_good_paths(path: str) -> None:
    assert path_problem(path) == ""


@pytest.mark.parametrize("path", ["dev/xda", "/dev/vfio/../12", "/dev/vfio/x/../../../tmp/12",
                                  "/dev//xda", "/dev/xda/", "/dev/./xda", "/dev/x\nda",
                                  "/dev/x\x00", "//dev/xda", ""])
def test_bad_paths(path: str) -> None:
    assert path_problem(path)


@pytest.mark.parametrize("text", ["²", "١٢", "1_6", " 16", "+16", "-1", "0x10", "", "1.0",
                                  "99999999999999999999999"])
def test_parse_uint_refuses_what_go_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_uint(text)


def test_parse_uint() -> None:
    assert parse_uint("16") == 16 and parse_uint("0") == 0
    assert parse_uint("4294967295") == 2**32 - 1
    with pytest.raises(ValueError, match="out of range"):
        parse_uint("4294967296")
    with pytest.raises(ValueError):
        parse_uint("9" * 5000)
