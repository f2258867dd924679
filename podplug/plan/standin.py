"""The emulated stand-in for a VFIO function, for hosts without an IOMMU.

SUBSTITUTE, named as such everywhere it shows: these machines have no host IOMMU, so no
host device can be assigned with VFIO. ``podplug run --emulate-vfio`` puts, in place of each
planned ``vfio-pci`` function, an emulated QEMU ``nvme`` controller on the SAME bus and
address, with the same id and the same multifunction layout, so the topology, the guest PCI
path and the hot-plug sequence are exactly the planned ones. nvme is a PCIe endpoint with
MSI-X, like the GPUs it replaces, and everything guest-side stays real: in ``vfio`` mode
the guest binds it to ``vfio-pci`` under a virtual IOMMU.

Its shape is the host function's where it counts for windows: the host function's largest
64-bit prefetchable BAR becomes the stand-in's persistent memory region (``pmrdev``, BAR4,
64-bit prefetchable, backed by a ``memory-backend-ram`` with ``reserve=off`` so no RAM is
set aside), its second largest the controller memory buffer (``cmb_size_mb``, BAR2, 64-bit
prefetchable), so the planned hot-plug windows are exercised by BARs of the host's sizes (a
GPU's 16 GiB or 128 GiB BAR). Not reproduced: the host's non-prefetchable BARs (the stand-in
has nvme's own 16 KiB register BAR0) and its IO BARs; further prefetchable BARs beyond two.

Identity: the stand-in carries the host BDF it stands for as its serial number
(``/sys/class/nvme/nvmeN/serial`` in the guest), checked by the proof.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from podplug.model.host import (
    IORESOURCE_MEM,
    IORESOURCE_MEM_64,
    IORESOURCE_PREFETCH,
    Bar,
    PciFunction,
)
from podplug.model.pci import Bdf
from podplug.plan.model import QemuDevice, QemuObject

STANDIN_DRIVER = "nvme"
STANDIN_VENDOR_DEVICE = "1b36:0010"  # QEMU NVM Express controller
STANDIN_REGISTER_BAR = Bar(0, 16 << 10, IORESOURCE_MEM | IORESOURCE_MEM_64)  # nvme BAR0
PMR_BAR, CMB_BAR = 4, 2
_PREF64 = IORESOURCE_MEM | IORESOURCE_MEM_64 | IORESOURCE_PREFETCH
_MIB = 1 << 20
_KEPT = ("id", "bus", "addr", "multifunction")


def _pow2(size: int) -> int:
    return 1 << (size - 1).bit_length()


def _pref64_sizes(function: PciFunction | None) -> list[int]:
    """The host function's 64-bit prefetchable BARs, largest first (as powers of two)."""
    if function is None:
        return []
    return sorted((_pow2(b.size) for b in function.bars
                   if b.size and not b.is_io and b.prefetchable and b.is_64bit and b.index < 6),
                  reverse=True)


def standin_bars(function: PciFunction | None) -> tuple[Bar, ...]:
    """The memory BARs the guest sees on the stand-in of ``function``."""
    sizes = _pref64_sizes(function)
    bars = [STANDIN_REGISTER_BAR]
    if len(sizes) > 1 and sizes[1] >= _MIB:
        bars.append(Bar(CMB_BAR, sizes[1], _PREF64))
    if sizes:
        bars.append(Bar(PMR_BAR, sizes[0], _PREF64))
    return tuple(sorted(bars, key=lambda b: b.index))


def stand_in(device: QemuDevice, function: PciFunction | None = None) -> QemuDevice:
    """The emulated stand-in for one ``vfio-pci`` function (other devices pass unchanged)."""
    if device.driver != "vfio-pci":
        return device
    props = dict(device.props)
    kept: list[tuple[str, str | int | bool]] = [(k, v) for k, v in device.props if k in _KEPT]
    kept.append(("serial", str(props["host"])))
    objects: list[QemuObject] = []
    bars = {b.index: b.size for b in standin_bars(function)}
    if CMB_BAR in bars:
        kept.append(("cmb_size_mb", bars[CMB_BAR] // _MIB))
    if PMR_BAR in bars:
        backend = QemuObject("memory-backend-ram", f"{device.id}-pmr",
                             (("size", bars[PMR_BAR]), ("reserve", False)))
        kept.append(("pmrdev", backend.id))
        objects.append(backend)
    return QemuDevice(STANDIN_DRIVER, tuple(kept), tuple(objects))


def stand_ins(functions: Mapping[Bdf, PciFunction]) -> Callable[[QemuDevice], QemuDevice]:
    """The stand-in mapping for a host: each ``vfio-pci`` device gets its function's shape."""
    def mapping(device: QemuDevice) -> QemuDevice:
        host = dict(device.props).get("host")
        function = functions.get(Bdf.parse(str(host))) if host is not None else None
        return stand_in(device, function)

    return mapping
