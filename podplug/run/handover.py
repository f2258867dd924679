"""Files handed to QEMU open rather than by name (issue 10), so that a QEMU running as an
unprivileged user (:mod:`podplug.run.confine`) reaches exactly the files of its plan.

* The guest kernel and initramfs: opened read-only here, inherited by QEMU
  (``subprocess`` ``pass_fds``) and named ``/proc/self/fd/N`` on its command line (QEMU
  opens ``-kernel`` and ``-initrd`` by name only). Linux opens that link again through the
  descriptor's file: the path (root's 0700 home holding the image cache) is spared, the
  file's own mode is not; podplug's image files are 0644. Not ``/dev/fd/N``: that link is
  made by udev or systemd, not the kernel, and a chroot or a container's ``/dev`` may lack
  it (the nested check's L1 did: "could not open kernel file '/dev/fd/3'").
* Each volume: opened here with the access its proof needs (``O_RDONLY`` for the read-only
  proof, ``O_RDWR`` otherwise), checked to be the very file whose facts were read before
  the run (device and inode), and sent with QMP ``add-fd`` (``SCM_RIGHTS``) into an fd set;
  ``blockdev-add`` then names ``/dev/fdset/N``, which QEMU opens by duplicating the
  descriptor of matching access mode (QEMU ``qapi/misc.json``, ``add-fd``); QEMU 10.0 also
  matches ``O_DIRECT`` ("Failed to find file descriptor with matching flags=0x4002" for a
  ``cache.direct`` volume whose descriptor lacked it; 7.2 set it with ``fcntl``), so a
  volume opened with ``cache.direct`` is opened ``O_DIRECT`` here. After the run
  each set is removed (``remove-fd``); QEMU closes a removed set's descriptors once no
  block node uses them. Rendered plans (``podplug plan``) keep the real names: that is
  what Kata's runtime sends.
* Each vhost-user back end's socket: connected here (bounded, never a wait without end), the
  connected socket sent with QMP ``getfd`` under a name, and the chardev made with
  ``"addr": {"type": "fd", "data": {"str": NAME}}``, which QEMU takes as the connection
  (QEMU ``qapi/char.json`` ``ChardevSocket``, ``qapi/sockets.json`` ``SocketAddressLegacy``).
  A confined QEMU cannot reach a back end's socket in Kata's store (root's: measured,
  "Failed to connect to ...: Permission denied"). Not with ``reconnect`` set: QEMU
  reconnects by path, so then it gets the path and needs to reach it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace

from podplug.errors import HostError, PodplugError
from podplug.host.volumes import VolumeFacts
from podplug.plan.model import BlockdevNode, Chardev
from podplug.vm.process import Vm


@dataclass(frozen=True)
class BootFiles:
    """The guest kernel and initramfs, open, as QEMU's command line names them."""

    kernel: str
    initrd: str
    fds: tuple[int, ...]


@contextlib.contextmanager
def boot_files(kernel: str, initrd: str) -> Iterator[BootFiles]:
    """Open the kernel and initramfs for QEMU to inherit; closed on every exit path."""
    fds: list[int] = []
    try:
        for path in (kernel, initrd):
            fds.append(_open(path, os.O_RDONLY, None))
        yield BootFiles(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}", tuple(fds))
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def fdset_drives(vm: Vm, drives: dict[str, tuple[BlockdevNode, VolumeFacts]]
                 ) -> Iterator[dict[str, BlockdevNode]]:
    """Each volume sent to ``vm`` as an fd set; yields the nodes that name the sets.

    :raises HostError: a volume cannot be opened, or is no longer the file read before.
    """
    handed: dict[str, BlockdevNode] = {}
    fds: list[int] = []
    sets: list[int] = []
    try:
        for fdset_id, (name, (node, facts)) in enumerate(sorted(drives.items()), start=1):
            access = (os.O_RDONLY if node.read_only else os.O_RDWR) | \
                (os.O_DIRECT if node.direct else 0)
            fd = _open(node.filename, access, facts)
            fds.append(fd)
            vm.add_fd(fd, fdset_id, f"podplug volume {node.filename}")
            sets.append(fdset_id)
            handed[name] = replace(node, filename=f"/dev/fdset/{fdset_id}")
        yield handed
    finally:
        for fdset_id in sets:
            if vm.alive:
                with contextlib.suppress(PodplugError):
                    vm.execute("remove-fd", {"fdset-id": fdset_id})
        for fd in fds:
            os.close(fd)


CONNECT_TIMEOUT_S = 5.0


@contextlib.contextmanager
def handed_sockets(vm: Vm, chardevs: dict[str, Chardev]) -> Iterator[dict[str, Chardev]]:
    """Each back end's socket connected and handed to ``vm``; yields the chardevs naming
    them (one with ``reconnect`` keeps its path). podplug's copies are closed on exit, and
    a handed socket no chardev took is closed in QEMU (``closefd``).

    :raises HostError: a back end's socket does not take the connection.
    """
    handed: dict[str, Chardev] = {}
    held: list[socket.socket] = []
    try:
        for ident, chardev in sorted(chardevs.items()):
            if chardev.reconnect:
                handed[ident] = chardev
                continue
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            held.append(conn)
            conn.settimeout(CONNECT_TIMEOUT_S)
            try:
                conn.connect(chardev.path)
            except OSError as exc:
                why = exc.strerror or type(exc).__name__
                raise HostError(chardev.path, f"the vhost-user back end does not answer: "
                                f"{why}") from exc
            name = f"fd-{ident}"
            vm.get_fd(conn.fileno(), name)
            handed[ident] = replace(chardev, fd_name=name)
        yield handed
    finally:
        for chardev in handed.values():
            if chardev.fd_name and vm.alive:
                with contextlib.suppress(PodplugError):  # taken by its chardev: no such fd
                    vm.execute("closefd", {"fdname": chardev.fd_name})
        for conn in held:
            conn.close()


def _open(path: str, access: int, facts: VolumeFacts | None) -> int:
    """Open a regular file (or, for a volume, a block device) without blocking on anything
    else; for a volume, the same inode whose facts were read."""
    try:
        fd = os.open(path, access | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise HostError(path, f"cannot open for QEMU: {exc.strerror}") from exc
    info = os.fstat(fd)
    kinds = stat.S_ISREG(info.st_mode) or (facts is not None and stat.S_ISBLK(info.st_mode))
    same = facts is None or facts.inode == (info.st_dev, info.st_ino)
    if not (kinds and same):
        os.close(fd)
        why = "not a regular file or block device" if not kinds else \
            "changed since it was read before the run"
        raise HostError(path, why)
    if facts is not None:  # QEMU's file driver expects blocking I/O
        os.set_blocking(fd, True)
    return fd
