"""Who QEMU runs as for ``podplug run``, and why (issue 10: QEMU confined).

The rule, decided here alone (pure; the shell supplies the facts):

* podplug not root: QEMU runs as podplug's own user; there is nothing to drop.
* podplug root and the plan passes real host VFIO devices: QEMU stays root. The group nodes
  (``/dev/vfio/<group>``, ``/dev/vfio/vfio``) are root's, QEMU 7.2's ``vfio-pci`` cannot
  take them open, and podplug does not change the ownership of host device nodes.
* podplug root otherwise: QEMU runs as the unprivileged ``nobody`` with no supplementary
  group but the one owning ``/dev/kvm`` when KVM is the accelerator. What it must open is
  handed to it open instead (:mod:`podplug.run.session`): the guest kernel and initramfs as
  ``/proc/self/fd/N``, each volume as an fd set (``add-fd``, ``/dev/fdset/N``), and a private
  runtime directory (0700) it owns. It can reach nothing else podplug can.

Whatever the user, QEMU runs under ``-sandbox on,obsolete=deny,elevateprivileges=deny,
spawn=deny,resourcecontrol=deny`` (:data:`podplug.vm.process.SANDBOX`) with umask 077.
"""

from __future__ import annotations

from dataclasses import dataclass

from podplug.vm.process import Accel, Confinement

UNPRIVILEGED_USER = "nobody"


@dataclass(frozen=True)
class Account:
    """A host account QEMU may run as (from the password database)."""

    name: str
    uid: int
    gid: int


def confinement_for(euid: int, *, real_vfio: bool, accel: Accel, account: Account | None,
                    kvm_gid: int | None) -> tuple[Confinement, str]:
    """The confinement QEMU gets, and a sentence for the run's notes."""
    sandbox = "under QEMU's seccomp sandbox (-sandbox ... spawn=deny)"
    if euid != 0:
        return Confinement(), f"QEMU runs as podplug's own user (uid {euid}), {sandbox}"
    if real_vfio:
        return Confinement(), (f"QEMU RUNS AS ROOT, {sandbox}: it opens the real VFIO group "
                               "nodes, which podplug does not re-own")
    if account is None:
        return Confinement(), (f"QEMU RUNS AS ROOT, {sandbox}: this host has no "
                               f"'{UNPRIVILEGED_USER}' account to run it as")
    groups = (kvm_gid,) if accel is Accel.KVM and kvm_gid is not None else ()
    confined = Confinement(user=(account.uid, account.gid), groups=groups)
    handed = "given its kernel, initramfs and volumes as open files"
    kvm = " and the group of /dev/kvm" if groups else ""
    return confined, (f"QEMU runs as {account.name} (uid {account.uid}){kvm}, {sandbox}, "
                      f"{handed}")
