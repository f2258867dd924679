"""Read the host once from sysfs into a frozen :class:`~podplug.model.host.HostInventory`.

This is the shell: it only reads files; every decision is left to the planner. Where each
fact comes from:

* **PCI functions** -- ``<root>/bus/pci/devices/<bdf>`` (Linux ABI
  ``Documentation/ABI/testing/sysfs-bus-pci``): ``vendor``, ``device`` and ``class`` are hex
  text (``0x10de``, ``0x030200``); ``resource`` has one ``0xSTART 0xEND 0xFLAGS`` line per
  resource, the first six being BAR0..5 (unused ones all zero, a 64-bit BAR leaves its upper
  half's line zero); ``numa_node`` is ``-1`` when the platform reports no node; ``driver``
  and ``iommu_group`` are symlinks whose basenames name the bound driver and the group.
* **PCIe or conventional PCI** -- Kata's ``IsPCIeDevice`` (``src/runtime/pkg/device/drivers/
  utils.go``): the ``config`` file is larger than 256 bytes only when the function has PCIe
  extended configuration space. Only its size is looked at (``stat``), never its bytes.
* **IOMMU groups** -- ``<root>/kernel/iommu_groups/<N>/devices/<bdf>`` (``sysfs-kernel-
  iommu_groups``), the directory Kata's ``GetAllVFIODevicesFromIOMMUGroup`` walks. No such
  directory means the host has no IOMMU (an empty mapping, not an error).
* **Character nodes** -- ``<root>/dev/char/<major>:<minor>`` links (``sysfs-dev``) into the
  device directory, whose ``uevent`` carries ``DEVNAME`` (the path below ``/dev``). Only
  VFIO nodes (``vfio/<group>``, ``vfio/vfio``, ``vfio/devices/vfioN``) and ``iommu`` are
  kept, and only targets that look like those by path have their ``uevent`` read. An
  iommufd cdev's link points into ``.../<bdf>/vfio-dev/vfioN``; the BDF is taken from that
  path as Kata's ``GetDeviceFromVFIODev`` does.
* **Block nodes** -- ``<root>/dev/block/<major>:<minor>`` links; the kernel name is the
  target's basename, and a loop device's backing file is ``<root>/block/<name>/loop/
  backing_file`` (``sysfs-block-loop``).

Every read goes through :class:`podplug.host.confined.Confined`: each path component is
resolved below ``root`` (relative links followed while they stay inside, so a fake tree
works anywhere; a link out, a FIFO, a device or a huge file where an attribute should be is
an error, never a read of the real host or a wait), and errors quote at most a short
excerpt. Numbers are ASCII digits only (a group named ``²`` is not group 2).

Missing *mandatory* things (``root``, ``root/bus/pci/devices``, a function's ``vendor``,
``device``, ``class``, ``config`` or ``resource``) and malformed contents raise
:class:`~podplug.errors.HostError` naming the exact path. Missing optional things (a
``driver`` or ``iommu_group`` link, ``numa_node``, ``kernel/iommu_groups``, ``dev/char``,
``dev/block``, a loop ``backing_file``) are simply absent from the result.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from podplug.errors import HostError
from podplug.host.confined import Confined
from podplug.model.host import Bar, BlockNode, CharNode, HostInventory, PciFunction
from podplug.model.pci import Bdf
from podplug.model.text import is_ascii_digits, shown

PCI_CONFIG_SPACE_SIZE = 256  # conventional PCI; PCIe functions expose 4096 bytes
BAR_COUNT = 6  # standard BARs: the first six lines of ``resource``
_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_DEV_T = re.compile(r"^([0-9]{1,9}):([0-9]{1,9})$")
_RESOURCE_LINE = re.compile(r"^(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)$")


def scan_host(sysfs_root: str | Path = "/sys") -> HostInventory:
    """Read PCI functions, IOMMU groups, VFIO/iommu char nodes and block nodes once."""
    root = os.path.abspath(os.fspath(sysfs_root))
    if not os.path.isdir(root):
        raise HostError(root, "sysfs root is not a directory")
    tree = Confined(root)
    groups = _scan_iommu_groups(tree)
    functions = _scan_pci_functions(tree)
    _check_group_links(root, functions, groups)
    return HostInventory(
        functions=functions,
        iommu_groups=groups,
        block_nodes=_scan_block_nodes(tree),
        char_nodes=_scan_char_nodes(tree),
        sysfs_root=root,
    )


# --- PCI functions ---------------------------------------------------------------------


def _scan_pci_functions(tree: Confined) -> dict[Bdf, PciFunction]:
    base = os.path.join(tree.root, "bus", "pci", "devices")
    if not tree.isdir(base):
        raise HostError(base, "no PCI bus directory in sysfs")
    found: dict[Bdf, PciFunction] = {}
    for name in tree.listdir(base):
        entry = os.path.join(base, name)
        bdf = _parse_bdf(entry, name)
        found[bdf] = _read_function(tree, bdf, tree.resolve(entry))
    return dict(sorted(found.items()))


def _read_function(tree: Confined, bdf: Bdf, directory: str) -> PciFunction:
    return PciFunction(
        bdf=bdf,
        vendor=_read_hex(tree, os.path.join(directory, "vendor")),
        device=_read_hex(tree, os.path.join(directory, "device")),
        class_code=_read_hex(tree, os.path.join(directory, "class")),
        is_pcie=tree.size(os.path.join(directory, "config")) > PCI_CONFIG_SPACE_SIZE,
        bars=_parse_resource(tree, os.path.join(directory, "resource")),
        driver=tree.link_basename(os.path.join(directory, "driver")),
        numa_node=_read_numa_node(tree, os.path.join(directory, "numa_node")),
        iommu_group=_read_group_link(tree, os.path.join(directory, "iommu_group")),
    )


def _parse_resource(tree: Confined, path: str) -> tuple[Bar, ...]:
    """BAR0..5 with non-zero size, from the first six lines of ``resource``."""
    bars: list[Bar] = []
    for index, line in enumerate(tree.read(path).splitlines()[:BAR_COUNT]):
        match = _RESOURCE_LINE.match(line.strip())
        if match is None:
            raise HostError(path, f"line {index + 1} is not '0xSTART 0xEND 0xFLAGS': "
                            f"{shown(line, 60)}")
        start, end, flags = (int(group, 16) for group in match.groups())
        if start == 0 and end == 0:
            continue
        if end < start:
            raise HostError(path, f"line {index + 1} ends before it starts: {shown(line, 60)}")
        bars.append(Bar(index=index, size=end - start + 1, flags=flags))
    return tuple(bars)


def _read_numa_node(tree: Confined, path: str) -> int | None:
    text = tree.optional(path)
    if text is None:
        return None
    value = text.strip()
    if not (value == "-1" or is_ascii_digits(value)) or len(value) > 9:
        raise HostError(path, f"expected a decimal NUMA node, got {shown(value, 40)}")
    node = int(value)
    return None if node < 0 else node


def _read_group_link(tree: Confined, path: str) -> int | None:
    name = tree.link_basename(path)
    if name is None:
        return None
    if not is_ascii_digits(name) or len(name) > 9:
        raise HostError(path, f"links to {shown(name, 40)}, not to a numbered IOMMU group")
    return int(name)


# --- IOMMU groups ----------------------------------------------------------------------


def _scan_iommu_groups(tree: Confined) -> dict[int, tuple[Bdf, ...]]:
    base = os.path.join(tree.root, "kernel", "iommu_groups")
    if not tree.isdir(base):
        return {}
    groups: dict[int, tuple[Bdf, ...]] = {}
    for name in tree.listdir(base):
        if not is_ascii_digits(name) or len(name) > 9:
            raise HostError(os.path.join(base, shown(name, 40)),
                            "IOMMU group name is not a number")
        devices = os.path.join(base, name, "devices")
        members = [_parse_bdf(os.path.join(devices, b), b) for b in tree.listdir(devices)]
        groups[int(name)] = tuple(sorted(members))
    return dict(sorted(groups.items()))


def _check_group_links(
    root: str, functions: dict[Bdf, PciFunction], groups: dict[int, tuple[Bdf, ...]]
) -> None:
    """A function's ``iommu_group`` link and the group's member list must agree."""
    if not groups:
        return
    for function in functions.values():
        group = function.iommu_group
        if group is not None and function.bdf not in groups.get(group, ()):
            listing = os.path.join(root, "kernel", "iommu_groups", str(group), "devices")
            raise HostError(listing, f"does not list {function.bdf}, whose iommu_group is {group}")


# --- character and block nodes ---------------------------------------------------------


def _scan_char_nodes(tree: Confined) -> dict[tuple[int, int], CharNode]:
    base = os.path.join(tree.root, "dev", "char")
    if not tree.isdir(base):
        return {}
    nodes: dict[tuple[int, int], CharNode] = {}
    for name in tree.listdir(base):
        entry = os.path.join(base, name)
        major, minor = _parse_dev_t(entry, name)
        target = tree.resolve(entry)
        if not _may_be_vfio_node(target):
            continue
        devname = _uevent_devname(tree, os.path.join(target, "uevent"))
        if devname is None or not (devname.startswith("vfio/") or devname == "iommu"):
            continue
        bdf = _cdev_function(target) if devname.startswith("vfio/devices/") else None
        nodes[(major, minor)] = CharNode(major, minor, devname, pci_function=bdf)
    return dict(sorted(nodes.items()))


def _may_be_vfio_node(target: str) -> bool:
    """Cheap pre-filter on the device path, so only candidates' ``uevent`` files are read.

    VFIO group nodes live in class ``vfio`` (``devices/virtual/vfio/<N>``), iommufd cdevs in
    ``<device>/vfio-dev/vfioN``, and ``/dev/vfio/vfio`` and ``/dev/iommu`` are misc devices
    named after their node (``devices/virtual/misc/vfio``, ``.../misc/iommu``). ``DEVNAME``
    in ``uevent`` still decides.
    """
    return os.path.basename(target) in ("vfio", "iommu") or os.path.basename(
        os.path.dirname(target)
    ) in ("vfio", "vfio-dev")


def _cdev_function(target: str) -> Bdf | None:
    """The BDF above ``vfio-dev/vfioN`` in an iommufd cdev's device path, if it is PCI."""
    parent = os.path.dirname(target)
    if os.path.basename(parent) != "vfio-dev":
        return None
    try:
        return Bdf.parse(os.path.basename(os.path.dirname(parent)))
    except ValueError:
        return None  # a non-PCI VFIO device (platform, mdev): no function to name


