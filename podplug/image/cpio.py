"""The initramfs archive writer (pure: bytes in, bytes out).

Format: cpio "newc", the SVR4 portable ASCII format without checksums (magic ``070701``)
that the Linux kernel unpacks as an initramfs (Documentation/driver-api/early-userspace/
buffer-format.rst; cpio(5)). Each entry is a 110-byte header of the magic and 13 fields of
8 hex digits (ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
rdevmajor, rdevminor, namesize, check), the NUL-terminated name padded to a multiple of
4 bytes (header included), then the data padded to 4 bytes. A symlink's data is its
target. The archive ends with an entry named ``TRAILER!!!``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class NewcArchive:
    """A ``newc`` (SVR4, no CRC) cpio archive built in memory; owner root, mtime 0."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 0
        self._dirs: set[str] = set()
        self._names: set[str] = set()

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        rdev: tuple[int, int] = (0, 0),
        nlink: int = 1,
    ) -> None:
        name = name.strip("/")
        if name in self._names:
            raise ValueError(f"duplicate cpio entry {name}")
        parent = name.rpartition("/")[0]
        if parent and parent not in self._dirs:
            self.add_dir(parent)
        self._names.add(name)
        self._ino += 1
        raw = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._parts += [header, raw, _pad(len(header) + len(raw)), data, _pad(len(data))]

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        """A directory (parents are added as needed)."""
        name = name.strip("/")
        if name in self._dirs:
            return
        self._entry(name, 0o040000 | mode, nlink=2)
        self._dirs.add(name)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def add_node(self, name: str, kind: str, major: int, minor: int, mode: int) -> None:
        """A character (``c``) or block (``b``) device node."""
        fmt = {"c": 0o020000, "b": 0o060000}[kind]
        self._entry(name, fmt | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        """The archive bytes, with the ``TRAILER!!!`` entry."""
        raw = b"TRAILER!!!\0"
        header = b"070701" + b"".join(
            b"%08X" % f for f in (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(raw), 0)
        )
        return b"".join([*self._parts, header, raw, _pad(len(header) + len(raw))])


def busybox_root(dirs: Sequence[str], busybox: bytes,
                 applets: Iterable[str]) -> NewcArchive:
    """An initramfs started: ``dirs``, ``/dev/console`` and ``/dev/null`` (the kernel opens
    the console before any devtmpfs), static busybox at ``bin/busybox`` and each applet
    (``usr/bin/od``...) a relative link to it."""
    archive = NewcArchive()
    for name in dirs:
        archive.add_dir(name)
    archive.add_node("dev/console", "c", 5, 1, 0o600)
    archive.add_node("dev/null", "c", 1, 3, 0o666)
    archive.add_file("bin/busybox", busybox, 0o755)
    for applet in applets:
        if applet != "bin/busybox":
            archive.add_symlink(applet, "../" * applet.count("/") + "bin/busybox")
    return archive


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)
