"""Write a fake sysfs tree: a stand-in for a real host, for tests and demos only.

Nothing here touches the real machine. :func:`write_fake_sysfs` lays out, under a directory
of your choosing, just the files :func:`podplug.host.sysfs.scan_host` reads, shaped like the
kernel's (see that module for the sources). Every symlink is relative, so the tree can be
copied or moved. Two ready-made hosts are provided: :func:`eight_gpu_host` (an HGX-style
8-GPU machine) and :func:`demo_host` (the seed scenario of the CLI demo).

Device numbers used (fixed here; a real host picks some of them at boot):

* VFIO group nodes ``/dev/vfio/<N>``: major :data:`VFIO_GROUP_MAJOR` (236; the kernel
  allocates it dynamically), minor = the group number ``N`` (real hosts number minors in
  order of creation). A group node exists when any function of the group is bound to
  ``vfio-pci``, as the kernel creates it on the first bind.
* ``/dev/vfio/vfio``: misc 10:196 (``VFIO_MINOR`` in ``include/linux/miscdevice.h``),
  present when any function is bound to ``vfio-pci``.
* ``/dev/iommu``: misc 10::data:`IOMMU_MINOR` (260; iommufd takes a dynamic misc minor,
  which 6.x kernels hand out from 256 up), present with ``iommufd=True``.
* iommufd cdevs ``/dev/vfio/devices/vfioK``: major :data:`VFIO_CDEV_MAJOR` (237, dynamic on
  real hosts), minor ``K``, one per function bound to ``vfio-pci`` (in BDF order), present
  with ``iommufd=True``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from podplug.errors import InputError
from podplug.model.host import IORESOURCE_IO, IORESOURCE_MEM_64
from podplug.model.pci import (
    CLASS_AUDIO,
    CLASS_DISPLAY_3D,
    CLASS_HOST_BRIDGE,
    CLASS_NVME,
    CLASS_OTHER_BRIDGE,
    CLASS_PCI_BRIDGE,
    Bdf,
    is_bridge_class,
)

MISC_MAJOR = 10
VFIO_CONTAINER_MINOR = 196
IOMMU_MINOR = 260
VFIO_GROUP_MAJOR = 236
VFIO_CDEV_MAJOR = 237
LOOP_MAJOR = 7

# ``resource`` flags as the kernel prints them (IORESOURCE_* | PCI_BASE_ADDRESS_* low bits)
FLAGS_MEM32 = 0x00040200  # 32-bit, non-prefetchable memory
FLAGS_MEM64 = 0x00140204  # 64-bit, non-prefetchable memory
FLAGS_MEM64_PREF = 0x0014220C  # 64-bit, prefetchable memory
FLAGS_IO = 0x00040101  # I/O ports

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

_ENDPOINT_RESOURCE_LINES = 13  # BAR0-5, ROM, SR-IOV BARs 0-5 (kernel with CONFIG_PCI_IOV)
_BRIDGE_RESOURCE_LINES = 17  # plus the four bridge windows
_PCIE_CONFIG_SIZE = 4096
_PCI_CONFIG_SIZE = 256


@dataclass(frozen=True)
class FakeFunction:
    """One PCI function of the fake host; ``bars`` are ``(index, size, flags)``."""

    bdf: str
    vendor: int
    device: int
    class_code: int
    pcie: bool = True
    bars: tuple[tuple[int, int, int], ...] = ()
    driver: str | None = "vfio-pci"
    numa_node: int = -1
    iommu_group: int | None = None

    def __post_init__(self) -> None:
        Bdf.parse(self.bdf)  # raises ValueError on a malformed address
        for index, size, _flags in self.bars:
            if not 0 <= index < 6:
                raise ValueError(f"{self.bdf}: BAR{index} is not one of BAR0..BAR5")
            if size <= 0 or size & (size - 1):
                raise ValueError(f"{self.bdf}: BAR{index} size {size:#x} is not a power of two")


@dataclass(frozen=True)
class FakeBlock:
    """A block device ``major:minor`` named ``name``; a loop device has a backing file."""

    major: int
    minor: int
    name: str
    backing_file: str | None = None


@dataclass(frozen=True)
class FakeHost:
    """Everything a fake tree holds; ``iommufd`` adds ``/dev/iommu`` and vfio-dev cdevs."""

    functions: tuple[FakeFunction, ...] = ()
    blocks: tuple[FakeBlock, ...] = ()
    iommufd: bool = False


MARKER = ".podplug-fake-host"


def publish_fake_sysfs(root: Path, host: FakeHost) -> Path:
    """Write ``host`` as a fresh fake tree at ``root`` without following any link there.

    The tree is written into a new private directory beside ``root`` (``mkdtemp``: 0700,
    podplug's alone, so nothing can be planted in it meanwhile), then renamed into place.
    ``root`` may be absent, an empty directory, or one an earlier ``fake-host`` wrote (its
    marker file is there), which is removed first (``shutil.rmtree`` never follows the links
    inside); it must be podplug's user's own. A symlink, another user's directory, or one
    holding anything else is refused: fake-host never writes into, or deletes, what it did
    not make.

    :raises InputError: naming the directory and why.
    """
    root = Path(root).absolute()
    _check_destination(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        (staging / MARKER).write_text("written by podplug fake-host: a FAKE sysfs tree\n")
        write_fake_sysfs(staging, host)
        os.chmod(staging, 0o755)
        _check_destination(root)  # again, just before it is replaced
        if root.exists():
            shutil.rmtree(root) if any(root.iterdir()) else root.rmdir()
        os.rename(staging, root)  # fails rather than follow a link planted since
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _check_destination(root: Path) -> None:
    if root.is_symlink():
        raise InputError(f"{root}: is a symbolic link; fake-host writes only into a directory "
                         "it makes")
    if not root.exists():
        return
    info = root.lstat()
    if not root.is_dir():
        raise InputError(f"{root}: exists and is not a directory")
    if info.st_uid != os.geteuid():
        raise InputError(f"{root}: belongs to uid {info.st_uid}, not to podplug's user; "
                         "choose a new directory")
    marker = root / MARKER
    if not (marker.is_file() and not marker.is_symlink()) and any(root.iterdir()):
        raise InputError(f"{root}: not empty and not made by podplug fake-host (no "
                         f"{MARKER}); choose a new or empty directory")


def write_fake_sysfs(root: Path, host: FakeHost) -> Path:
    """Write ``host`` as a sysfs tree under ``root`` (created if needed); returns ``root``."""
    root = Path(root)
    for directory in ("bus/pci/devices", "bus/pci/drivers", "dev/char", "dev/block", "block"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    functions = sorted(host.functions, key=lambda f: Bdf.parse(f.bdf))
    addresses = _assign_addresses(functions)
    for function in functions:
        _write_function(root, function, addresses[function.bdf])
    _write_groups(root, functions)
    _write_vfio_nodes(root, functions, host.iommufd)
    for block in host.blocks:
        _write_block(root, block)
    return root


# --- PCI ---------------------------------------------------------------------------------


def _device_dir(function: FakeFunction) -> str:
    """The function's directory relative to the root, e.g. ``devices/pci0000:00/<bdf>``."""
    return f"devices/pci{Bdf.parse(function.bdf).domain:04x}:00/{function.bdf}"


def _write_function(root: Path, function: FakeFunction, resource: list[str]) -> None:
    rel = _device_dir(function)
    directory = root / rel
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vendor").write_text(f"0x{function.vendor:04x}\n")
    (directory / "device").write_text(f"0x{function.device:04x}\n")
    (directory / "class").write_text(f"0x{function.class_code:06x}\n")
    (directory / "config").write_bytes(_config_space(function))
    (directory / "resource").write_text("".join(resource))
    (directory / "numa_node").write_text(f"{function.numa_node}\n")
    if function.driver is not None:
        driver = f"bus/pci/drivers/{function.driver}"
        (root / driver).mkdir(parents=True, exist_ok=True)
        _link(root, f"{rel}/driver", driver)
    if function.iommu_group is not None:
        _link(root, f"{rel}/iommu_group", f"kernel/iommu_groups/{function.iommu_group}")
    _link(root, f"bus/pci/devices/{function.bdf}", rel)


def _config_space(function: FakeFunction) -> bytes:
    """A zeroed config space with IDs, class and header type filled in."""
    space = bytearray(_PCIE_CONFIG_SIZE if function.pcie else _PCI_CONFIG_SIZE)
    space[0:4] = function.vendor.to_bytes(2, "little") + function.device.to_bytes(2, "little")
    space[9:12] = function.class_code.to_bytes(3, "little")
    space[0x0E] = 0x01 if is_bridge_class(function.class_code) else 0x00
    return bytes(space)


def _assign_addresses(functions: Iterable[FakeFunction]) -> dict[str, list[str]]:
    """``resource`` lines for each function, BARs placed naturally aligned, without overlap."""
    cursors = {"io": 0x1000, "mem32": 0x8000_0000, "mem64": 0x200_0000_0000}
    lines: dict[str, list[str]] = {}
    for function in functions:
        count = _BRIDGE_RESOURCE_LINES if is_bridge_class(function.class_code) else (
            _ENDPOINT_RESOURCE_LINES
        )
        rows = [(0, 0, 0)] * count
        for index, size, flags in function.bars:
            kind = "io" if flags & IORESOURCE_IO else "mem64" if flags & IORESOURCE_MEM_64 else (
                "mem32"
            )
            start = -(-cursors[kind] // size) * size  # round up to a multiple of size
            cursors[kind] = start + size
            rows[index] = (start, start + size - 1, flags)
        lines[function.bdf] = [f"0x{s:016x} 0x{e:016x} 0x{f:016x}\n" for s, e, f in rows]
    return lines


def _write_groups(root: Path, functions: list[FakeFunction]) -> None:
    for function in functions:
        if function.iommu_group is not None:
            devices = f"kernel/iommu_groups/{function.iommu_group}/devices"
            (root / devices).mkdir(parents=True, exist_ok=True)
            _link(root, f"{devices}/{function.bdf}", _device_dir(function))


# --- character nodes ---------------------------------------------------------------------


def _write_vfio_nodes(root: Path, functions: list[FakeFunction], iommufd: bool) -> None:
    bound = [f for f in functions if f.driver == "vfio-pci"]
    if bound:
        container = "devices/virtual/misc/vfio"
        _write_char(root, MISC_MAJOR, VFIO_CONTAINER_MINOR, container, "vfio/vfio")
    groups = sorted({f.iommu_group for f in bound if f.iommu_group is not None})
    for group in groups:
        _write_char(root, VFIO_GROUP_MAJOR, group, f"devices/virtual/vfio/{group}", f"vfio/{group}")
    if not iommufd:
        return
    _write_char(root, MISC_MAJOR, IOMMU_MINOR, "devices/virtual/misc/iommu", "iommu")
    for index, function in enumerate(bound):
        rel = f"{_device_dir(function)}/vfio-dev/vfio{index}"
        _write_char(root, VFIO_CDEV_MAJOR, index, rel, f"vfio/devices/vfio{index}")


def _write_char(root: Path, major: int, minor: int, rel: str, devname: str) -> None:
    directory = root / rel
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "uevent").write_text(f"MAJOR={major}\nMINOR={minor}\nDEVNAME={devname}\n")
    (directory / "dev").write_text(f"{major}:{minor}\n")
    _link(root, f"dev/char/{major}:{minor}", rel)


# --- block nodes -------------------------------------------------------------------------


def _write_block(root: Path, block: FakeBlock) -> None:
    rel = f"devices/virtual/block/{block.name}"
    directory = root / rel
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "uevent").write_text(
        f"MAJOR={block.major}\nMINOR={block.minor}\nDEVNAME={block.name}\nDEVTYPE=disk\n"
    )
    (directory / "dev").write_text(f"{block.major}:{block.minor}\n")
    if block.backing_file is not None:
        (directory / "loop").mkdir(exist_ok=True)
        (directory / "loop" / "backing_file").write_text(f"{block.backing_file}\n")
    _link(root, f"dev/block/{block.major}:{block.minor}", rel)
    _link(root, f"block/{block.name}", rel)


