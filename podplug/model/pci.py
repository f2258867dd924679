"""PCI addresses: the host's BDF and Kata's guest "PCI path".

* :class:`Bdf` is ``DDDD:BB:DD.F`` as sysfs names devices (``/sys/bus/pci/devices``).
* :class:`GuestPciPath` is Kata's form (``src/runtime/virtcontainers/types/pcipath.go``): the
  5-bit slot of every bridge or port on the way from the root bus, then the device's own slot,
  each ``%02x``, joined by ``/`` (``"02/00"``: a device at slot 0 behind the port at root-bus
  slot 2). Functions are not part of the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BDF = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])$")


@dataclass(frozen=True, order=True)
class Bdf:
    """A PCI function address: domain, bus, device (slot) and function."""

    domain: int
    bus: int
    device: int
    function: int

    @classmethod
    def parse(cls, text: str) -> Bdf:
        """Parse ``0000:01:00.0``; raises ``ValueError`` on anything else."""
        match = _BDF.match(text.strip())
        if match is None:
            raise ValueError(f"not a PCI address (DDDD:BB:DD.F): {text!r}")
        domain, bus, device, function = match.groups()
        dev = int(device, 16)
        if dev > 0x1F:
            raise ValueError(f"PCI device number above 0x1f: {text!r}")
        return cls(int(domain, 16), int(bus, 16), dev, int(function))

    @property
    def slot_key(self) -> tuple[int, int, int]:
        """(domain, bus, device): the functions sharing one physical slot."""
        return (self.domain, self.bus, self.device)

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.device:02x}.{self.function:x}"


@dataclass(frozen=True, order=True)
class GuestPciPath:
    """Kata's guest PCI path: slots from the root bus down to the device."""

    slots: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.slots or any(not 0 <= s <= 0x1F for s in self.slots):
            raise ValueError(f"a PCI path needs 1+ slots in 0..0x1f: {self.slots}")

    @classmethod
    def parse(cls, text: str) -> GuestPciPath:
        try:
            return cls(tuple(int(part, 16) for part in text.split("/")))
        except ValueError as exc:
            raise ValueError(f"not a guest PCI path (xx/yy...): {text!r}") from exc

    def child(self, slot: int) -> GuestPciPath:
        return GuestPciPath((*self.slots, slot))

    def __str__(self) -> str:
        return "/".join(f"{s:02x}" for s in self.slots)


# PCI class codes (24-bit: base class, subclass, prog-if), matched exactly, never by mask
# (Kata #11912: NVSwitches, class 0x0680, were filtered out as "bridges").
CLASS_HOST_BRIDGE = 0x060000
CLASS_PCI_BRIDGE = 0x060400
CLASS_DISPLAY_VGA = 0x030000
CLASS_DISPLAY_3D = 0x030200
CLASS_AUDIO = 0x040300
CLASS_OTHER_BRIDGE = 0x068000
CLASS_NVME = 0x010802


def is_bridge_class(class_code: int) -> bool:
    """True for host bridges (0x0600) and PCI-to-PCI bridges (0x0604), by exact class.

    These are skipped when a whole IOMMU group is passed through (Kata
    ``GetAllVFIODevicesFromIOMMUGroup``); 0x0680 ("other bridge", e.g. NVSwitch) is NOT one.
    """
    return (class_code >> 8) in (CLASS_HOST_BRIDGE >> 8, CLASS_PCI_BRIDGE >> 8)
