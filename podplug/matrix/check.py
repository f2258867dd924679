"""Every configuration combination, planned and classified (pure).

Axes (issue: ``podplug matrix``; issue 14 for the block ones): ``vfio_mode`` (2) x
``cold_plug_vfio`` (4) x ``hot_plug_vfio`` (4; the both-set pairs must come out rejected by
validation) x ``block_device_driver`` (2) x hypervisor (QEMU q35, Cloud Hypervisor) x device
mix (7) x block I/O (:class:`BlockIo`, 4) x container type (workload, sandbox), all from the
enums, so a new value anywhere is enumerated at once.

The block I/O axis is not crossed blindly. It changes no placement, only how a raw volume
is presented (``blockdev-add``'s ``aio`` and cache) and whether upstream Kata's hot-plug of
it fails, so it is enumerated only where that can differ (:func:`varies_block_io`):

* with a mix that carries a raw block volume (``none`` and ``vfio-group`` have no
  ``blockdev-add``: their three other values would repeat the default's rows);
* with QEMU (Kata's Go runtime reads ``block_device_aio`` only for QEMU,
  ``newQemuHypervisorConfig``; Cloud Hypervisor has no ``aio``);
* but with every vfio_mode / port / driver / container value, because those decide whether
  Kata attaches the volume at all: the 3.14-3.16 era drops it silently before the failing
  ``blockdev-add`` could happen, every other era fails loudly (:mod:`.kata_models`); and
  both drivers send the same ``blockdev-add``, so both are checked for it.

That is 128 combinations (vfio_mode x cold x hot x driver x container) per hypervisor and
mix, and four times that for QEMU's five raw-volume mixes: 128 x (7 + 7 + 5 x 3) = 3,712.
The ``block+vhost-user-blk`` mix's configurations enable Kata's vhost-user store (with huge
pages, without which the Go runtime refuses to start the VM); the vhost-user-blk node goes
on a PCI slot whatever the block driver, so it meets every placement the other axes make.
No other mix has the store on: it changes nothing for a raw volume.

Each combination comes out as one of:

* ``planned``: counts per bucket (devices the plan rejects, each with its reason, count as
  ``rejected`` inside a planned combination: a refusal said out loud is not a loss);
* ``rejected``: the configuration or the plan as a whole is refused, with the message;
* ``DEFECT``: a requested device is missing from the plan, or kept without what it needs
  (a VFIO or block device with no QEMU device, an agent entry missing for a workload
  container, a rejection without a reason), or planned so that QEMU would refuse it
  (:func:`defects`: a ``blockdev-add`` with ``aio=native`` but no ``cache.direct``, a
  vhost-user-blk device without its chardev or naming another, a PCI volume off a PCI slot
  or sharing one, guest RAM not shared with a vhost-user backend). Must never happen; it is
  checked from the plan's output, not assumed.

The host the devices come from is a fixed in-memory stand-in (:func:`matrix_host`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

from podplug.errors import PodplugError
from podplug.inputs.kata import GO_VHOST_USER_STORE, RuntimeConfig, parse_kata_config
from podplug.model.enums import (
    BlockDriver,
    Bucket,
    ContainerType,
    Hypervisor,
    NodeType,
    PortKind,
    VfioMode,
)
from podplug.model.host import (
    IORESOURCE_MEM,
    IORESOURCE_MEM_64,
    IORESOURCE_PREFETCH,
    Bar,
    BlockNode,
    CharNode,
    HostInventory,
    PciFunction,
    VhostUserNode,
)
from podplug.model.pci import CLASS_AUDIO, CLASS_DISPLAY_3D, Bdf, GuestPciPath
from podplug.model.request import ContainerDevice, ContainerRequest
from podplug.plan.model import DevicePlan, Plan, QemuDevice
from podplug.plan.plan import plan
from podplug.plan.topology import BRIDGE_SLOTS, CLH_BUS, CLH_SLOTS, Role
from podplug.render.argv import render_argv

HYPERVISORS = (Hypervisor.QEMU, Hypervisor.CLOUD_HYPERVISOR)


class Mix(Enum):
    """The device mixes of the matrix."""

    NONE = "none"
    BLOCK = "block"
    VFIO = "vfio-group"
    VFIO_BLOCK = "vfio-group+block"
    TWO_FUNCTION_TWO_BLOCKS = "2fn-group+2-blocks"
    IOMMUFD_BLOCK = "iommufd+block"
    BLOCK_VHOST_USER = "block+vhost-user-blk"


class BlockIo(Enum):
    """How a raw volume is opened: ``block_device_aio`` and the Go runtime's cache keys.

    ``native`` alone is what QEMU refuses (no ``cache.direct``): podplug plans ``threads``
    and says so, Kata's hot-plug fails. ``native+direct`` adds ``block_device_cache_set``
    and ``block_device_cache_direct``, which keep ``native``.
    """

    IO_URING = "io_uring"  # Kata's default
    THREADS = "threads"
    NATIVE = "native"
    NATIVE_DIRECT = "native+direct"

    def keys(self) -> dict[str, object]:
        """The ``[hypervisor.qemu]`` keys of this value (none for the default)."""
        if self is BlockIo.IO_URING:
            return {}
        if self is BlockIo.NATIVE_DIRECT:
            return {"block_device_aio": "native", "block_device_cache_set": True,
                    "block_device_cache_direct": True}
        return {"block_device_aio": self.value}


class Outcome(Enum):
    PLANNED = "planned"
    REJECTED = "rejected"
    DEFECT = "DEFECT"


@dataclass(frozen=True)
class Combination:
    vfio_mode: VfioMode
    cold: PortKind
    hot: PortKind
    driver: BlockDriver
    hypervisor: Hypervisor
    mix: Mix
    container: ContainerType
    aio: BlockIo = BlockIo.IO_URING

    @property
    def label(self) -> str:
        return (f"{self.hypervisor.value} {self.vfio_mode.value} cold={self.cold.value} "
                f"hot={self.hot.value} {self.driver.value} aio={self.aio.value} "
                f"{self.mix.value} {self.container.value}")


@dataclass(frozen=True)
class Result:
    combination: Combination
    outcome: Outcome
    counts: Mapping[Bucket, int]
    reason: str = ""
    plan: Plan | None = None


def varies_block_io(hypervisor: Hypervisor, mix: Mix) -> bool:
    """Whether the block I/O axis is enumerated here (module docstring): QEMU, and a mix with
    a raw block volume."""
    return hypervisor is Hypervisor.QEMU and any(
        d.major != VHOST_USER_BLK_MAJOR and d.type is NodeType.BLOCK for d in MIX_DEVICES[mix])


def combinations() -> Iterator[Combination]:
    for mode, cold, hot, driver, hypervisor, mix, aio, container in itertools.product(
            VfioMode, PortKind, PortKind, BlockDriver, HYPERVISORS, Mix, BlockIo,
            ContainerType):
        if aio is BlockIo.IO_URING or varies_block_io(hypervisor, mix):
            yield Combination(mode, cold, hot, driver, hypervisor, mix, container, aio)


def _function(bus: int, fn: int, group: int) -> PciFunction:
    pref = IORESOURCE_MEM | IORESOURCE_MEM_64 | IORESOURCE_PREFETCH
    bars = (Bar(0, 16 << 20, IORESOURCE_MEM), Bar(1, 32 << 30, pref))
    return PciFunction(Bdf(0, bus, 0, fn), 0x10DE, 0x2330 + fn,
                       CLASS_AUDIO if fn else CLASS_DISPLAY_3D, True, bars if fn == 0 else (),
                       "vfio-pci", 0, group)


VHOST_USER_BLK_MAJOR = 241  # Kata config.VhostUserBlkMajor


def matrix_host() -> HostInventory:
    """A stand-in host: group 12 (one GPU function), group 13 (GPU + audio), iommufd cdev
    vfio0 (a GPU in group 14), loop devices 7:0 and 7:1, and in Kata's vhost-user store (its
    default path) the vhost-user-blk device 241:0 ``vub0`` with its backend's socket."""
    functions = [_function(0x41, 0, 12), _function(0x42, 0, 13), _function(0x42, 1, 13),
                 _function(0x43, 0, 14)]
    groups = {12: (functions[0].bdf,), 13: (functions[1].bdf, functions[2].bdf),
              14: (functions[3].bdf,)}
    chars = {(236, 12): CharNode(236, 12, "vfio/12"), (236, 13): CharNode(236, 13, "vfio/13"),
             (237, 0): CharNode(237, 0, "vfio/devices/vfio0", functions[3].bdf),
             (10, 196): CharNode(10, 196, "vfio/vfio")}
    blocks = {(7, i): BlockNode(7, i, f"loop{i}", f"/srv/pv{i}.img") for i in range(2)}
    vhost = {(VHOST_USER_BLK_MAJOR, 0): VhostUserNode(
        VHOST_USER_BLK_MAJOR, 0, "vub0", f"{GO_VHOST_USER_STORE}/block/sockets/vub0", True)}
    return HostInventory({f.bdf: f for f in functions}, groups, blocks, chars,
                         vhost_user_nodes=vhost, vhost_user_store=GO_VHOST_USER_STORE)


