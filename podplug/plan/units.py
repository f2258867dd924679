"""How the functions of one host IOMMU group are placed: one plug unit per host slot.

Choice (research ``kata-devices.md`` §4.6): the functions of a group that share a host slot
(``BB:DD``, e.g. a GPU at ``.0`` and its audio function at ``.1``) are plugged together as
ONE multifunction device on ONE port, keeping their order; every function carries
``multifunction=on`` (see :mod:`.presentation` for why all of them). Kata instead gives
every function its own root port. Mirroring the host slot:

* costs one port per slot instead of one per function (8 two-function GPUs: 8 ports, not 16);
* keeps a GPU and its audio function in one guest IOMMU group in ``vfio`` mode, because
  functions of one multifunction device without ACS share a group, which is what the Kata
  agent requires of every device behind one ``/dev/vfio/<N>`` ("is not in guest IOMMU group",
  Kata #2900);
* a host group spanning several slots becomes several units on several ports, hence several
  guest IOMMU groups: the plan says so in the device's notes.

Guest function numbers are the unit's functions in host order, renumbered from 0 (a lone
function ``.3`` becomes ``.0``, since a slot without function 0 is invisible to the guest).
"""

from __future__ import annotations

from dataclasses import dataclass

from podplug.model.host import PciFunction


@dataclass(frozen=True)
class PlugUnit:
    """Functions plugged together into one guest slot."""

    functions: tuple[PciFunction, ...]

    @property
    def is_pcie(self) -> bool:
        """A unit needs a PCIe port when any of its functions is PCIe (Kata ``IsPCIeDevice``)."""
        return any(f.is_pcie for f in self.functions)

    @property
    def multifunction(self) -> bool:
        return len(self.functions) > 1


def plug_units(functions: tuple[PciFunction, ...]) -> tuple[PlugUnit, ...]:
    """Group ``functions`` by host slot, in host order (at most 8 functions each)."""
    by_slot: dict[tuple[int, int, int], list[PciFunction]] = {}
    for function in sorted(functions, key=lambda f: f.bdf):
        by_slot.setdefault(function.bdf.slot_key, []).append(function)
    return tuple(PlugUnit(tuple(group)) for group in by_slot.values())
