"""What the host looks like: a frozen snapshot taken once from sysfs.

Filled by :func:`podplug.host.sysfs.scan_host` (the shell) and read by the planner (the
core). Tests build these directly or through fake sysfs trees.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from podplug.model.pci import Bdf, is_bridge_class

# /sys/bus/pci/devices/<bdf>/resource flags (include/linux/ioport.h)
IORESOURCE_IO = 0x00000100
IORESOURCE_MEM = 0x00000200
IORESOURCE_PREFETCH = 0x00002000
IORESOURCE_MEM_64 = 0x00100000


@dataclass(frozen=True)
class Bar:
    """One base address register, from a line of the sysfs ``resource`` file."""

    index: int
    size: int
    flags: int

    @property
    def is_io(self) -> bool:
        return bool(self.flags & IORESOURCE_IO)

    @property
    def is_64bit(self) -> bool:
        return bool(self.flags & IORESOURCE_MEM_64)

    @property
    def prefetchable(self) -> bool:
        return bool(self.flags & IORESOURCE_PREFETCH)


@dataclass(frozen=True)
class PciFunction:
    """One host PCI function."""

    bdf: Bdf
    vendor: int
    device: int
    class_code: int  # 24-bit, e.g. 0x030200
    is_pcie: bool  # config space larger than 256 bytes (Kata ``IsPCIeDevice``)
    bars: tuple[Bar, ...] = ()
    driver: str | None = None
    numa_node: int | None = None
    iommu_group: int | None = None

    @property
    def is_bridge(self) -> bool:
        return is_bridge_class(self.class_code)


@dataclass(frozen=True)
class BlockNode:
    """A host block device, keyed by major:minor (``/sys/dev/block/M:m``)."""

    major: int
    minor: int
    name: str  # kernel name, e.g. "loop0", "sda1"
    loop_backing_file: str | None = None  # /sys/block/loopN/loop/backing_file

    @property
    def dev_path(self) -> str:
        return f"/dev/{self.name}"


@dataclass(frozen=True)
class CharNode:
    """A host character device, keyed by major:minor (``/sys/dev/char/M:m``)."""

    major: int
    minor: int
    devname: str  # uevent DEVNAME, e.g. "vfio/12", "vfio/devices/vfio0", "vfio/vfio"
    pci_function: Bdf | None = None  # for iommufd cdevs: the function the link points into


@dataclass(frozen=True)
class VhostUserNode:
    """A vhost-user-blk device of Kata's store (``vhost_user_store_path``): the block node
    ``<store>/block/devices/<name>`` (its major:minor is what the container spec names)
    and the backend socket ``<store>/block/sockets/<name>`` (Kata ``getVhostUserHostPath``)."""

    major: int
    minor: int
    name: str
    socket: str
    socket_present: bool  # a unix socket is there now (lstat; a link is not one)


@dataclass(frozen=True)
class HostInventory:
    """A snapshot of the host's PCI functions, IOMMU groups and device nodes."""

    functions: Mapping[Bdf, PciFunction] = field(default_factory=dict)
    iommu_groups: Mapping[int, tuple[Bdf, ...]] = field(default_factory=dict)
    block_nodes: Mapping[tuple[int, int], BlockNode] = field(default_factory=dict)
    char_nodes: Mapping[tuple[int, int], CharNode] = field(default_factory=dict)
    sysfs_root: str = "/sys"
    vhost_user_nodes: Mapping[tuple[int, int], VhostUserNode] = field(default_factory=dict)
    vhost_user_store: str = ""  # the store read ("" when none was: not enabled, not needed)

    @property
    def has_iommu(self) -> bool:
        """A host IOMMU is on when ``/sys/kernel/iommu_groups`` lists any group."""
        return bool(self.iommu_groups)

    def iommufd_cdev(self, name: str) -> CharNode | None:
        """The iommufd cdev ``vfioN`` (``/dev/vfio/devices/vfioN``), if the host has it."""
        for node in self.char_nodes.values():
            if node.devname == f"vfio/devices/{name}":
                return node
        return None
