"""The plan: one value that says where every device goes and how it is presented.

Produced only by :func:`podplug.plan.plan.plan`; read by the renderers (argv, QMP, tree,
JSON, dot) and by the shell that carries it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from podplug.inputs.kata import RuntimeConfig
from podplug.model.enums import AgentDeviceType, Bucket, ContainerType, HotplugMode
from podplug.model.pci import Bdf, GuestPciPath
from podplug.model.request import ContainerDevice
from podplug.plan.topology import Topology

PropValue = str | int | bool


@dataclass(frozen=True)
class QemuObject:
    """A QOM object a device needs, made before it and deleted after it: ``-object
    qom_type,id=...`` on the command line, QMP ``object-add`` / ``object-del`` when hot."""

    qom_type: str  # "iommufd", "memory-backend-ram"
    id: str
    props: tuple[tuple[str, PropValue], ...] = ()

    def arguments(self) -> dict[str, object]:
        return {"qom-type": self.qom_type, "id": self.id, **dict(self.props)}


@dataclass(frozen=True)
class QemuDevice:
    """ONE property map per device: rendered both as ``-device driver,k=v`` and as the
    arguments of QMP ``device_add`` (rule: one source for cold and hot plug)."""

    driver: str
    props: tuple[tuple[str, PropValue], ...]  # ordered; includes id, bus, addr
    objects: tuple[QemuObject, ...] = ()  # QOM objects the props name (iommufd, pmrdev)

    @property
    def id(self) -> str:
        return str(dict(self.props)["id"])

    @property
    def bus(self) -> str:
        return str(dict(self.props).get("bus", ""))


def cache_is_direct(node_cache: tuple[bool, bool] | None, file_direct: bool | None) -> bool:
    """Whether QEMU opens a volume ``O_DIRECT``: the protocol node's own ``cache.direct``
    when it sets one, else the one it inherits from the raw node above it (measured with
    QEMU 7.2: a child that sets no cache options takes its parent's)."""
    if file_direct is not None:
        return file_direct
    return bool(node_cache and node_cache[0])


@dataclass(frozen=True)
class BlockdevNode:
    """A QMP ``blockdev-add`` node (``-blockdev`` on the command line): a ``raw`` node over
    a protocol node, with the ``aio`` and cache options of :mod:`podplug.plan.blockdev`."""

    node_name: str
    driver: str  # format driver, "raw"
    file_driver: str  # "host_device" for block devices, "file" for regular files
    filename: str
    read_only: bool = False  # the run's read-only proof: QEMU cannot write the volume
    aio: str = ""  # protocol node "aio" ("io_uring", "native", "threads"); "" = not sent
    node_cache: tuple[bool, bool] | None = None  # raw node cache (direct, no-flush)
    file_direct: bool | None = None  # protocol node cache.direct

    @property
    def direct(self) -> bool:
        """Whether QEMU opens the volume ``O_DIRECT`` (:func:`cache_is_direct`)."""
        return cache_is_direct(self.node_cache, self.file_direct)

    def arguments(self) -> dict[str, object]:
        file: dict[str, object] = {"driver": self.file_driver, "filename": self.filename}
        if self.aio:
            file["aio"] = self.aio
        if self.file_direct is not None:
            file["cache"] = {"direct": self.file_direct}
        args: dict[str, object] = {"driver": self.driver, "node-name": self.node_name,
                                   "file": file}
        if self.node_cache is not None:
            args["cache"] = {"direct": self.node_cache[0], "no-flush": self.node_cache[1]}
        if self.read_only:
            args["read-only"] = True
            file["read-only"] = True
        return args


@dataclass(frozen=True)
class Chardev:
    """A socket chardev QEMU connects to a vhost-user backend with: QMP ``chardev-add``
    before the device naming it, ``chardev-remove`` after the device is gone (QEMU
    ``qapi/char.json`` ``ChardevSocket``; Kata ``ExecuteCharDevUnixSocketAdd``: a client,
    ``reconnect`` only when ``vhost_user_reconnect_timeout_sec`` is set)."""

    id: str
    path: str  # the backend's unix socket
    reconnect: int = 0  # seconds; 0: no reconnecting
    fd_name: str = ""  # run only: connected by podplug, handed over by getfd under this name

    def arguments(self) -> dict[str, object]:
        addr = {"type": "fd", "data": {"str": self.fd_name}} if self.fd_name else \
            {"type": "unix", "data": {"path": self.path}}
        data: dict[str, object] = {"addr": addr, "server": False}
        if self.reconnect:
            data["reconnect"] = self.reconnect
        return {"id": self.id, "backend": {"type": "socket", "data": data}}


@dataclass(frozen=True)
class AgentDevice:
    """A kata-agent ``Device`` entry (``agent.proto``: id, type, vm_path, container_path,
    options), as the runtime would send it in ``CreateContainerRequest.devices``."""

    id: str
    type: AgentDeviceType
    vm_path: str
    container_path: str
    options: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "type": self.type.value,
            "vm_path": self.vm_path,
            "container_path": self.container_path,
            "options": list(self.options),
        }


