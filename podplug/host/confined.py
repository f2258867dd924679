"""Reads confined below a root directory: the only way podplug reads a tree it was pointed
at (sysfs, or a fake stand-in for it).

A path is resolved one component at a time from an open descriptor of the root
(``O_NOFOLLOW``), so a symbolic link anywhere on the way, in the middle or last, is read
with ``readlink`` and followed only while it stays inside the root: an absolute target, or
``..`` above the root, is refused naming the link (sysfs's own links are relative and stay
inside). What is read must be a regular file (sysfs attributes are), opened without
blocking, at most :data:`MAX_READ` bytes: a FIFO, a device such as ``/dev/zero`` or a huge
file planted in the tree is refused without waiting or reading it all, and an error quotes
at most a short excerpt of what it found.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from podplug.errors import HostError
from podplug.model.text import shown

MAX_READ = 64 << 10  # sysfs attributes are a page; ``resource`` a few hundred bytes
MAX_LINKS = 40  # like the kernel's MAXSYMLINKS
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Confined:
    """A root directory and the confined reads below it. Paths are absolute strings below
    :attr:`root` (as the callers build them) or relative to it."""

    def __init__(self, root: str | Path) -> None:
        self.root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise HostError(self.root, "is not a directory")

    def at(self, node_path: str) -> str:
        """Where the root's own absolute path ``node_path`` (``/etc/x`` of a node whose
        ``/`` is this root) lies, for the reads below (not resolved)."""
        return self.root.rstrip("/") + node_path

    def _parts(self, path: str) -> list[str]:
        rel = os.path.relpath(path, self.root) if os.path.isabs(path) else path
        if rel == "." or rel == "":
            return []
        if rel.startswith(".."):
            raise HostError(path, f"is outside the root {self.root}")
        return [p for p in rel.split("/") if p not in ("", ".")]

    def resolve(self, path: str) -> str:
        """The path with every link resolved, still below the root (an absolute string).

        :raises HostError: for a link that leaves the root, or too many links.
        """
        stack: list[str] = []
        pending = self._parts(path)
        links = 0
        while pending:
            part = pending.pop(0)
            if part == "..":
                if not stack:
                    raise HostError(path, f"leads above the root {self.root}")
                stack.pop()
                continue
            current = os.path.join(self.root, *stack, part)
            try:
                info = os.lstat(current)
            except FileNotFoundError:
                stack.append(part)  # absent: the read that follows will say so
                stack.extend(p for p in pending if p not in ("..",))
                return os.path.join(self.root, *stack)
            except OSError as exc:
                raise HostError(current, f"cannot look at: {exc.strerror}") from exc
            if stat.S_ISLNK(info.st_mode):
                links += 1
                if links > MAX_LINKS:
                    raise HostError(path, "too many levels of symbolic links")
                target = os.readlink(current)
                if os.path.isabs(target):
                    raise HostError(current, f"symlink to {shown(target, 80)} leaves the "
                                    f"root {self.root}")
                pending = [p for p in target.split("/") if p not in ("", ".")] + pending
                continue
            stack.append(part)
        return os.path.join(self.root, *stack)

    def _open_dir(self, path: str) -> int:
        """A descriptor of the directory at ``path`` (already resolved), walked with
        O_NOFOLLOW from the root."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in self._parts(path):
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read(self, path: str, limit: int = MAX_READ) -> str:
        """The text of a regular file below the root.

        :raises HostError: naming the path, for anything else (absent, not regular, too
            big, a link out, unreadable).
        """
        real = self.resolve(path)
        parent, name = os.path.split(real)
        try:
            dirfd = self._open_dir(parent)
        except OSError as exc:
            raise HostError(path, f"cannot read: {exc.strerror}") from exc
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                         | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError as exc:
            reason = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            raise HostError(path, f"cannot read: {reason}") from exc
        finally:
            os.close(dirfd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise HostError(path, "not a regular file (refused without reading)")
            data = os.read(fd, limit + 1)
        except OSError as exc:
            raise HostError(path, f"cannot read: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if len(data) > limit:
            raise HostError(path, f"more than {limit} bytes: not a sysfs attribute")
        return data.decode("utf-8", errors="surrogateescape")

    def optional(self, path: str) -> str | None:
        """Like :meth:`read`, or ``None`` when nothing is there."""
        if not os.path.lexists(self.resolve(path)):
            return None
        return self.read(path)

    def size(self, path: str) -> int:
        """The size of a regular file below the root (``config``: read only by size)."""
        real = self.resolve(path)
        try:
            info = os.lstat(real)
        except OSError as exc:
            raise HostError(path, f"cannot stat: {exc.strerror}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise HostError(path, "not a regular file")
        return info.st_size

    def listdir(self, path: str) -> list[str]:
        real = self.resolve(path)
        try:
            fd = self._open_dir(real)
        except OSError as exc:
            raise HostError(path, f"cannot list directory: {exc.strerror}") from exc
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def isdir(self, path: str) -> bool:
        try:
            return os.path.isdir(self.resolve(path)) and not os.path.islink(self.resolve(path))
        except HostError:
            return False

    def link_basename(self, path: str) -> str | None:
        """The basename of an optional symlink's target (``driver``, ``iommu_group``); the
        link itself is not followed."""
        real_parent = self.resolve(os.path.dirname(path))
        link = os.path.join(real_parent, os.path.basename(path))
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise HostError(path, f"expected a symlink: {exc.strerror}") from exc
        return os.path.basename(os.path.normpath(target))
