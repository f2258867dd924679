"""The QEMU command line for the boot topology and the cold-plugged devices.

Order: machine, virtual IOMMU (it must precede the PCI devices it translates), topology
controllers in root-bus order, iommufd objects, then cold-plugged VFIO functions (functions
1-7 of a slot before function 0 makes no difference on the command line; host order is
kept). Hot-plugged devices are not here: see :mod:`podplug.render.qmp`.
"""

from __future__ import annotations

from collections.abc import Callable

from podplug.errors import UnsupportedPlatform
from podplug.model.enums import Bucket, HotplugMode, Hypervisor
from podplug.plan.model import Plan, PropValue, QemuDevice
from podplug.plan.presentation import controller_device

GUEST_IOMMU = QemuDevice("intel-iommu", (("intremap", "on"), ("caching-mode", "on")))


def _value(value: PropValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value).replace(",", ",,")  # QEMU option syntax: a literal comma is doubled


def device_arg(device: QemuDevice) -> str:
    """``driver,k=v,...`` for ``-device``, from the one property map."""
    return ",".join([device.driver, *(f"{k}={_value(v)}" for k, v in device.props)])


def render_argv(
    plan: Plan, device: Callable[[QemuDevice], QemuDevice] | None = None
) -> list[str]:
    """The planned part of the QEMU command line (no kernel, accel, QMP or agent socket).

    :param device: maps each cold-plugged device before rendering (the emulated stand-in of
        :mod:`podplug.plan.standin`; iommufd objects are then left out).
    """
    if plan.config.hypervisor.kind is not Hypervisor.QEMU:
        raise UnsupportedPlatform("QEMU command line for hypervisor",
                                  plan.config.hypervisor.kind.value, ["qemu"])
    machine = "q35,kernel-irqchip=split" if plan.guest_iommu else "q35"
    argv = ["-machine", machine]
    if plan.guest_iommu:
        argv += ["-device", device_arg(GUEST_IOMMU)]
    for controller in plan.topology.controllers:
        argv += ["-device", device_arg(controller_device(controller))]
    for name in plan.iommufd_objects if device is None else ():
        argv += ["-object", f"iommufd,id={name}"]
    if plan.hotplug is HotplugMode.NATIVE:
        argv += ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]
    for planned in plan.in_bucket(Bucket.COLD_VFIO):
        for qemu in planned.qemu_devices:
            argv += ["-device", device_arg(device(qemu) if device else qemu)]
    return argv
