"""Who QEMU runs as (:mod:`podplug.run.confine`, pure) and what it is handed open
(:mod:`podplug.run.handover`: its refusals; the handing itself is in every real-VM run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from podplug.errors import HostError
from podplug.host.volumes import read_volume
from podplug.run.confine import Account, confinement_for
from podplug.run.handover import _open, boot_files
from podplug.vm.process import Accel, Confinement

NOBODY = Account("nobody", 65534, 65534)


def test_root_drops_to_nobody_with_no_group_under_tcg() -> None:
    confined, note = confinement_for(0, real_vfio=False, accel=Accel.TCG, account=NOBODY,
                                     kvm_gid=108)
    assert confined == Confinement(sandbox=True, user=(65534, 65534), groups=())
    assert note.startswith("QEMU runs as nobody (uid 65534), under")


def test_kvm_adds_only_the_group_of_dev_kvm() -> None:
    confined, note = confinement_for(0, real_vfio=False, accel=Accel.KVM, account=NOBODY,
                                     kvm_gid=108)
    assert confined.groups == (108,) and "group of /dev/kvm" in note


@pytest.mark.parametrize(("euid", "real_vfio", "account", "said"), [
    (1000, False, NOBODY, "podplug's own user (uid 1000)"),
    (0, True, NOBODY, "QEMU RUNS AS ROOT"),
    (0, False, None, "no 'nobody' account"),
])
def test_when_qemu_keeps_podplugs_user(euid: int, real_vfio: bool, account: Account | None,
                                       said: str) -> None:
    confined, note = confinement_for(euid, real_vfio=real_vfio, accel=Accel.TCG,
                                     account=account, kvm_gid=None)
    assert confined.user is None and confined.sandbox and said in note


def test_boot_files_are_open_read_only_and_closed_after(tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "vmlinux", tmp_path / "initrd"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    with boot_files(str(kernel), str(initrd)) as boot:
        assert boot.kernel == f"/proc/self/fd/{boot.fds[0]}"
        assert os.read(boot.fds[1], 1) == b"i"
    with pytest.raises(OSError):
        os.fstat(boot.fds[0])


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "vmlinux"
    os.mkfifo(fifo)
    with pytest.raises(HostError, match="not a regular file"):
        _open(str(fifo), os.O_RDONLY, None)


def test_a_volume_replaced_after_its_facts_were_read_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 8192)
    facts = read_volume(str(disk))
    os.close(_open(str(disk), os.O_RDWR, facts))  # the same file: accepted
    disk.rename(tmp_path / "kept.img")  # kept, so its inode number is not reused
    disk.write_bytes(b"\1" * 8192)
    with pytest.raises(HostError, match="changed since it was read"):
        _open(str(disk), os.O_RDWR, facts)