def _scan_block_nodes(tree: Confined) -> dict[tuple[int, int], BlockNode]:
    base = os.path.join(tree.root, "dev", "block")
    if not tree.isdir(base):
        return {}
    nodes: dict[tuple[int, int], BlockNode] = {}
    for name in tree.listdir(base):
        entry = os.path.join(base, name)
        major, minor = _parse_dev_t(entry, name)
        kernel_name = os.path.basename(tree.resolve(entry))
        block_dir = tree.resolve(os.path.join(tree.root, "block", kernel_name))
        backing = tree.optional(os.path.join(block_dir, "loop", "backing_file"))
        backing = backing.rstrip("\n") if backing is not None else None
        nodes[(major, minor)] = BlockNode(major, minor, kernel_name, backing or None)
    return dict(sorted(nodes.items()))


def _uevent_devname(tree: Confined, path: str) -> str | None:
    text = tree.optional(path)
    if text is None:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key == "DEVNAME" and value:
            return value
    return None


# --- small parsers ---------------------------------------------------------------------


def _read_hex(tree: Confined, path: str) -> int:
    text = tree.read(path).strip()
    if not _HEX.match(text) or len(text) > 18:
        raise HostError(path, f"expected hex text like 0x10de, got {shown(text, 40)}")
    return int(text, 16)


def _parse_bdf(path: str, name: str) -> Bdf:
    try:
        return Bdf.parse(name)
    except ValueError as exc:
        raise HostError(path, f"not a PCI address (DDDD:BB:DD.F): {shown(name, 40)}") from exc


def _parse_dev_t(path: str, name: str) -> tuple[int, int]:
    match = _DEV_T.match(name)
    if match is None:
        raise HostError(path, f"not a MAJOR:MINOR device number: {shown(name, 40)}")
    return int(match.group(1)), int(match.group(2))