@dataclass(frozen=True)
class PlannedFunction:
    """One host function of a VFIO device and the QEMU device that carries it."""

    host: Bdf
    guest_function: int
    qemu: QemuDevice
    guest_path: GuestPciPath
    vendor: int
    device: int
    class_code: int


@dataclass(frozen=True)
class DevicePlan:
    """Where one requested container device goes."""

    request: ContainerDevice
    bucket: Bucket
    reason: str
    in_spec: bool = True
    guest_paths: tuple[GuestPciPath, ...] = ()  # one per plug unit (VFIO) or the block device
    functions: tuple[PlannedFunction, ...] = ()  # VFIO
    blockdev: BlockdevNode | None = None  # block
    qemu: QemuDevice | None = None  # block: virtio-blk-pci, scsi-hd or vhost-user-blk-pci
    chardev: Chardev | None = None  # vhost-user-blk: the backend's socket
    scsi_address: str | None = None  # "scsi-id:lun"
    agent: AgentDevice | None = None
    notes: tuple[str, ...] = ()

    @property
    def qemu_devices(self) -> tuple[QemuDevice, ...]:
        """Every QEMU device of this request, in plug order."""
        if self.functions:
            return tuple(f.qemu for f in self.functions)
        return (self.qemu,) if self.qemu is not None else ()

    @property
    def plug_order(self) -> tuple[QemuDevice, ...]:
        """Hot-plug order: functions 1-7 of a slot before function 0, which makes QEMU
        announce the slot to the guest (``docs/pcie.txt``; anchors §1.5)."""
        return tuple(sorted(self.qemu_devices, key=lambda q: _function_of(q) == 0))


def _function_of(device: QemuDevice) -> int:
    addr = str(dict(device.props).get("addr", "0x0"))
    return int(addr.split(".")[1]) if "." in addr else 0


@dataclass(frozen=True)
class Plan:
    """The whole plan for one container in one sandbox VM."""

    config: RuntimeConfig
    container_type: ContainerType
    topology: Topology
    devices: tuple[DevicePlan, ...]  # one per request, in request order
    guest_iommu: bool  # vfio mode with VFIO devices: the guest needs a virtual IOMMU
    hotplug: HotplugMode = HotplugMode.ACPI

    @property
    def shared_memory(self) -> bool:
        """vhost-user backends map guest RAM: it must be a shared memory backend."""
        return any(d.chardev is not None for d in self.devices)

    def in_bucket(self, bucket: Bucket) -> tuple[DevicePlan, ...]:
        return tuple(d for d in self.devices if d.bucket is bucket)

    @property
    def container_devices(self) -> tuple[DevicePlan, ...]:
        """The container's device list: the union of all buckets but the rejected one.

        In ``vfio`` mode the VFIO control node comes first, then the VFIO devices (Kata
        ``sortContainerVFIODevices``), then the rest in request order.
        """
        kept = [d for d in self.devices if d.bucket is not Bucket.REJECTED]
        control = [d for d in kept if d.request.path == "/dev/vfio/vfio"
                   and d.bucket not in (Bucket.COLD_VFIO, Bucket.HOT_VFIO)]
        vfio = [d for d in kept if d.bucket in (Bucket.COLD_VFIO, Bucket.HOT_VFIO)]
        rest = [d for d in kept if d.request.path != "/dev/vfio/vfio"
                and d.bucket not in (Bucket.COLD_VFIO, Bucket.HOT_VFIO)]
        return tuple(control + vfio + rest)

    @property
    def agent_devices(self) -> tuple[AgentDevice, ...]:
        return tuple(d.agent for d in self.container_devices if d.agent is not None)

    def counts(self) -> Mapping[Bucket, int]:
        return {bucket: len(self.in_bucket(bucket)) for bucket in Bucket}