def _link(root: Path, at: str, to: str) -> None:
    """Create the symlink ``root/at`` pointing at ``root/to`` with a relative target."""
    link = root / at
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(root / to, link.parent))


# --- ready-made hosts --------------------------------------------------------------------

NVIDIA = 0x10DE
H100_SXM = 0x2330
GPU_AUDIO = 0x22E8  # illustrative: the HDMI audio function next to a display GPU
NVSWITCH = 0x22A3


def gpu_functions(slot: str, group: int, numa_node: int = -1) -> tuple[FakeFunction, ...]:
    """A GPU ``<slot>.0`` plus its audio function ``<slot>.1``, both in ``group``, on vfio-pci.

    BAR0 16 MiB 32-bit non-prefetchable, BAR1 64 GiB and BAR3 32 MiB 64-bit prefetchable.
    """
    gpu_bars = ((0, 16 * MIB, FLAGS_MEM32), (1, 64 * GIB, FLAGS_MEM64_PREF),
                (3, 32 * MIB, FLAGS_MEM64_PREF))
    return (
        FakeFunction(f"{slot}.0", NVIDIA, H100_SXM, CLASS_DISPLAY_3D, bars=gpu_bars,
                     numa_node=numa_node, iommu_group=group),
        FakeFunction(f"{slot}.1", NVIDIA, GPU_AUDIO, CLASS_AUDIO,
                     bars=((0, 16 * KIB, FLAGS_MEM32),), numa_node=numa_node, iommu_group=group),
    )


