"""podplug.image.kernel: kconfig text and the vmlinux inside a bzImage."""

from __future__ import annotations

import lzma

import pytest

from podplug.errors import GuestImageError
from podplug.image.kernel import XZ_MAGIC, extract_vmlinux, parse_kconfig
from tests.image.elves import EM_AARCH64, make_elf


def _xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)


def test_parse_kconfig() -> None:
    cfg = parse_kconfig("# CONFIG_X is not set\nCONFIG_EXT4_FS=m\nCONFIG_PVH=y\n")
    assert cfg == {"CONFIG_EXT4_FS": "m", "CONFIG_PVH": "y"}


def test_parse_kconfig_keeps_values_verbatim() -> None:
    text = '#\n# Automatically generated file\nCONFIG_CMDLINE="a=b c"\nCONFIG_HZ=250\nHOSTCC=gcc\n'
    assert parse_kconfig(text) == {"CONFIG_CMDLINE": '"a=b c"', "CONFIG_HZ": "250"}


def test_extract_vmlinux_finds_the_xz_elf_after_a_false_magic() -> None:
    elf = b"\x7fELF\x02\x01\x01" + b"\0" * 11 + b"\x3e\x00" + b"body" * 100
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    bz = b"MZ" + b"\0" * 100 + b"\xfd7zXZ\x00broken" + payload + b"\0" * 8
    assert extract_vmlinux(bz) == elf
    with pytest.raises(GuestImageError, match="no XZ"):
        extract_vmlinux(b"MZ no payload")


def test_extract_vmlinux_wants_an_x86_64_elf() -> None:
    x86 = make_elf([(b".text", b"kernel")])
    arm = make_elf([(b".text", b"other")], machine=EM_AARCH64)
    elf32 = make_elf(elf_class=1)
    not_elf = b"just data" * 10
    bz = b"MZ" + _xz(not_elf) + _xz(arm) + _xz(elf32) + _xz(x86) + b"\0" * 16
    assert bz.count(XZ_MAGIC) == 4
    assert extract_vmlinux(bz) == x86
    with pytest.raises(GuestImageError, match="no XZ-compressed x86-64 ELF"):
        extract_vmlinux(b"MZ" + _xz(arm) + _xz(elf32))
