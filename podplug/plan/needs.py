"""What a plan asks of the QEMU binary that runs it (pure).

Read off what the renderers emit, so a plan is refused before boot, naming the feature,
rather than by QEMU halfway through (DESIGN §5: probe the binary, never assume a version):

* iommufd cdevs (``/dev/vfio/devices/vfioN``): ``-object iommufd`` and ``vfio-pci,iommufd=``
  (QEMU 9.0+), on the command line or in QMP ``object-add``/``device_add``; not when the
  functions are emulated stand-ins, which drop the iommufd link;
* a controller with ``pref64-reserve`` / ``mem-reserve`` (the hot-plug windows);
* nvme's persistent memory region, when a stand-in carries a large prefetchable BAR.
"""

from __future__ import annotations

from podplug.model.qemu import QemuFeature
from podplug.plan.model import Plan

_RESERVES = {"pref64-reserve": QemuFeature.PREF64_RESERVE,
             "mem-reserve": QemuFeature.MEM_RESERVE}


def qemu_needs(plan: Plan, *, emulated: bool,
               standin_features: frozenset[QemuFeature] = frozenset()) -> frozenset[QemuFeature]:
    """The QEMU features ``plan`` renders; ``standin_features`` are those of the emulated
    stand-ins, when ``emulated``."""
    needs: set[QemuFeature] = set()
    if plan.iommufd_objects and not emulated:
        needs |= {QemuFeature.IOMMUFD_OBJECT, QemuFeature.VFIO_IOMMUFD}
    for controller in plan.topology.controllers:
        needs |= {_RESERVES[key] for key, _ in controller.reserves if key in _RESERVES}
    if emulated and any(d.functions for d in plan.devices):
        needs |= standin_features
    return frozenset(needs)
