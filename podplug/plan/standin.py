"""The emulated stand-in for a VFIO function, for hosts without an IOMMU.

SUBSTITUTE, named as such everywhere it shows: these machines have no host IOMMU, so no
host device can be assigned with VFIO. ``podplug run --emulate-vfio`` puts, in place of each
planned ``vfio-pci`` function, an emulated QEMU ``nvme`` controller on the SAME bus and
address, with the same id and the same multifunction layout, so the topology, the guest PCI
path and the hot-plug sequence are exactly the planned ones. The stand-in carries the host
BDF it stands for as its serial number (``/sys/class/nvme/nvmeN/serial`` in the guest), and
nvme is a PCIe endpoint with MSI-X, like the GPUs it replaces. Everything guest-side stays
real: in ``vfio`` mode the guest binds it to ``vfio-pci`` under a virtual IOMMU.

:func:`standin_bars` says which memory BARs the guest sees on a stand-in.
"""

from __future__ import annotations

from podplug.model.host import IORESOURCE_MEM, IORESOURCE_MEM_64, Bar, PciFunction
from podplug.model.qemu import QemuFeature
from podplug.plan.model import QemuDevice

STANDIN_DRIVER = "nvme"
STANDIN_VENDOR_DEVICE = "1b36:0010"  # QEMU NVM Express controller
STANDIN_REGISTER_BAR = Bar(0, 16 << 10, IORESOURCE_MEM | IORESOURCE_MEM_64)  # nvme BAR0
STANDIN_FEATURES: frozenset[QemuFeature] = frozenset()  # QEMU features the stand-ins use
_KEPT = ("id", "bus", "addr", "multifunction")


def stand_in(device: QemuDevice) -> QemuDevice:
    """The emulated stand-in for one ``vfio-pci`` function (other devices pass unchanged)."""
    if device.driver != "vfio-pci":
        return device
    props = dict(device.props)
    kept = tuple((k, v) for k, v in device.props if k in _KEPT)
    return QemuDevice(STANDIN_DRIVER, (*kept, ("serial", str(props["host"]))))


def standin_bars(function: PciFunction) -> tuple[Bar, ...]:
    """The memory BARs the guest sees on the stand-in of ``function``."""
    return (STANDIN_REGISTER_BAR,)
