"""How a planned device is presented: its QEMU property map and its kata-agent entry.

The only place where ``vfio_mode`` matters (research ``kata-devices.md`` §4.4-4.5):
``vfio`` gives agent type ``vfio-pci`` (the agent binds the device to vfio-pci and exposes
``/dev/vfio/<guest group>``), ``guest-kernel`` gives ``vfio-pci-gk`` (the guest driver keeps
the device; only the host-to-guest BDF map is recorded). Options are Kata's
``"<host BDF>=<guest PCI path>"`` strings, one per function, each naming its own guest
function (``03/00`` and ``03/00.1`` for the two functions of one slot: the agent reads a
path element as ``SS[.F]`` with F defaulting to 0, so ``03/00`` twice would send both
host functions to guest function 0).

QEMU property maps follow QEMU's device properties: ``vfio-pci`` (``host``, ``bus``, ``addr``
``SS.F``, ``multifunction=on`` on EVERY function of a multi-function slot, ``iommufd`` for
cdevs). Every function, not only function 0: measured here, a two-function slot
hot-plugged onto a root port with the bit on function 0 alone lands in TWO guest IOMMU
groups (Linux groups a hot-added function with its siblings only when its own header says
multifunction), with the bit on both in one group; real multi-function devices set it in
every function's header too.
A property's value has its QEMU type (``bool``, ``int``, ``str``): the command line spells a
bool ``on``/``off`` (:mod:`podplug.render.argv`), QMP ``true``/``false``. QEMU 7.2's
``device_add`` also took ``"on"`` for a bool, QEMU 10.0's refuses it ("Invalid parameter
type for 'multifunction', expected: boolean"); the typed value is right for both.
``virtio-blk-pci`` and ``scsi-hd`` (``drive``, ``bus`` ``scsi0.0``, ``scsi-id``, ``lun``).
``addr`` is always explicit: on a PCIe port it must be slot 0 or QEMU silently puts the
device where the guest cannot see it (research ``qemu-recipe.md`` pitfall 2).
"""

from __future__ import annotations

from collections.abc import Iterable

from podplug.model.enums import AgentDeviceType, VfioKind, VfioMode
from podplug.model.host import PciFunction
from podplug.plan.model import AgentDevice, PlannedFunction, QemuDevice, QemuObject
from podplug.plan.route import VfioSource
from podplug.plan.topology import Controller, Role, Target
from podplug.plan.units import PlugUnit

SCSI_BUS = "scsi0.0"


def qemu_id(prefix: str, function: PciFunction) -> str:
    """A deterministic QEMU id for a host function (``vfio-0000-41-00-1``)."""
    bdf = function.bdf
    return f"{prefix}-{bdf.domain:04x}-{bdf.bus:02x}-{bdf.device:02x}-{bdf.function:x}"


def vfio_functions(
    unit: PlugUnit, target: Target, source: VfioSource, iommufd_object: str | None
) -> tuple[PlannedFunction, ...]:
    """The ``vfio-pci`` devices of one plug unit placed at ``target``."""
    planned = []
    objects = (QemuObject("iommufd", iommufd_object),) \
        if source.kind is VfioKind.IOMMUFD and iommufd_object is not None else ()
    for guest_function, function in enumerate(unit.functions):
        props: list[tuple[str, str | int | bool]] = [
            ("id", qemu_id("vfio", function)),
            ("host", str(function.bdf)),
            ("bus", target.bus),
            ("addr", f"{target.addr:02x}.{guest_function}"),
        ]
        if unit.multifunction:
            props.append(("multifunction", True))
        if source.kind is VfioKind.IOMMUFD and iommufd_object is not None:
            props.append(("iommufd", iommufd_object))
        planned.append(PlannedFunction(function.bdf, guest_function,
                                       QemuDevice("vfio-pci", tuple(props), objects),
                                       target.path.at_function(guest_function),
                                       function.vendor, function.device, function.class_code))
    return tuple(planned)


