"""The back ends of a run's vhost-user-blk volumes: found in Kata's store, or served.

A planned vhost-user-blk volume names its back end's socket, ``<store>/block/sockets/<name>``
(:mod:`podplug.host.vhost_store`). For ``podplug run``:

* a unix socket is there now: a back end not podplug's (SPDK, say) listens. QEMU connects
  to it as Kata's would; the proof is read-only in the guest, and the contents are not
  compared with anything (podplug cannot read that back end's disk from the host);
* no socket is there (the tests, a node whose back end is not up): a STAND-IN back end.
  podplug makes a scratch image in the run's private directory, its first and last 4 KiB
  random, and serves it with a real ``qemu-storage-daemon`` (:mod:`podplug.vm.storage_daemon`)
  at a socket of that directory; the run says so. The image is podplug's, so its proof is
  the full one (contents, write, filesystem round trip). The store is never written to.

The daemon runs as the VM's user, started before QEMU and stopped after it (its context
encloses the VM's), so QEMU unplugs the device and removes its chardev first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from podplug.host.volumes import VolumeFacts, read_volume
from podplug.plan.model import Chardev, Plan
from podplug.run.volumes import Depth
from podplug.vm.storage_daemon import Export, is_socket

SCRATCH_BYTES = 64 << 20
_EDGE = 4096


@dataclass(frozen=True)
class Backend:
    """One vhost-user-blk volume's back end for this run."""

    container_path: str
    chardev: Chardev  # as plugged: the socket QEMU connects to
    facts: VolumeFacts | None  # the scratch image's; None for a back end not podplug's
    depth: Depth
    export: Export | None = None  # set when podplug serves it

    @property
    def note(self) -> str:
        if self.export is None:
            return (f"{self.container_path}: vhost-user back end at {self.chardev.path} is not "
                    "podplug's: proven read-only, contents not compared")
        return (f"VHOST-USER BACKEND STAND-IN: {self.container_path}: nothing listens at its "
                f"store socket; podplug serves a {SCRATCH_BYTES >> 20} MiB scratch image with "
                f"qemu-storage-daemon at {self.chardev.path}")


def _scratch(path: Path, owner: tuple[int, int] | None) -> None:
    """A new image (``O_EXCL``: never an existing file), random at both ends."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.ftruncate(fd, SCRATCH_BYTES)
        os.pwrite(fd, os.urandom(_EDGE), 0)
        os.pwrite(fd, os.urandom(_EDGE), SCRATCH_BYTES - _EDGE)
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)


def plan_backends(plan: Plan, workdir: Path,
                  owner: tuple[int, int] | None) -> dict[str, Backend]:
    """Each vhost-user-blk volume's back end, keyed by its chardev id; the images of the
    stand-ins are made in ``workdir/vhost-user`` (owned by ``owner``, the daemon's user)."""
    backends: dict[str, Backend] = {}
    served = workdir / "vhost-user"
    for device in plan.devices:
        chardev = device.chardev
        if chardev is None:
            continue
        path = device.request.path
        if is_socket(chardev.path):
            backends[chardev.id] = Backend(path, chardev, None, Depth.READ_ONLY)
            continue
        if not served.exists():
            served.mkdir(mode=0o700)
            if owner is not None:
                os.chown(served, *owner)
        name = chardev.id.removeprefix("char-")
        image, sock = served / f"{name}.img", served / f"{name}.sock"
        _scratch(image, owner)
        backends[chardev.id] = Backend(path, replace(chardev, path=str(sock)),
                                       read_volume(str(image)), Depth.DESTRUCTIVE,
                                       Export(name, image, sock))
    return backends
