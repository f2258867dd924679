"""Route each container device, on its own, into exactly one bucket.

This module is the fix for Kata issue #11288. Kata's ``createDevices`` sorted devices into a
cold VFIO list and a hot list and then kept one list or the other; here every device is
classified independently and the container's device list is the union of all buckets
(research ``kata-devices.md`` §8.1, the runtime-rs per-device loop). ``vfio_mode`` plays no
part in routing: it changes only how a VFIO device is presented (see :mod:`.agent`).

Rules, in order:

1. A node under ``/dev/vfio/`` other than the control node ``/dev/vfio/vfio`` is VFIO (Kata
   ``IsVFIODevice``, checked on the container path). A legacy group ``/dev/vfio/<N>`` brings
   every endpoint of host IOMMU group N (bridges, class 0x0604/0x0600, skipped by exact
   class); an iommufd cdev ``/dev/vfio/devices/vfioN`` is exactly one function.
   * ``cold_plug_vfio`` set: ``COLD_VFIO`` (in the VM from boot).
   * ``hot_plug_vfio`` set: ``HOT_VFIO``, except for the sandbox (pause) container, which
     never carries VFIO entries (Kata PR #13681): rejected with that reason.
   * neither: rejected, naming the keys to set.
2. A block node (type ``b``) whose major:minor the host has is ``HOT_BLOCK``. Floppy (2) and
   CD-ROM (11) majors are rejected (Kata's ``filterDevices`` drops them silently). Major
   241 is a vhost-user-blk device (Kata ``VhostUserBlkMajor``): with the store enabled it
   is ``HOT_BLOCK`` when Kata's store has its node (``block/devices/<name>``, resolved to
   ``block/sockets/<name>``), else rejected naming the store; without it, rejected with
   the plan's reason (:func:`podplug.plan.plan.vhost_user_refusal`).
3. Everything else (``/dev/vfio/vfio``, ``/dev/iommu``, other char devices, FIFOs) is a
   plain ``NODE``; in guest-kernel mode ``/dev/vfio/*`` nodes leave the spec (Kata
   ``constrainGRPCSpec(stripVfio=true)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from podplug.model.enums import Bucket, HotplugMode, NodeType, PortKind, VfioKind, VfioMode
from podplug.model.host import BlockNode, HostInventory, PciFunction, VhostUserNode
from podplug.model.pci import Bdf
from podplug.model.request import ContainerDevice, ContainerRequest
from podplug.model.text import is_ascii_digits, shown

VFIO_DIR = "/dev/vfio/"
VFIO_CONTROL = "/dev/vfio/vfio"
IOMMUFD_DIR = "/dev/vfio/devices/"
FLOPPY_MAJOR = 2
CDROM_MAJOR = 11
VHOST_USER_BLK_MAJOR = 241


@dataclass(frozen=True)
class VfioSource:
    """The host side of one VFIO device node: which functions it brings."""

    kind: VfioKind
    host_path: str
    name: str  # group number ("12") or cdev name ("vfio0"): the agent Device id
    functions: tuple[PciFunction, ...]  # endpoints only, sorted by BDF
    skipped_bridges: tuple[Bdf, ...] = ()


@dataclass(frozen=True)
class Routed:
    """One container device and the bucket it was routed to, with the reason."""

    device: ContainerDevice
    bucket: Bucket
    reason: str
    vfio: VfioSource | None = None
    block: BlockNode | None = None
    vhost: VhostUserNode | None = None  # a vhost-user-blk volume: its store entry
    in_spec: bool = True  # does the node stay in the container's spec?


def is_vfio_path(path: str) -> bool:
    """Kata ``IsVFIODevice``: under ``/dev/vfio/``, something after it, not the control node."""
    return (
        path.startswith(VFIO_DIR)
        and len(path) > len(VFIO_DIR)
        and not path.startswith(VFIO_CONTROL)
    )


def _canonical_vfio_node(path: str) -> bool:
    """``/dev/vfio/<digits>`` or ``/dev/vfio/devices/vfio<digits>``, ASCII, nothing else."""
    if path.startswith(IOMMUFD_DIR):
        name = path[len(IOMMUFD_DIR):]
        return name.startswith("vfio") and is_ascii_digits(name[4:]) and len(name) < 14
    name = path.removeprefix(VFIO_DIR)
    return is_ascii_digits(name) and len(name) < 10


def _host_path(device: ContainerDevice, inventory: HostInventory) -> str:
    if device.host_path:
        return device.host_path
    node = inventory.char_nodes.get((device.major, device.minor))
    if node is not None and device.type is not NodeType.BLOCK:
        return "/dev/" + node.devname
    return device.path


def resolve_vfio(device: ContainerDevice, inventory: HostInventory) -> VfioSource | str:
    """The functions a VFIO node brings, or the reason it cannot be resolved. The host node
    must be exactly ``/dev/vfio/<ASCII digits>`` or ``/dev/vfio/devices/vfio<digits>``
    (no ``..``, no other directory: ``/dev/vfio/../12`` and ``/etc/12`` are no group)."""
    host_path = _host_path(device, inventory)
    shown_path = shown(host_path, 80)
    if host_path.startswith(IOMMUFD_DIR):
        name = host_path[len(IOMMUFD_DIR):]
        if not (name.startswith("vfio") and is_ascii_digits(name[4:])):
            return f"{shown_path} is not /dev/vfio/devices/vfio<N>"
        cdev = inventory.iommufd_cdev(name)
        if cdev is None or cdev.pci_function is None:
            return f"iommufd device {host_path} not found on the host (/sys/dev/char)"
        function = inventory.functions.get(cdev.pci_function)
        if function is None:
            return f"{host_path} points to {cdev.pci_function}, which is not a host PCI device"
        return VfioSource(VfioKind.IOMMUFD, host_path, name, (function,))
    name = host_path.removeprefix(VFIO_DIR)
    if not host_path.startswith(VFIO_DIR) or not is_ascii_digits(name) or len(name) > 9:
        return f"{shown_path} is neither /dev/vfio/<group> nor /dev/vfio/devices/vfioN"
    group = int(name)
    members = inventory.iommu_groups.get(group)
    if not members:
        return f"IOMMU group {group} not found on the host (/sys/kernel/iommu_groups/{group})"
    functions: list[PciFunction] = []
    bridges: list[Bdf] = []
    for bdf in sorted(members):
        function = inventory.functions.get(bdf)
        if function is None:
            return f"IOMMU group {group} lists {bdf}, which is not a host PCI device"
        if function.is_bridge:
            bridges.append(bdf)
        else:
            functions.append(function)
    if not functions:
        return f"IOMMU group {group} holds only bridges: nothing to pass through"
    return VfioSource(VfioKind.GROUP, host_path, name, tuple(functions), tuple(bridges))


@dataclass(frozen=True)
class PortChoice:
    """Where VFIO ports can be, for the hint of a device that has none: the ports the
    hypervisor takes and the table that sets them."""

    ports: tuple[PortKind, ...] = (PortKind.ROOT_PORT, PortKind.SWITCH_PORT,
                                   PortKind.BRIDGE_PORT)
    section: str = "hypervisor.qemu"
    keys: tuple[str, ...] = ("cold_plug_vfio", "hot_plug_vfio")  # runtime-rs: cold only

    def hint(self) -> str:
        names = [f'"{p.value}"' for p in self.ports]
        spelled = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        return f"set {' or '.join(self.keys)} ({spelled}) in [{self.section}]"


def _route_vfio(
    device: ContainerDevice, request: ContainerRequest, inventory: HostInventory,
    cold: PortKind, hot: PortKind, hotplug: HotplugMode, choice: PortChoice,
) -> Routed:
    if cold is PortKind.NO_PORT and hot is PortKind.NO_PORT:
        return Routed(device, Bucket.REJECTED,
                      f"a VFIO device needs a PCIe port: {choice.hint()}")
    if not _canonical_vfio_node(device.path):
        return Routed(device, Bucket.REJECTED,
                      f"{shown(device.path, 80)} is neither /dev/vfio/<group> nor "
                      "/dev/vfio/devices/vfio<N> (ASCII digits)")
    source = resolve_vfio(device, inventory)
    if isinstance(source, str):
        return Routed(device, Bucket.REJECTED, source)
    if cold is not PortKind.NO_PORT:
        why = f"cold_plug_vfio = {cold.value}: plugged on the QEMU command line"
        if request.is_sandbox:
            why += "; sandbox (pause) container: in the VM, no agent entry (Kata PR #13681)"
        return Routed(device, Bucket.COLD_VFIO, why, vfio=source)
    if request.is_sandbox:
        return Routed(device, Bucket.REJECTED,
                      "the sandbox (pause) container carries no VFIO devices (Kata PR #13681);"
                      " with hot_plug_vfio request them in the workload container, or set "
                      "cold_plug_vfio to plug them at sandbox creation", vfio=source)
    if hot is PortKind.BRIDGE_PORT and hotplug is HotplugMode.NATIVE:
        return Routed(device, Bucket.REJECTED,
                      'hot_plug_vfio = "bridge-port" needs ACPI PCI hot-plug: a pci-bridge slot '
                      "takes no native PCIe hot-plug and podplug never uses SHPC (Kata #2174)",
                      vfio=source)
    return Routed(device, Bucket.HOT_VFIO, f"hot_plug_vfio = {hot.value}: QMP device_add",
                  vfio=source)


VHOST_USER_OFF = "a vhost-user-blk node (major 241) needs enable_vhost_user_store = true"


def _route_vhost_user(device: ContainerDevice, inventory: HostInventory,
                      refusal: str | None) -> Routed:
    if refusal is not None:
        return Routed(device, Bucket.REJECTED, refusal)
    node = inventory.vhost_user_nodes.get((device.major, device.minor))
    if node is None:
        store = inventory.vhost_user_store or "vhost_user_store_path"
        return Routed(device, Bucket.REJECTED,
                      f"no vhost-user device node {device.major}:{device.minor} in "
                      f"{shown(store, 80)}/block/devices (Kata getVhostUserHostPath)")
    return Routed(device, Bucket.HOT_BLOCK,
                  f"vhost-user-blk, backend {shown(node.socket, 80)}: hot-plugged as "
                  "vhost-user-blk-pci", vhost=node)


def _route_block(device: ContainerDevice, inventory: HostInventory,
                 vhost_refusal: str | None) -> Routed:
    if device.major in (FLOPPY_MAJOR, CDROM_MAJOR):
        return Routed(device, Bucket.REJECTED,
                      f"major {device.major} (floppy/CD-ROM) is not passed to VMs "
                      "(Kata filterDevices drops it; podplug says so)")
    if device.major == VHOST_USER_BLK_MAJOR:
        return _route_vhost_user(device, inventory, vhost_refusal)
    node = inventory.block_nodes.get((device.major, device.minor))
    if node is None:
        return Routed(device, Bucket.REJECTED,
                      f"no host block device {device.major}:{device.minor} "
                      "(/sys/dev/block has no such entry)")
    return Routed(device, Bucket.HOT_BLOCK, f"host {node.dev_path}: hot-plugged", block=node)


def route_device(
    device: ContainerDevice, request: ContainerRequest, inventory: HostInventory,
    *, vfio_mode: VfioMode, cold: PortKind, hot: PortKind,
    hotplug: HotplugMode = HotplugMode.ACPI, choice: PortChoice = PortChoice(),
    vhost_refusal: str | None = VHOST_USER_OFF,
) -> Routed:
    """Route one device. Pure; the same inputs always give the same bucket.
    ``vhost_refusal``: why vhost-user-blk nodes are refused, None when they are planned."""
    if is_vfio_path(device.path):
        routed = _route_vfio(device, request, inventory, cold, hot, hotplug, choice)
    elif device.type is NodeType.BLOCK:
        routed = _route_block(device, inventory, vhost_refusal)
    else:
        routed = Routed(device, Bucket.NODE, "plain device node, passed in the spec")
    if device.path.startswith(VFIO_DIR) and vfio_mode is VfioMode.GUEST_KERNEL:
        routed = Routed(routed.device, routed.bucket, routed.reason, routed.vfio, routed.block,
                        routed.vhost, in_spec=False)
    return routed


def route(
    request: ContainerRequest, inventory: HostInventory,
    *, vfio_mode: VfioMode, cold: PortKind, hot: PortKind,
    hotplug: HotplugMode = HotplugMode.ACPI, choice: PortChoice = PortChoice(),
    vhost_refusal: str | None = VHOST_USER_OFF,
) -> tuple[Routed, ...]:
    """Route every device of ``request``; one :class:`Routed` per input, in input order."""
    return tuple(
        route_device(d, request, inventory, vfio_mode=vfio_mode, cold=cold, hot=hot,
                     hotplug=hotplug, choice=choice, vhost_refusal=vhost_refusal)
        for d in request.devices
    )