def eight_gpu_host(backing_file: str = "/var/lib/podplug/images/disk0.img") -> FakeHost:
    """An HGX-style host: 8 GPUs (+ audio), 4 NVSwitches, a bridge group, host devices.

    * GPUs at ``0000:{18,2a,3a,5d}:00`` (NUMA 0, groups 20-23) and ``0000:{9a,ab,ba,db}:00``
      (NUMA 1, groups 24-27), each group = GPU ``.0`` + audio ``.1``, bound to vfio-pci;
    * NVSwitches (class 0x068000, *not* bridges) at ``0000:0{5,6,7,8}:00.0``, groups 30-33,
      BAR0 32 MiB non-prefetchable, bound to vfio-pci;
    * group 40: a PCIe bridge ``0000:c0:01.0`` (``pcieport``) and the NIC behind it,
      ``0000:c1:00.0`` (vfio-pci): consumers must skip the bridge;
    * host-owned: host bridge ``0000:00:00.0`` (group 0, no driver) and an NVMe drive
      ``0000:e1:00.0`` (``nvme``, group 50);
    * loop device 7:0 ``loop0`` backed by ``backing_file``.
    """
    gpu_slots = ("0000:18:00", "0000:2a:00", "0000:3a:00", "0000:5d:00",
                 "0000:9a:00", "0000:ab:00", "0000:ba:00", "0000:db:00")
    functions: list[FakeFunction] = []
    for index, slot in enumerate(gpu_slots):
        functions.extend(gpu_functions(slot, group=20 + index, numa_node=index // 4))
    for index in range(4):
        functions.append(FakeFunction(
            f"0000:0{5 + index}:00.0", NVIDIA, NVSWITCH, CLASS_OTHER_BRIDGE,
            bars=((0, 32 * MIB, FLAGS_MEM32),), numa_node=index // 2, iommu_group=30 + index))
    functions.extend((
        FakeFunction("0000:c0:01.0", 0x8086, 0x352A, CLASS_PCI_BRIDGE, driver="pcieport",
                     numa_node=1, iommu_group=40),
        FakeFunction("0000:c1:00.0", 0x15B3, 0x101B, 0x020000,
                     bars=((0, 32 * MIB, FLAGS_MEM64_PREF),), numa_node=1, iommu_group=40),
        FakeFunction("0000:00:00.0", 0x8086, 0x09A2, CLASS_HOST_BRIDGE, driver=None,
                     numa_node=0, iommu_group=0),
        FakeFunction("0000:e1:00.0", 0x144D, 0xA80A, CLASS_NVME, driver="nvme",
                     bars=((0, 16 * KIB, FLAGS_MEM64),), numa_node=1, iommu_group=50),
    ))
    return FakeHost(
        functions=tuple(functions),
        blocks=(FakeBlock(LOOP_MAJOR, 0, "loop0", backing_file),),
    )


def demo_host(backing_file: str) -> FakeHost:
    """The CLI demo's seed host: GPU ``0000:41:00.0`` + audio ``.1`` in IOMMU group 12
    (vfio-pci), and loop device 7:0 ``loop0`` backed by ``backing_file``."""
    return FakeHost(
        functions=gpu_functions("0000:41:00", group=12),
        blocks=(FakeBlock(LOOP_MAJOR, 0, "loop0", backing_file),),
    )
