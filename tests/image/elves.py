"""Small ELF-64 files built in memory, for the image builder's tests."""

from __future__ import annotations

import struct
from collections.abc import Sequence

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr, 56 bytes
SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr, 64 bytes
PT_LOAD, PT_INTERP = 1, 3
EM_X86_64, EM_AARCH64 = 62, 183


def make_elf(
    sections: Sequence[tuple[bytes, bytes]] = (),
    segments: Sequence[int] = (),
    *,
    machine: int = EM_X86_64,
    elf_class: int = 2,
) -> bytes:
    """An ELF with the given (name, contents) sections and program headers of these types.

    Layout: file header, program headers, section contents, the section-name string table
    (the last section), section headers (index 0 the null section).
    """
    phoff = EHDR.size
    body = bytearray()
    data_start = phoff + PHDR.size * len(segments)
    names = bytearray(b"\0")
    shdrs = [SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    for name, contents in [*sections, (b".shstrtab", b"")]:
        name_off = len(names)
        names += name + b"\0"
        if name == b".shstrtab":
            contents = bytes(names)
        shdrs.append(SHDR.pack(name_off, 1, 0, 0, data_start + len(body), len(contents),
                               0, 0, 1, 0))
        body += contents
    shoff = data_start + len(body)
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + b"\0" * 9
    header = EHDR.pack(ident, 1, machine, 1, 0, phoff, shoff, 0, EHDR.size, PHDR.size,
                       len(segments), SHDR.size, len(shdrs), len(shdrs) - 1)
    phdrs = b"".join(PHDR.pack(t, 0, 0, 0, 0, 0, 0, 0) for t in segments)
    return header + phdrs + bytes(body) + b"".join(shdrs)
