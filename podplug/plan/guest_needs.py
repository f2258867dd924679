"""What a plan asks of the guest kernel: the module groups its devices need (pure).

podplug's guest image carries its drivers as modules in groups (:class:`ModuleGroup`).
``/init`` loads only ``boot`` (the agent's channel) before the agent answers; the groups
returned here go on the kernel command line as ``podplug.load=G1,G2`` and the agent loads
them in the background while the host goes on. Boot then pays for nothing the plan does not
use (issue 12: "load only the modules the plan needs"). The groups are read off the same
devices QEMU is given (the controllers, and every planned device as it will be plugged,
VFIO functions mapped to their stand-ins), as :mod:`podplug.plan.needs` does for QEMU.
"""

from __future__ import annotations

from collections.abc import Callable

from podplug.model.enums import AgentDeviceType, ModuleGroup
from podplug.plan.model import Plan, QemuDevice
from podplug.plan.presentation import controller_device

#: QEMU device model -> the group holding its guest driver
DRIVER_GROUPS: dict[str, ModuleGroup] = {
    "virtio-blk-pci": ModuleGroup.BLK,
    "vhost-user-blk-pci": ModuleGroup.BLK,  # a virtio-blk device to the guest
    "virtio-scsi-pci": ModuleGroup.SCSI,
    "scsi-hd": ModuleGroup.SCSI,
    "nvme": ModuleGroup.NVME,
}

#: PCI class code (24-bit) -> the group holding the guest driver for it: in ``guest-kernel``
#: mode a real passed-through function keeps the guest's own driver, and the image has one
#: only for NVMe controllers (class 01 08 02, PCI Code and ID Assignment 1.x)
CLASS_GROUPS: dict[int, ModuleGroup] = {0x010802: ModuleGroup.NVME}

#: the kernel command-line word the agent reads (podplug/guest/agent.sh, ``preload``)
CMDLINE_KEY = "podplug.load"


def guest_module_groups(plan: Plan, *,
                        device: Callable[[QemuDevice], QemuDevice] = lambda q: q
                        ) -> tuple[ModuleGroup, ...]:
    """The groups beyond ``boot`` that the guest of ``plan`` needs, in a fixed order.

    A ``vfio-pci`` agent entry needs ``vfio``: the agent binds its functions to the
    guest's vfio-pci driver (Kata's ``vfio_mode = "vfio"``); ``vfio-pci-gk`` entries keep
    the guest driver of the device itself, which a stand-in maps to ``nvme``, and a real
    function gets from its class (:data:`CLASS_GROUPS`).
    """
    created = [controller_device(c) for c in plan.topology.controllers]
    created += [device(q) for d in plan.devices for q in d.qemu_devices]
    groups = {DRIVER_GROUPS[q.driver] for q in created if q.driver in DRIVER_GROUPS}
    if any(d.agent is not None and d.agent.type is AgentDeviceType.VFIO_PCI
           for d in plan.devices):
        groups.add(ModuleGroup.VFIO)
    groups |= {CLASS_GROUPS[f.class_code] for d in plan.devices
               if d.agent is not None and d.agent.type is AgentDeviceType.VFIO_PCI_GK
               for f in d.functions if f.class_code in CLASS_GROUPS}
    return tuple(g for g in ModuleGroup if g in groups)


def after_release(plan: Plan, groups: tuple[ModuleGroup, ...]
                  ) -> tuple[tuple[ModuleGroup, ...], tuple[ModuleGroup, ...]]:
    """``groups`` split into (loaded from boot, loaded once the window keepers are gone).

    A window keeper is an nvme controller (:mod:`podplug.plan.windows`) unplugged right
    after boot. Bound to the guest's nvme driver, its removal can race the driver's
    asynchronous probe: measured here, Linux 6.1 oopsed in ``nvme_dbbuf_dma_free`` (guest
    panic) when keepers were released 0.5 s after nvme was loaded. So with keepers in the
    plan, ``nvme`` is loaded only after their release, and never binds them.
    """
    if not any(c.keeper for c in plan.topology.controllers):
        return groups, ()
    return (tuple(g for g in groups if g is not ModuleGroup.NVME),
            tuple(g for g in groups if g is ModuleGroup.NVME))


def cmdline_word(groups: tuple[ModuleGroup, ...]) -> str:
    """``podplug.load=blk,nvme`` (``podplug.load=`` for none: nothing is preloaded)."""
    return f"{CMDLINE_KEY}={','.join(g.value for g in groups)}"
