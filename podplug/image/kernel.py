"""The kernel package's boot files, read from their bytes (pure: text or bytes in).

* A kernel config (``/boot/config-VERSION``) has the Kconfig ``.config`` syntax
  (Documentation/kbuild/kconfig.rst): ``CONFIG_X=value`` for a set option, the comment
  ``# CONFIG_X is not set`` for an unset one.
* A bzImage (Documentation/arch/x86/boot.rst) carries the kernel as a compressed payload
  of its protected-mode part. Debian compresses it with XZ; an XZ stream starts with the
  six magic bytes ``FD 37 7A 58 5A 00`` (the .xz file format, section 2.1.1.1). The stream
  holds the ELF ``vmlinux`` (x86-64), which QEMU boots directly through its PVH entry.
"""

from __future__ import annotations

import lzma

from podplug.errors import GuestImageError
from podplug.image.elf import EM_X86_64, is_elf64

XZ_MAGIC = b"\xfd7zXZ\x00"


def parse_kconfig(text: str) -> dict[str, str]:
    """``CONFIG_X=v`` lines of a kernel config (unset options are absent)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            out[key] = value
    return out


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF ``vmlinux`` inside an XZ-compressed bzImage."""
    pos = bzimage.find(XZ_MAGIC)
    while pos >= 0:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[pos:])
        except lzma.LZMAError:
            elf = b""
        if is_elf64(elf) and elf[0x12:0x14] == EM_X86_64:
            return elf
        pos = bzimage.find(XZ_MAGIC, pos + 1)
    raise GuestImageError("no XZ-compressed x86-64 ELF found in the bzImage")