_GROUP = ContainerDevice("/dev/vfio/12", NodeType.CHAR, 236, 12, 0o666)
_GROUP2 = ContainerDevice("/dev/vfio/13", NodeType.CHAR, 236, 13, 0o666)
_CDEV = ContainerDevice("/dev/vfio/devices/vfio0", NodeType.CHAR, 237, 0, 0o666)
_XDA = ContainerDevice("/dev/xda", NodeType.BLOCK, 7, 0, 0o660)
_XDB = ContainerDevice("/dev/xdb", NodeType.BLOCK, 7, 1, 0o660)
_VUB = ContainerDevice("/dev/vub0", NodeType.BLOCK, VHOST_USER_BLK_MAJOR, 0, 0o660)

MIX_DEVICES: Mapping[Mix, tuple[ContainerDevice, ...]] = {
    Mix.NONE: (),
    Mix.BLOCK: (_XDA,),
    Mix.VFIO: (_GROUP,),
    Mix.VFIO_BLOCK: (_GROUP, _XDA),
    Mix.TWO_FUNCTION_TWO_BLOCKS: (_GROUP2, _XDA, _XDB),
    Mix.IOMMUFD_BLOCK: (_CDEV, _XDA),
    Mix.BLOCK_VHOST_USER: (_XDA, _VUB),
}


