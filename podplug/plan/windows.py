"""How much memory a hot-pluggable port must set aside, and how it gets it (pure).

Firmware sizes a bridge window only for the devices present at boot, and on a hot-add Linux
places a BAR only inside the window the port already has: it never grows a window under
ACPI hot-plug, and under native hot-plug its retry can release the window for good. So the
window of every port that can take a hot-plugged device is decided at boot, here, from the
BARs of the host functions that can land there. Measured with QEMU 7.2, SeaBIOS 1.16.2 and a
Linux 6.1 guest (``docs/hotplug-windows.md``; QEMU ``docs/pcie.txt`` "Hot-plug"):

* A ``pcie-root-port`` takes ``mem-reserve`` / ``pref64-reserve`` hints, which SeaBIOS
  honours as window sizes, but it does not align the window to its size: a 16 GiB BAR did
  not fit a 16 GiB window at ``0x1100000000`` and did fit a 32 GiB one. A window holds BARs of
  total T whose largest is L when it spans T + L (the largest BAR then finds an aligned
  place whatever the base, the others pack after it): :func:`fit`.
* ``xio3130-downstream`` has no reserve properties, and SeaBIOS gives an empty downstream
  port 2 MiB windows whatever the root port above it reserves; the hot-added 16 GiB BAR
  found no space with 16 or 32 GiB reserved on the switch's root port. What firmware does
  size is a device present at boot, and the window stays after the device is unplugged. So
  a downstream port that will take a large device gets a *window keeper*: an emulated
  ``nvme`` whose persistent memory region (BAR4, 64-bit prefetchable, a power of two) is as
  large as the window needed, cold-plugged there and unplugged over QMP once the guest is
  up, before anything is hot-plugged onto the port (:func:`keeper_size`). Its 16 KiB
  register BAR holds no non-prefetchable window beyond SeaBIOS's 2 MiB minimum: a device
  that needs more there cannot be hot-plugged onto a downstream port (:data:`DOWNSTREAM_MEM`).
* 32-bit prefetchable BARs count toward the non-prefetchable window: ``pref32-reserve`` and
  ``pref64-reserve`` exclude each other, SeaBIOS moves every prefetchable window above 4 GiB
  once a large one exists, and Linux places a 32-bit prefetchable BAR in the
  non-prefetchable window (measured with ``secondary-vga``).
* ``pci-hole64-size`` is not needed: QEMU grows the 64-bit ``_CRS`` window to what firmware
  programmed (a 128 GiB reserve gave ``root bus resource [mem 0x100000000-0x20ffffffff]``).
* No IO windows (``io-reserve=0``): the devices podplug places need none.

Spare ports (configured beyond what the devices need) can take any host function that is
bound to vfio-pci, so their window is the largest such unit's, and at least
:data:`DEFAULT_SPARE_WINDOW` (``--spare-window`` changes it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from podplug.model.host import Bar, HostInventory, PciFunction

MIB = 1 << 20
GIB = 1 << 30
FIRMWARE_MINIMUM = 2 * MIB  # the window SeaBIOS gives any bridge without a hint
DOWNSTREAM_MEM = FIRMWARE_MINIMUM  # what a downstream port's keeper leaves non-prefetchable


@dataclass(frozen=True, order=True)
class Window:
    """A port's memory windows: non-prefetchable (32-bit) and 64-bit prefetchable bytes.

    ``aligned``: the prefetchable window is naturally aligned (firmware sized it for a
    window keeper's BAR), so it holds power-of-two BARs up to its full size; otherwise it
    holds BARs whose total plus largest fits (:func:`fit`).
    """

    mem: int = 0
    pref64: int = 0
    aligned: bool = False

    def __or__(self, other: Window) -> Window:
        """The window that fits either (elementwise maximum)."""
        return Window(max(self.mem, other.mem), max(self.pref64, other.pref64),
                      self.aligned and other.aligned)

    @property
    def empty(self) -> bool:
        return not (self.mem or self.pref64)


FIRMWARE_WINDOW = Window(FIRMWARE_MINIMUM, FIRMWARE_MINIMUM)  # an empty port, no hint
NO_WINDOW = Window()


DEFAULT_SPARE_WINDOW = Window(mem=8 * MIB, pref64=8 * GIB)


def _round_up(size: int, granule: int) -> int:
    return -(-size // granule) * granule


def fit(sizes: Iterable[int]) -> int:
    """The window that holds BARs of these (power-of-two) sizes at any 1 MiB-aligned base:
    their total plus the largest, in whole MiB (whole GiB from 1 GiB); 0 when SeaBIOS's
    2 MiB minimum already does."""
    sizes = [s for s in sizes if s > 0]
    if not sizes:
        return 0
    need = sum(sizes) + max(sizes)
    if need <= FIRMWARE_MINIMUM:
        return 0
    return _round_up(need, GIB if need >= GIB else MIB)


def _mem_bars(bars: Iterable[Bar]) -> tuple[list[int], list[int]]:
    """(non-prefetchable window sizes, 64-bit prefetchable window sizes) of some BARs."""
    mem: list[int] = []
    pref: list[int] = []
    for bar in bars:
        if bar.is_io or not bar.size or bar.index > 5:
            continue
        (pref if bar.prefetchable and bar.is_64bit else mem).append(bar.size)
    return mem, pref


def unit_window(functions: Iterable[PciFunction]) -> Window:
    """The window a port needs for the functions of one plug unit."""
    mem, pref = _mem_bars(b for f in functions for b in f.bars)
    return Window(fit(mem), fit(pref))


def keeper_size(functions: Iterable[PciFunction]) -> int:
    """The PMR of the window keeper for a downstream port that will take these functions: a
    power of two holding all their 64-bit prefetchable BARs (a naturally aligned BAR, so
    power-of-two BARs totalling no more than it pack into it); 0 when none is needed."""
    _, pref = _mem_bars(b for f in functions for b in f.bars)
    total = sum(pref)
    if total <= FIRMWARE_MINIMUM // 2:
        return 0
    return 1 << (total - 1).bit_length()


def shortfall(window: Window, functions: Iterable[PciFunction]) -> Window:
    """What ``window`` lacks to take these functions hot-plugged (empty: they fit)."""
    functions = tuple(functions)
    mem, pref = _mem_bars(b for f in functions for b in f.bars)
    mem_need = fit(mem)
    pref_need = keeper_size(functions) if window.aligned else fit(pref)
    return Window(max(0, mem_need - window.mem), max(0, pref_need - window.pref64))


def assignable_units(inventory: HostInventory) -> tuple[tuple[PciFunction, ...], ...]:
    """The host's functions bound to vfio-pci, grouped by slot: what a spare port may get."""
    by_slot: dict[tuple[int, int, int], list[PciFunction]] = {}
    for function in sorted(inventory.functions.values(), key=lambda f: f.bdf):
        if function.driver == "vfio-pci" and not function.is_bridge:
            by_slot.setdefault(function.bdf.slot_key, []).append(function)
    return tuple(tuple(u) for u in by_slot.values())


def spare_window(inventory: HostInventory, floor: Window = DEFAULT_SPARE_WINDOW) -> Window:
    """The window of a spare root port: the largest assignable unit's, at least ``floor``."""
    window = floor
    for unit in assignable_units(inventory):
        window = window | unit_window(unit)
    return window


def spare_keeper_size(inventory: HostInventory, floor: Window = DEFAULT_SPARE_WINDOW) -> int:
    """The keeper PMR of a spare downstream port: the largest assignable unit's, or the
    floor's prefetchable window rounded down to a power of two."""
    size = 1 << (floor.pref64.bit_length() - 1) if floor.pref64 else 0
    for unit in assignable_units(inventory):
        size = max(size, keeper_size(unit))
    return size


def size_text(n: int) -> str:
    """QEMU's size syntax, in the largest whole unit (``32G``, ``33M``, ``4096``)."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def parse_size(text: str) -> int:
    """``32G`` / ``8M`` / ``4096`` -> bytes; raises ``ValueError`` on anything else."""
    units = {"K": 10, "M": 20, "G": 30, "T": 40}
    text = text.strip()
    shift = units.get(text[-1:].upper(), 0) if text else 0
    digits = text[:-1] if shift else text
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"not a size (like 8M, 16G): {text!r}")
    return int(digits) << shift


def parse_window(text: str) -> Window:
    """``mem=8M,pref64=16G`` (either part may be left out) -> a :class:`Window`."""
    values = {"mem": 0, "pref64": 0}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in values:
            raise ValueError(f"not a window (like mem=8M,pref64=16G): {text!r}")
        values[key] = parse_size(value)
    return Window(values["mem"], values["pref64"])