def vfio_agent_device(
    source: VfioSource, functions: tuple[PlannedFunction, ...], container_path: str,
    mode: VfioMode,
) -> AgentDevice:
    """Kata ``appendVfioDevice``: id is the group (or cdev) name; one option per function,
    ``<host BDF>=<guest PCI path>`` with the guest function on the path's last element
    (``0000:41:00.1=03/00.1``; :mod:`podplug.model.pci` says which agents read it)."""
    kind = AgentDeviceType.VFIO_PCI if mode is VfioMode.VFIO else AgentDeviceType.VFIO_PCI_GK
    options = tuple(f"{f.host}={f.guest_path}" for f in functions)
    return AgentDevice(source.name, kind, "", container_path, options)


def disk_name(prefix: str, index: int) -> str:
    """Linux disk naming: ``vda``..``vdz``, ``vdaa``.. (``sd_format_disk_name``)."""
    letters = ""
    index += 1
    while index > 0:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return prefix + letters


def virtio_blk_device(index: int, node_name: str, target: Target) -> QemuDevice:
    ident = f"blk{index}"
    return QemuDevice("virtio-blk-pci", (
        ("id", ident), ("drive", node_name), ("bus", target.bus),
        ("addr", f"{target.addr:02x}.0"), ("serial", ident),
    ))


def vhost_user_blk_device(index: int, chardev: str, target: Target) -> QemuDevice:
    """``vhost-user-blk-pci`` (the disk's geometry and serial come from the backend)."""
    return QemuDevice("vhost-user-blk-pci", (
        ("id", f"vublk{index}"), ("chardev", chardev), ("bus", target.bus),
        ("addr", f"{target.addr:02x}.0"),
    ))


def scsi_address(index: int) -> tuple[int, int]:
    """Kata's virtio-scsi address for the Nth volume: (scsi-id, lun) = divmod(N, 256)."""
    return divmod(index, 256)


def scsi_hd_device(index: int, node_name: str) -> QemuDevice:
    scsi_id, lun = scsi_address(index)
    return QemuDevice("scsi-hd", (
        ("id", f"blk{index}"), ("drive", node_name), ("bus", SCSI_BUS),
        ("channel", 0), ("scsi-id", scsi_id), ("lun", lun), ("serial", f"blk{index}"),
    ))


def controller_device(controller: Controller) -> QemuDevice:
    """The property map of a topology controller (QEMU ``docs/pcie.txt`` device names)."""
    props: list[tuple[str, str | int | bool]] = [
        ("id", controller.id), ("bus", controller.bus), ("addr", f"{controller.addr:02x}.0"),
    ]
    if controller.role is Role.PCI_BRIDGE:
        props += [("chassis_nr", controller.chassis or 0), ("shpc", False)]
    elif controller.chassis is not None:
        props += [("chassis", controller.chassis), ("slot", controller.slot or 0)]
    props += list(controller.reserves)
    return QemuDevice(controller.role.value, tuple(props))


def keeper_device(controller: Controller) -> QemuDevice:
    """The window keeper of a switch downstream port (:mod:`.windows`): an emulated nvme
    whose persistent memory region (BAR4, 64-bit prefetchable) makes firmware size the
    port's window; its memory is never touched (``reserve=off``: no RAM is set aside)."""
    ident = f"keep-{controller.id}"
    backend = QemuObject("memory-backend-ram", f"{ident}-pmr",
                         (("size", controller.keeper), ("reserve", False)))
    return QemuDevice("nvme", (
        ("id", ident), ("bus", controller.id), ("addr", "00.0"),
        ("serial", ident), ("pmrdev", backend.id),
    ), (backend,))


def keeper_devices(controllers: Iterable[Controller]) -> tuple[QemuDevice, ...]:
    """The window keepers of a topology, in controller order."""
    return tuple(keeper_device(c) for c in controllers if c.keeper)