def config_for(c: Combination) -> RuntimeConfig:
    """The combination's configuration, through the real parser (so it validates)."""
    table: dict[str, object] = {
        "cold_plug_vfio": c.cold.value, "hot_plug_vfio": c.hot.value,
        "block_device_driver": c.driver.value, "pcie_root_port": 2, "default_bridges": 1,
    }
    if c.hypervisor is Hypervisor.QEMU:
        table["machine_type"] = "q35"
    table.update(c.aio.keys())
    if c.mix is Mix.BLOCK_VHOST_USER:
        table.update(enable_vhost_user_store=True, enable_hugepages=True)
    return parse_kata_config({"hypervisor": {c.hypervisor.value: table},
                              "runtime": {"vfio_mode": c.vfio_mode.value}})


def request_for(c: Combination) -> ContainerRequest:
    return ContainerRequest(MIX_DEVICES[c.mix], {}, c.container)


VHOST_USER_BLK = "vhost-user-blk-pci"
_PCI_VOLUMES = ("virtio-blk-pci", VHOST_USER_BLK)
_PORT_ROLES = (Role.ROOT_PORT, Role.SWITCH_DOWNSTREAM)


def _addr(device: QemuDevice) -> tuple[int, int] | None:
    """``addr=SS.F`` as (slot, function); None when absent or not hex."""
    text = str(dict(device.props).get("addr", ""))
    slot, _, function = text.partition(".")
    try:
        return int(slot, 16), int(function or "0")
    except ValueError:
        return None


