"""The QEMU command line for the boot topology and the cold-plugged devices.

Order: machine (with ``memory-backend=`` naming a shared ``memory-backend-memfd`` when a
vhost-user backend maps guest RAM: QEMU ``docs/system/devices/vhost-user.rst``, a shared
memory object the size of ``-m``), virtual IOMMU (it must precede the PCI devices it
translates), topology controllers in root-bus order, the window keepers of downstream
ports (each after its memory backend), then the cold-plugged VFIO functions, each after the
objects it names (iommufd, a stand-in's memory backend); host order is kept (functions 1-7
of a slot before function 0 makes no difference on the command line). Hot-plugged devices
are not here: see :mod:`podplug.render.qmp`.
"""

from __future__ import annotations

from collections.abc import Callable

from podplug.errors import UnsupportedPlatform
from podplug.model.enums import Bucket, HotplugMode, Hypervisor
from podplug.plan.model import Plan, PropValue, QemuDevice, QemuObject
from podplug.plan.presentation import controller_device, keeper_devices

GUEST_IOMMU = QemuDevice("intel-iommu", (("intremap", "on"), ("caching-mode", "on")))
DEFAULT_MEMORY_MIB = 2048  # Kata default_memory
GUEST_RAM = "podplug-ram"


def guest_ram(memory_mib: int) -> QemuObject:
    """Guest RAM a vhost-user backend can map: a memfd shared with the backend."""
    return QemuObject("memory-backend-memfd", GUEST_RAM,
                      (("size", f"{memory_mib}M"), ("share", True)))


def _value(value: PropValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value).replace(",", ",,")  # QEMU option syntax: a literal comma is doubled


def device_arg(device: QemuDevice) -> str:
    """``driver,k=v,...`` for ``-device``, from the one property map."""
    return ",".join([device.driver, *(f"{k}={_value(v)}" for k, v in device.props)])


def object_arg(obj: QemuObject) -> str:
    """``qom_type,id=...,k=v`` for ``-object``."""
    return ",".join([obj.qom_type, f"id={obj.id}", *(f"{k}={_value(v)}" for k, v in obj.props)])


def render_argv(
    plan: Plan, device: Callable[[QemuDevice], QemuDevice] | None = None, *,
    memory_mib: int = DEFAULT_MEMORY_MIB,
) -> list[str]:
    """The planned part of the QEMU command line (no kernel, accel, QMP or agent socket).

    :param device: maps each cold-plugged device before rendering (the emulated stand-ins of
        :mod:`podplug.plan.standin`, which name objects of their own).
    :param memory_mib: the guest's RAM (``-m``), which a shared backend must match.
    """
    if plan.config.hypervisor.kind is not Hypervisor.QEMU:
        raise UnsupportedPlatform("QEMU command line for hypervisor",
                                  plan.config.hypervisor.kind.value, ["qemu"])
    machine = "q35,kernel-irqchip=split" if plan.guest_iommu else "q35"
    argv = []
    if plan.shared_memory:
        machine += f",memory-backend={GUEST_RAM}"
        argv += ["-object", object_arg(guest_ram(memory_mib))]
    argv += ["-machine", machine]
    if plan.guest_iommu:
        argv += ["-device", device_arg(GUEST_IOMMU)]
    for controller in plan.topology.controllers:
        argv += ["-device", device_arg(controller_device(controller))]
    made: set[str] = set()
    cold = [q for d in plan.in_bucket(Bucket.COLD_VFIO) for q in d.qemu_devices]
    mapped = [device(q) if device else q for q in cold]
    for qemu in (*keeper_devices(plan.topology.controllers), *mapped):
        for obj in qemu.objects:
            if obj.id not in made:
                made.add(obj.id)
                argv += ["-object", object_arg(obj)]
    for keeper in keeper_devices(plan.topology.controllers):
        argv += ["-device", device_arg(keeper)]
    if plan.hotplug is HotplugMode.NATIVE:
        argv += ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]
    for qemu in mapped:
        argv += ["-device", device_arg(qemu)]
    return argv
