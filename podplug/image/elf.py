"""ELF-64 reading, only as much as the image builder needs (pure: bytes in).

Format: the System V ABI "ELF-64 Object File Format", little-endian (x86-64) layout. The
file header holds ``e_ident`` (``\\x7fELF``, then class 2 = ELFCLASS64), ``e_machine`` at
0x12, ``e_phoff`` at 0x20, ``e_shoff`` at 0x28, ``e_phentsize``/``e_phnum`` at 0x36 and
``e_shentsize``/``e_shnum``/``e_shstrndx`` at 0x3A. A program header starts with
``p_type`` (``PT_INTERP`` = 3 names the dynamic loader: a static binary has none). A
section header starts with ``sh_name`` (an offset into the section-name string table),
``sh_type``, ``sh_flags``, ``sh_addr``, ``sh_offset`` and ``sh_size``.
"""

from __future__ import annotations

import struct

#: ``e_machine`` of x86-64 (EM_X86_64 = 62), as the two bytes at offset 0x12
EM_X86_64 = b"\x3e\x00"
PT_INTERP = 3


def is_elf64(data: bytes) -> bool:
    """True when ``data`` starts with the ELF magic and class ELFCLASS64."""
    return data[:4] == b"\x7fELF" and data[4] == 2


def is_static_elf(data: bytes) -> bool:
    """True for a 64-bit ELF without a PT_INTERP program header."""
    if not is_elf64(data):
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(
        struct.unpack_from("<I", data, phoff + i * phentsize)[0] != PT_INTERP
        for i in range(phnum)
    )


def section(data: bytes, wanted: bytes) -> bytes | None:
    """The contents of the first section named ``wanted`` (None when there is none)."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name, _t, _f, _a, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _n, stroff, _s = header(shstrndx)
    for i in range(shnum):
        name, off, size = header(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name : end] == wanted:
            return data[off : off + size]
    return None
