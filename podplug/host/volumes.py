"""What a host volume holds, read (only read) before a run: its size, the digests of its
first and last 4 KiB, any filesystem or partition signature, and whether the kernel has it
mounted. The proof in the guest compares its own reads with these.

Signatures looked for, at their fixed offsets: ext2/3/4 (``0xEF53`` at 1080), XFS
(``XFSB`` at 0), btrfs (``_BHRfS_M`` at 65600), swap (``SWAPSPACE2`` at 4086), LUKS
(``LUKS\\xba\\xbe`` at 0), ISO 9660 (``CD001`` at 32769), a GPT (``EFI PART`` at 512) and an
MBR partition table (``0x55AA`` at 510).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

from podplug.errors import HostError

BLOCK = 4096
_PROBE = 68 << 10
_SIGNATURES: tuple[tuple[str, int, bytes], ...] = (
    ("ext2/3/4", 1080, b"\x53\xef"), ("XFS", 0, b"XFSB"), ("btrfs", 65600, b"_BHRfS_M"),
    ("swap", 4086, b"SWAPSPACE2"), ("LUKS", 0, b"LUKS\xba\xbe"), ("ISO 9660", 32769, b"CD001"),
    ("GPT", 512, b"EFI PART"), ("MBR partition table", 510, b"\x55\xaa"),
)


@dataclass(frozen=True)
class VolumeFacts:
    path: str
    size: int
    head: str  # sha256 of the first 4 KiB
    tail: str  # sha256 of the last 4 KiB
    signature: str  # "" when none was found
    mounted: bool
    inode: tuple[int, int] = (0, 0)  # (st_dev, st_ino): the file opened again must be this one


def read_volume(path: str) -> VolumeFacts:
    """Read a volume's facts (a regular file or a block device; nothing else is opened).

    :raises HostError: naming the path.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise HostError(path, f"cannot open the volume: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISBLK(info.st_mode)):
            raise HostError(path, "a volume is a block device or a regular file")
        size = os.lseek(fd, 0, os.SEEK_END)
        if size < BLOCK:
            raise HostError(path, f"{size} bytes: too small to be a volume")
        probe = os.pread(fd, _PROBE, 0)
        tail = os.pread(fd, BLOCK, size - BLOCK)
    except OSError as exc:
        raise HostError(path, f"cannot read the volume: {exc.strerror}") from exc
    finally:
        os.close(fd)
    found = next((name for name, offset, magic in _SIGNATURES
                  if probe[offset:offset + len(magic)] == magic), "")
    mounted = stat.S_ISBLK(info.st_mode) and _is_mounted(info.st_rdev)
    return VolumeFacts(path, size, hashlib.sha256(probe[:BLOCK]).hexdigest(),
                       hashlib.sha256(tail).hexdigest(), found, mounted,
                       (info.st_dev, info.st_ino))


def _is_mounted(rdev: int) -> bool:
    """Whether a filesystem of this block device is mounted (``/proc/self/mountinfo``)."""
    wanted = f"{os.major(rdev)}:{os.minor(rdev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            return any(line.split()[2:3] == [wanted] for line in handle)
    except OSError:
        return True  # cannot tell: assume the worst
