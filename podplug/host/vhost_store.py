"""Kata's vhost-user store, read (only read) without following a link (shell).

Layout (``vhost_user_store_path``, Kata ``getVhostUserHostPath``): ``block/devices/`` holds
block nodes standing for the vhost-user devices (major 241 for vhost-user-blk); the backend
socket of ``block/devices/<name>`` is ``block/sockets/<name>``. A container spec names the
device by its major:minor. Kata ``stat``\\ s every entry (following links); podplug walks the
store one component at a time with ``O_NOFOLLOW`` and looks at each entry with ``lstat``: a
link is neither a node nor a socket, and nothing is ever opened but directories, so a FIFO
planted there cannot block it. At most :data:`MAX_ENTRIES` entries are looked at.
"""

from __future__ import annotations

import errno
import os
import stat

from podplug.errors import HostError
from podplug.model.host import VhostUserNode

MAX_ENTRIES = 4096
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(parts: list[str], store: str) -> int | None:
    """The store's ``block/<...>`` directory open, or None when it is not there."""
    fd = os.open("/", _DIR)
    try:
        for part in [p for p in store.split("/") if p] + parts:
            try:
                child = os.open(part, _DIR, dir_fd=fd)
            except OSError as err:
                if err.errno == errno.ENOENT:
                    return None
                why = "a link or not a directory" if err.errno in (errno.ELOOP, errno.ENOTDIR) \
                    else err.strerror
                raise HostError(os.path.join(store, *parts),
                                f"cannot read the vhost-user store: {part} is {why} "
                                "(links are not followed)") from err
            os.close(fd)
            fd = child
        return os.dup(fd)
    finally:
        os.close(fd)


def scan_store(store: str) -> dict[tuple[int, int], VhostUserNode]:
    """The vhost-user block devices of ``store``, keyed by major:minor (empty when the store
    has no ``block/devices``).

    :raises HostError: a directory on the way is a link or unreadable, or the store holds
        more than :data:`MAX_ENTRIES` entries.
    """
    if not store.startswith("/"):
        raise HostError(store, "the vhost-user store must be an absolute path")
    devices = _open_dir(["block", "devices"], store)
    if devices is None:
        return {}
    sockets = _open_dir(["block", "sockets"], store)
    try:
        names = sorted(os.listdir(devices))
        if len(names) > MAX_ENTRIES:
            raise HostError(os.path.join(store, "block", "devices"),
                            f"{len(names)} entries: more than {MAX_ENTRIES}")
        found: dict[tuple[int, int], VhostUserNode] = {}
        for name in names:
            try:
                st = os.stat(name, dir_fd=devices, follow_symlinks=False)
            except OSError:
                continue  # gone since listed
            if not stat.S_ISBLK(st.st_mode):
                continue
            key = (os.major(st.st_rdev), os.minor(st.st_rdev))
            present = False
            if sockets is not None:
                try:
                    present = stat.S_ISSOCK(os.stat(name, dir_fd=sockets,
                                                    follow_symlinks=False).st_mode)
                except OSError:
                    present = False
            found.setdefault(key, VhostUserNode(
                key[0], key[1], name, os.path.join(store, "block", "sockets", name), present))
        return found
    finally:
        os.close(devices)
        if sockets is not None:
            os.close(sockets)
