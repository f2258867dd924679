"""Host device nodes, read confined below a directory standing for ``/dev`` (shell).

What :func:`podplug.inputs.cdi.apply_cdi` needs to complete a CDI device node the way the
reference does (``Lstat`` of the host path: its type, major and minor, and its permission
bits). Every path must lie below ``/dev``; it is walked one component at a time from the
root directory with ``O_NOFOLLOW``, so no symbolic link is followed, not even inside, and the
last component is looked at with ``lstat`` semantics (a link there is "not a device node",
as for the reference). Nothing is opened but directories; a FIFO is never opened.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from podplug.inputs.cdi import HostNode
from podplug.inputs.cdi_defaults import DEV
from podplug.model.enums import NodeType


def read_nodes(paths: Iterable[str], dev_root: str | Path = DEV) -> dict[str, HostNode | str]:
    """Each host path -> the node there, or one line saying why there is none."""
    return {path: _read(path, Path(dev_root)) for path in paths}


def _read(path: str, dev_root: Path) -> HostNode | str:
    normal = os.path.normpath(path)
    if not path.startswith("/") or normal != path.rstrip("/") or path.endswith("/"):
        return "not an absolute, normal path"
    if normal == DEV or not normal.startswith(DEV + "/"):
        return f"outside {DEV}: podplug reads host device nodes only below {DEV}"
    parts = normal[len(DEV) + 1:].split("/")
    try:
        fd = os.open(dev_root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        return f"cannot open {dev_root}: {err.strerror}"
    try:
        for part in parts[:-1]:
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    return f"{part} on the way is not a directory (links are not followed)"
                return f"no such node ({err.strerror})"
            os.close(fd)
            fd = child
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except OSError as err:
            return f"no such node ({err.strerror})"
    finally:
        os.close(fd)
    kinds = {stat.S_IFCHR: NodeType.CHAR, stat.S_IFBLK: NodeType.BLOCK,
             stat.S_IFIFO: NodeType.FIFO}
    kind = kinds.get(stat.S_IFMT(st.st_mode))
    if kind is None:
        return "not a device node"
    return HostNode(kind, os.major(st.st_rdev), os.minor(st.st_rdev), stat.S_IMODE(st.st_mode))
