"""What a plan asks of the QEMU binary that runs it (pure).

Read off the devices and objects the run will create (the topology's controllers, the window
keepers, the VFIO functions as they will be plugged, real or stand-in), so a plan is refused
before boot, naming the feature, rather than by QEMU halfway through (DESIGN §5: probe the
binary, never assume a version). Each feature is one (device or object type, property)
pair, the same pair :mod:`podplug.vm.probe` asks the binary about.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from podplug.model.qemu import QemuFeature
from podplug.plan.model import Plan, QemuDevice
from podplug.plan.presentation import controller_device, keeper_devices

#: (device driver, property) -> the feature a device using that property needs
DEVICE_FEATURES: dict[tuple[str, str], QemuFeature] = {
    ("vfio-pci", "iommufd"): QemuFeature.VFIO_IOMMUFD,
    ("pcie-root-port", "pref64-reserve"): QemuFeature.PREF64_RESERVE,
    ("pcie-root-port", "mem-reserve"): QemuFeature.MEM_RESERVE,
    ("pci-bridge", "pref64-reserve"): QemuFeature.PREF64_RESERVE,
    ("pci-bridge", "mem-reserve"): QemuFeature.MEM_RESERVE,
    ("nvme", "pmrdev"): QemuFeature.NVME_PMR,
}
#: device driver -> the feature the driver itself is
DRIVER_FEATURES: dict[str, QemuFeature] = {"vhost-user-blk-pci": QemuFeature.VHOST_USER_BLK}
#: (object type, property or None for the type itself) -> feature
OBJECT_FEATURES: dict[tuple[str, str | None], QemuFeature] = {
    ("iommufd", None): QemuFeature.IOMMUFD_OBJECT,
    ("memory-backend-ram", "reserve"): QemuFeature.MEMORY_NORESERVE,
}


def device_needs(devices: Iterable[QemuDevice]) -> frozenset[QemuFeature]:
    """The features these devices and the objects they name use."""
    needs: set[QemuFeature] = set()
    for device in devices:
        needs |= {f for (driver, prop), f in DEVICE_FEATURES.items()
                  if driver == device.driver and prop in dict(device.props)}
        if device.driver in DRIVER_FEATURES:
            needs.add(DRIVER_FEATURES[device.driver])
        for obj in device.objects:
            needs |= {f for (kind, prop), f in OBJECT_FEATURES.items()
                      if kind == obj.qom_type and (prop is None or prop in dict(obj.props))}
    return frozenset(needs)


def qemu_needs(plan: Plan, *,
               device: Callable[[QemuDevice], QemuDevice] = lambda q: q) -> frozenset[QemuFeature]:
    """The QEMU features ``plan`` renders, its VFIO functions mapped by ``device`` (the
    emulated stand-ins) as they will be plugged."""
    created = [controller_device(c) for c in plan.topology.controllers]
    created += keeper_devices(plan.topology.controllers)
    created += [device(q) for d in plan.devices for q in d.qemu_devices]
    shared = {QemuFeature.SHARED_RAM} if plan.shared_memory else set()
    return device_needs(created) | shared
