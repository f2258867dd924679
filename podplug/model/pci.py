"""PCI addresses: the host's BDF and Kata's guest "PCI path".

* :class:`Bdf` is ``DDDD:BB:DD.F`` as sysfs names devices (``/sys/bus/pci/devices``).
* :class:`GuestPciPath` is the path a kata-agent ``Device`` entry names a PCI function by: the
  5-bit slot of every bridge or port on the way from the root bus, then the device's own
  slot, each ``%02x``, joined by ``/`` (``"02/00"``: slot 0 behind the port at root-bus slot
  2), and the device's function as ``.F`` on the last element when it is not 0
  (``"02/00.1"``).

What each side of Kata can express (read in kata-containers at 7c6ba40c54):

=============================================  ============================================
Go runtime ``types/pcipath.go`` ``PciPath``    slots only: ``PciSlotFromString`` parses each
                                               element as one hex number, so ``00.1`` is an
                                               error, and ``qomGetPciPath`` refuses a device
                                               at a non-zero function. The Go runtime can
                                               only name function 0, which is why it gives
                                               every VFIO function a port of its own.
Rust agent 2.0-2.2 (``pci::Slot``)             slots only, like the Go runtime.
Rust agent 2.3.0 and later (``pci::SlotFn``,   every element is ``SS[.F]``, the function
commit 8528157b9b, 2021-09)                    defaulting to 0: ``03/00.1`` is function 1 of
                                               the device in slot 0 behind root-bus slot 3.
=============================================  ============================================

podplug writes for the agent: every Kata 3.x agent parses ``SS[.F]``, so a function other
than 0 is spelled on the last element (``03/00.1``) and function 0 keeps the short form
(``03/00``), which every generation reads. Ports and bridges are always function 0 in
podplug's plans (one root port per root-bus slot), so only the last element ever carries a
function. An agent older than 2.3 cannot be told about function 1 of a slot at all.
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
    """Kata's guest PCI path: slots from the root bus down to the device, and the device's
    own function (the ``.F`` of the last element, Kata agent ``SlotFn``)."""

    slots: tuple[int, ...]
    function: int = 0

    def __post_init__(self) -> None:
        if not self.slots or any(not 0 <= s <= 0x1F for s in self.slots):
            raise ValueError(f"a PCI path needs 1+ slots in 0..0x1f: {self.slots}")
        if not 0 <= self.function <= 7:
            raise ValueError(f"a PCI function is 0..7: {self.function}")

    @classmethod
    def parse(cls, text: str) -> GuestPciPath:
        """Parse ``SS/SS[.F]`` (hex slots; a function only on the last element)."""
        slots: list[int] = []
        function = 0
        parts = text.split("/")
        for index, part in enumerate(parts):
            slot, dot, func = part.partition(".")
            if dot and index != len(parts) - 1:
                raise ValueError(f"not a guest PCI path podplug plans ({text!r}): only the "
                                 "device itself may sit at a non-zero function")
            if not _HEX_SLOT.fullmatch(slot) or (dot and not _FUNCTION.fullmatch(func)):
                raise ValueError(f"not a guest PCI path (SS/SS[.F], hex): {text!r}")
            slots.append(int(slot, 16))
            function = int(func) if dot else 0
        try:
            return cls(tuple(slots), function)
        except ValueError as exc:
            raise ValueError(f"not a guest PCI path (SS/SS[.F], hex): {text!r}") from exc

    def child(self, slot: int) -> GuestPciPath:
        """The path of function 0 at ``slot`` on the bus below this bridge or port."""
        return GuestPciPath((*self.slots, slot))

    def at_function(self, function: int) -> GuestPciPath:
        """The same slot, another function (``03/00`` -> ``03/00.1``)."""
        return GuestPciPath(self.slots, function)

    @property
    def slot_path(self) -> GuestPciPath:
        """The path of the slot (function 0): what every function of one device shares."""
        return GuestPciPath(self.slots)

    def __str__(self) -> str:
        text = "/".join(f"{s:02x}" for s in self.slots)
        return f"{text}.{self.function}" if self.function else text


_HEX_SLOT = re.compile(r"[0-9a-fA-F]{1,2}")
_FUNCTION = re.compile(r"[0-7]")


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