def _blockdev_problems(device: DevicePlan) -> list[str]:
    """A raw volume QEMU would refuse: no node to open, or ``aio=native`` without
    ``cache.direct=on`` on the protocol node (set there, or else inherited from the raw node
    above it: QEMU copies a parent's cache options to a child that sets none)."""
    path = device.request.path
    node = device.blockdev
    if node is None:
        return [f"{path}: raw volume without a blockdev-add node"]
    inherited = bool(node.node_cache and node.node_cache[0])
    direct = inherited if node.file_direct is None else node.file_direct
    if node.aio == "native" and not direct:
        return [f"{path}: blockdev-add {node.node_name} has aio=native without "
                "cache.direct=on, which QEMU refuses"]
    return []


def _vhost_user_problems(device: DevicePlan) -> list[str]:
    """A vhost-user-blk volume must be ``vhost-user-blk-pci`` naming its own chardev, with
    no ``blockdev-add`` (the backend owns the disk)."""
    path = device.request.path
    qemu = device.qemu
    if qemu is None or qemu.driver != VHOST_USER_BLK:
        return [f"{path}: a vhost-user-blk node (major {VHOST_USER_BLK_MAJOR}) planned as "
                f"{qemu.driver if qemu else 'no device'}, not {VHOST_USER_BLK}"]
    problems = []
    named = str(dict(qemu.props).get("chardev", ""))
    if device.chardev is None:
        problems.append(f"{path}: {VHOST_USER_BLK} {qemu.id} without its chardev")
    elif device.chardev.id != named:
        problems.append(f"{path}: chardev {device.chardev.id} is not the one {qemu.id} names "
                        f"({named or 'none'})")
    if device.blockdev is not None:
        problems.append(f"{path}: a vhost-user-blk volume with a blockdev-add node")
    return problems


def _slot_problems(result: Plan) -> list[str]:
    """Every PCI volume on a hot-pluggable PCI slot of the topology (a root or downstream
    port's slot 0, a bridge's slots 1-31, Cloud Hypervisor's root-bus slots), with the guest
    path that slot gives, and no two devices on one bus slot and function."""
    problems = []
    controllers = {c.id: c for c in result.topology.controllers}
    taken: dict[tuple[str, int, int], str] = {
        (c.bus, c.addr, 0): c.id for c in result.topology.controllers if c.addr >= 0}
    for device in result.devices:
        path = device.request.path
        for placed in device.qemu_devices:
            at = _addr(placed)
            if at is not None and placed.bus:
                owner = taken.setdefault((placed.bus, *at), placed.id)
                if owner != placed.id:
                    problems.append(f"{path}: {placed.id} shares {placed.bus} slot "
                                    f"{at[0]:02x}.{at[1]} with {owner}")
        qemu = device.qemu
        if qemu is None or qemu.driver not in _PCI_VOLUMES:
            continue
        addr = _addr(qemu)
        controller = controllers.get(qemu.bus)
        if controller is not None and addr is not None and addr[1] == 0 and (
                (controller.role in _PORT_ROLES and addr[0] == 0)
                or (controller.role is Role.PCI_BRIDGE and addr[0] in BRIDGE_SLOTS)):
            expected = controller.path.child(addr[0])
        elif (qemu.bus == CLH_BUS and not controllers and addr is not None and addr[1] == 0
              and addr[0] in CLH_SLOTS):
            expected = GuestPciPath((addr[0],))
        else:
            problems.append(f"{path}: {qemu.driver} {qemu.id} is on {qemu.bus or 'no bus'} "
                            f"addr {dict(qemu.props).get('addr', 'none')}, not a PCI slot a "
                            "volume can be hot-plugged to")
            continue
        if device.guest_paths != (expected,) or (
                device.agent is not None and device.agent.id != str(expected)):
            problems.append(f"{path}: its guest path / agent entry do not name "
                            f"{qemu.bus} slot {addr[0]:02x} ({expected})")
    return problems


