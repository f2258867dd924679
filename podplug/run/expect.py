"""What the plan predicts of each device in the guest, compared with what the guest resolved
from the kata-agent entries (pure).

The guest side (:mod:`podplug.run.verify`) hands every ``Device`` entry to the guest agent,
which resolves it by Kata's agent rules from the entry alone; it then reads what it needs to
judge the result (``lspci``, ``bars``, serials, I/O checks). This module holds the other half
of the contract: the plan's predictions, and one function per entry kind that lists every
difference between the two, each naming the device. An empty list is a proven device.

Predictions, per VFIO function (``BDF=PATH`` option):

* the entry brings exactly the planned host functions, in order, each to its own guest
  function (two options resolving to one guest BDF is the multi-function bug Kata's agent
  would hit with ``03/00`` written twice);
* the guest function sits at the planned guest PCI path, read from its sysfs ancestry (and
  QEMU's QOM read-back agrees);
* it shows the expected vendor:device (the host's, or the emulated stand-in's), and a
  stand-in carries the host BDF it stands for as its serial;
* its memory BARs have the expected sizes and are assigned inside a window of the port
  above it (an unassigned BAR is what a missing hot-plug window looks like);
* ``vfio-pci``: one guest IOMMU group and its node at ``/dev/vfio/<group>``;
  ``vfio-pci-gk``: a guest driver bound, no node.

Per volume (``blk`` / ``scsi``): the disk the entry resolved to carries the serial podplug
gave the planned QEMU device, has the host volume's size and its bytes at the first and last
4 KiB; where the run may write (:mod:`podplug.run.volumes`), writes and a filesystem round
trip succeed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from podplug.guest.protocol import (
    BRIDGE_MEM_WINDOW,
    BRIDGE_PREF_WINDOW,
    GuestBar,
    GuestPciDevice,
    Resolution,
)
from podplug.host.volumes import VolumeFacts
from podplug.model.host import IORESOURCE_IO, IORESOURCE_PREFETCH, Bar, HostInventory
from podplug.model.pci import GuestPciPath
from podplug.plan.model import AgentDevice, DevicePlan, PlannedFunction
from podplug.plan.standin import STANDIN_VENDOR_DEVICE, standin_bars

STANDARD_BARS = range(6)  # BAR0-BAR5; index 6 is the ROM, 7+ are SR-IOV and bridge windows


@dataclass(frozen=True)
class FunctionExpectation:
    """What one planned VFIO function should look like in the guest."""

    planned: PlannedFunction
    vendor_device: str
    serial: str | None  # a stand-in's identity; None when not checked
    bars: tuple[Bar, ...]  # the memory BARs (0-5) the guest must show


@dataclass(frozen=True)
class FunctionSeen:
    """What the guest showed for one resolved function."""

    device: GuestPciDevice | None
    serial: str | None
    bars: tuple[GuestBar, ...]
    windows: tuple[GuestBar, ...]  # the windows of the port above it


@dataclass(frozen=True)
class VolumeSeen:
    """What the guest read of the disk an entry resolved to (``ro``: the ``ro-check``
    fields), and what the destructive checks said, when they ran."""

    serial: str
    ro: Mapping[str, str]
    rw: Mapping[str, str] | None = None
    fs: Mapping[str, str] | None = None


def expectations(device: DevicePlan, inventory: HostInventory, *,
                 emulated: bool) -> tuple[FunctionExpectation, ...]:
    """What each planned VFIO function of ``device`` must look like in the guest: the
    stand-in's vendor:device, serial and BARs when emulated, the host function's otherwise."""
    out = []
    for planned in device.functions:
        host = inventory.functions.get(planned.host)
        if emulated:
            bars = standin_bars(host) if host else ()
            out.append(FunctionExpectation(planned, STANDIN_VENDOR_DEVICE, str(planned.host),
                                           bars))
        else:
            bars = tuple(b for b in host.bars if not b.is_io and b.size and b.index < 6) \
                if host else ()
            out.append(FunctionExpectation(
                planned, f"{planned.vendor:04x}:{planned.device:04x}", None, bars))
    return tuple(out)


def guest_path_of(device: GuestPciDevice) -> GuestPciPath | None:
    """The Kata PCI path of a guest function, from its sysfs ancestry (``pci0000:00/
    0000:00:03.0/0000:01:00.1`` -> ``03/00.1``); None when a bridge on the way sits at a
    non-zero function (not expressible in podplug's paths)."""
    chain = [*device.parents, device.bdf]
    slots = []
    for bdf in chain:
        slot, _, function = bdf.rpartition(":")[2].partition(".")
        if bdf != chain[-1] and function != "0":
            return None
        slots.append(int(slot, 16))
    return GuestPciPath(tuple(slots), int(chain[-1][-1]))


def vfio_problems(
    device: DevicePlan, entry: AgentDevice, resolution: Resolution,
    expected: Sequence[FunctionExpectation], seen: Mapping[str, FunctionSeen],
    actual_paths: Mapping[str, str],
) -> list[str]:
    """Every difference between a VFIO entry's resolution and the plan (empty: proven)."""
    path = device.request.path
    problems = []
    if resolution.type != entry.type.value:
        problems.append(f"{path}: entry type {entry.type.value} resolved as {resolution.type}")
    planned_hosts = [str(e.planned.host) for e in expected]
    resolved_hosts = [host for host, _ in resolution.functions]
    if resolved_hosts != planned_hosts:
        problems.append(f"{path}: the entry brought {', '.join(resolved_hosts) or 'nothing'}, "
                        f"planned {', '.join(planned_hosts)}")
    guests = [guest for _, guest in resolution.functions]
    for guest in sorted({g for g in guests if guests.count(g) > 1}):
        hosts = [h for h, g in resolution.functions if g == guest]
        problems.append(f"{path}: {' and '.join(hosts)} all resolved to guest {guest} "
                        "(one guest function each is needed)")
    for expectation, (host, guest) in zip(expected, resolution.functions, strict=False):
        problems += _function_problems(path, expectation, host, guest, seen.get(guest),
                                       actual_paths.get(expectation.planned.qemu.id))
    if entry.type.value == "vfio-pci" and not (resolution.group and resolution.node):
        problems.append(f"{path}: no guest IOMMU group node")
    if entry.type.value == "vfio-pci" and not resolution.viable:
        problems.append(f"{path}: the guest did not find group {resolution.group} viable")
    for peek in resolution.peeks:
        if peek.data is not None and not peek.answers:
            problems.append(f"{path}: {peek.host} BAR{peek.bar} reads all ones in the guest "
                            "(the function does not answer there)")
    return problems


def _function_problems(path: str, expectation: FunctionExpectation, host: str, guest: str,
                       seen: FunctionSeen | None, qom_path: str | None) -> list[str]:
    planned = expectation.planned
    where = f"{path}: {host} (guest {guest})"
    if seen is None or seen.device is None:
        return [f"{where}: not listed by the guest"]
    problems = []
    at = guest_path_of(seen.device)
    if at != planned.guest_path:
        problems.append(f"{where}: at guest PCI path {at}, planned {planned.guest_path}")
    if qom_path is not None and qom_path != str(planned.guest_path):
        problems.append(f"{where}: QEMU reports {qom_path}, planned {planned.guest_path}")
    if seen.device.vendor_device != expectation.vendor_device:
        problems.append(f"{where}: vendor:device {seen.device.vendor_device}, expected "
                        f"{expectation.vendor_device}")
    if expectation.serial is not None and seen.serial != expectation.serial:
        problems.append(f"{where}: stand-in serial {seen.serial!r}, expected "
                        f"{expectation.serial!r} (the host BDF it stands for)")
    problems += _bar_problems(where, expectation.bars, seen)
    return problems


def _bar_problems(where: str, shapes: Sequence[Bar], seen: FunctionSeen) -> list[str]:
    """Expected BARs present with their sizes and kinds; every memory BAR assigned inside
    a window of the port above. Linux 6.1 clears a BAR it could not place (``resource``
    shows zeros), so an expected BAR the guest does not list was not assigned."""
    problems = []
    bars = {b.index: b for b in seen.bars if b.index in STANDARD_BARS}
    windows = [w for w in seen.windows if w.index in (BRIDGE_MEM_WINDOW, BRIDGE_PREF_WINDOW)]
    for shape in shapes:
        bar = bars.get(shape.index)
        kind = "prefetchable" if shape.prefetchable else "non-prefetchable"
        if bar is None:
            problems.append(f"{where}: BAR{shape.index} ({_size(shape.size)}"
                            f"{' prefetchable' if shape.prefetchable else ''}) not assigned: "
                            "no window of the port above fits it")
            continue
        if bar.size != shape.size:
            problems.append(f"{where}: BAR{shape.index} size {bar.size:#x}, expected {kind} "
                            f"{shape.size:#x}")
        if bool(bar.flags & IORESOURCE_PREFETCH) != shape.prefetchable:
            problems.append(f"{where}: BAR{shape.index} is "
                            f"{'' if bar.flags & IORESOURCE_PREFETCH else 'not '}prefetchable, "
                            f"expected {kind}")
    for bar in bars.values():
        if bar.flags & IORESOURCE_IO:
            continue  # no IO windows on podplug's ports (io-reserve=0): not required
        if not bar.assigned:
            problems.append(f"{where}: BAR{bar.index} ({_size(bar.size)}"
                            f"{' prefetchable' if bar.flags & IORESOURCE_PREFETCH else ''}) "
                            "not assigned: no window of the port above fits it")
        elif not any(w.assigned and w.contains(bar) for w in windows):
            problems.append(f"{where}: BAR{bar.index} at {bar.start:#x} is outside the windows "
                            "of the port above it")
    return problems


def volume_problems(device: DevicePlan, entry: AgentDevice, resolution: Resolution,
                    seen: VolumeSeen, host: VolumeFacts | None) -> list[str]:
    """Every difference between a volume entry's resolution and the plan (empty: proven):
    the disk is the planned device (its serial, when QEMU sets one: a vhost-user-blk disk's
    comes from its back end), of the host volume's size, with the host's bytes at its first
    and last 4 KiB (``host`` None: a back end not podplug's, read but not compared); and,
    when they ran, the write and filesystem checks passed."""
    path = device.request.path
    problems = []
    if resolution.type != entry.type.value:
        problems.append(f"{path}: entry type {entry.type.value} resolved as {resolution.type}")
    assert device.qemu is not None
    serial = dict(device.qemu.props).get("serial")
    if serial is not None and seen.serial != str(serial):
        problems.append(f"{path}: the entry resolved to {resolution.vm_path}, whose serial is "
                        f"{seen.serial!r}, not the planned device's {serial!r}")
    if host is None:
        if not all(seen.ro.get(part) for part in ("size", "head", "tail")):
            problems.append(f"{path}: {resolution.vm_path} could not be read ({seen.ro})")
    elif seen.ro.get("size") != str(host.size):
        problems.append(f"{path}: {resolution.vm_path} is {seen.ro.get('size')} bytes, the "
                        f"host volume {host.path} {host.size}")
    for part in ("head", "tail") if host is not None else ():
        if seen.ro.get(part) != getattr(host, part):
            where = "first" if part == "head" else "last"
            problems.append(f"{path}: the {where} 4 KiB of {resolution.vm_path} differ from "
                            f"the host volume's")
    if seen.rw is not None and seen.rw.get("write") != "ok":
        problems.append(f"{path}: write through {resolution.node} {seen.rw.get('write')}")
    if seen.fs is not None and seen.fs.get("readback") != "ok":
        problems.append(f"{path}: filesystem round trip {seen.fs.get('readback')}")
    return problems


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"
