"""podplug.image.elf: the ELF-64 header reads, on ELF files built in memory and real ones."""

from __future__ import annotations

import sys
from pathlib import Path

from podplug.image.elf import is_elf64, is_static_elf, section
from tests.image.elves import PT_INTERP, PT_LOAD, make_elf


def test_is_elf64_wants_the_magic_and_class_64() -> None:
    assert is_elf64(make_elf())
    assert not is_elf64(make_elf(elf_class=1))
    assert not is_elf64(b"MZ\x90\x00\x03")
    assert not is_elf64(b"")


def test_static_means_no_pt_interp() -> None:
    assert is_static_elf(make_elf(segments=[PT_LOAD, PT_LOAD]))
    assert is_static_elf(make_elf())
    assert not is_static_elf(make_elf(segments=[PT_LOAD, PT_INTERP, PT_LOAD]))
    assert not is_static_elf(make_elf(elf_class=1, segments=[PT_LOAD]))
    assert not is_static_elf(b"#!/bin/sh\n")


def test_the_python_running_this_is_dynamic() -> None:
    assert not is_static_elf(Path(sys.executable).resolve().read_bytes())


def test_section_finds_the_first_by_name() -> None:
    elf = make_elf([(b".text", b"\x90" * 7), (b".modinfo", b"a=1\0"), (b".modinfo", b"b=2\0")])
    assert section(elf, b".modinfo") == b"a=1\0"
    assert section(elf, b".text") == b"\x90" * 7
    assert section(elf, b".shstrtab") is not None
    assert section(elf, b".mod") is None  # a prefix is not the name
    assert section(elf, b".data") is None


def test_an_empty_section_is_found_empty() -> None:
    elf = make_elf([(b".empty", b"")])
    assert section(elf, b".empty") == b""