def _shared_ram_problems(result: Plan) -> list[str]:
    """A vhost-user backend maps guest RAM: the plan must say so and, for QEMU, the command
    line must give the machine a shared memory backend."""
    users = [d.request.path for d in result.devices if d.chardev is not None
             or (d.qemu is not None and d.qemu.driver.startswith("vhost-user"))]
    if not users:
        return []
    if not result.shared_memory:
        return [f"{', '.join(users)}: a vhost-user device but guest RAM is not shared"]
    if result.config.hypervisor.kind is not Hypervisor.QEMU:
        return []
    argv = render_argv(result)  # flag, value, flag, value, ...
    pairs = list(zip(argv[::2], argv[1::2], strict=True))
    machine = [part for flag, arg in pairs if flag == "-machine" for part in arg.split(",")]
    backend = next((p.partition("=")[2] for p in machine if p.startswith("memory-backend=")),
                   "")
    objects = [arg.split(",") for flag, arg in pairs if flag == "-object"]
    if not backend or not any(
            o[0] in ("memory-backend-memfd", "memory-backend-file") and f"id={backend}" in o
            and "share=on" in o for o in objects):
        return [f"{', '.join(users)}: a vhost-user device but the command line gives guest "
                "RAM no shared memory backend (share=on)"]
    return []


def defects(result: Plan, request: ContainerRequest) -> list[str]:
    """Devices lost, half-kept or planned as QEMU would refuse them, read from a plan's
    output (its devices, topology and rendered command line)."""
    problems = []
    if [d.request for d in result.devices] != list(request.devices):
        problems.append("plan devices differ from the request")
    listed = {d.request.path for d in result.container_devices}
    for device in result.devices:
        path = device.request.path
        if device.bucket is Bucket.REJECTED:
            if not device.reason:
                problems.append(f"{path}: rejected without a reason")
            continue
        if path not in listed:
            problems.append(f"{path}: kept but not in the container's device list")
        if device.bucket in (Bucket.COLD_VFIO, Bucket.HOT_VFIO, Bucket.HOT_BLOCK):
            if not device.qemu_devices:
                problems.append(f"{path}: {device.bucket.value} without a QEMU device")
            needs_agent = device.bucket is Bucket.HOT_BLOCK or not request.is_sandbox
            if needs_agent and device.agent is None:
                problems.append(f"{path}: no kata-agent entry")
        vhost = device.request.major == VHOST_USER_BLK_MAJOR
        if device.bucket is Bucket.HOT_BLOCK:
            problems += _vhost_user_problems(device) if vhost else _blockdev_problems(device)
        if device.chardev is not None and not (vhost and device.bucket is Bucket.HOT_BLOCK):
            problems.append(f"{path}: chardev {device.chardev.id} on a "
                            f"{device.bucket.value} device that names none")
    return problems + _slot_problems(result) + _shared_ram_problems(result)


def check(c: Combination, host: HostInventory) -> Result:
    """Plan one combination and classify it."""
    request = request_for(c)
    empty = dict.fromkeys(Bucket, 0)
    try:
        result = plan(config_for(c), request, host)
    except PodplugError as exc:
        return Result(c, Outcome.REJECTED, empty, str(exc))
    problems = defects(result, request)
    if problems:
        return Result(c, Outcome.DEFECT, result.counts(), "; ".join(problems), result)
    rejected = [f"{d.request.path}: {d.reason}" for d in result.in_bucket(Bucket.REJECTED)]
    return Result(c, Outcome.PLANNED, result.counts(), "; ".join(rejected), result)


def run_matrix() -> list[Result]:
    host = matrix_host()
    return [check(c, host) for c in combinations()]


def summary(results: list[Result]) -> str:
    """The one-line summary: combinations by outcome, devices by bucket."""
    by_outcome = {o: sum(r.outcome is o for r in results) for o in Outcome}
    buckets = {b: sum(r.counts[b] for r in results) for b in Bucket}
    return (f"{len(results)} combinations: {by_outcome[Outcome.PLANNED]} planned, "
            f"{by_outcome[Outcome.REJECTED]} rejected, {by_outcome[Outcome.DEFECT]} defects; "
            "devices " + ", ".join(f"{n} {b.value}" for b, n in buckets.items()))
