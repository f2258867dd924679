"""Closed sets of the domain. Strings appear only at the edges (``.value``)."""

from __future__ import annotations

from enum import Enum


class VfioMode(Enum):
    """Kata ``[runtime] vfio_mode``: how a VFIO device is presented to the container.

    ``vfio``: the guest binds the device to vfio-pci and the container gets
    ``/dev/vfio/<guest group>`` (agent type ``vfio-pci``). ``guest-kernel``: the guest's own
    driver keeps the device, ``/dev/vfio/*`` nodes are stripped from the spec
    (agent type ``vfio-pci-gk``). It never decides which devices exist.
    """

    VFIO = "vfio"
    GUEST_KERNEL = "guest-kernel"


class PortKind(Enum):
    """Kata's ``config.PCIePort``: where a VFIO device is plugged (``cold_plug_vfio`` /
    ``hot_plug_vfio``)."""

    NO_PORT = "no-port"
    ROOT_PORT = "root-port"
    SWITCH_PORT = "switch-port"
    BRIDGE_PORT = "bridge-port"


class BlockDriver(Enum):
    """Kata ``block_device_driver``: how block volumes reach the guest."""

    VIRTIO_BLK = "virtio-blk"
    VIRTIO_SCSI = "virtio-scsi"


class BlockAio(Enum):
    """Kata ``block_device_aio``: QEMU's ``aio`` for a volume's file node (``io_uring`` is
    both runtimes' default; ``native`` needs ``cache.direct``, see :mod:`podplug.plan.blockdev`)."""

    IO_URING = "io_uring"
    NATIVE = "native"
    THREADS = "threads"


class Hypervisor(Enum):
    """Which ``[hypervisor.<name>]`` table the configuration holds."""

    QEMU = "qemu"
    CLOUD_HYPERVISOR = "clh"
    FIRECRACKER = "firecracker"
    DRAGONBALL = "dragonball"
    STRATOVIRT = "stratovirt"
    REMOTE = "remote"
    OPENVMM = "openvmm"  # runtime-rs 4.1.0+


class KataRuntime(Enum):
    """Which Kata runtime a configuration file is for: they read some keys differently.

    runtime-rs files carry ``[runtime] name = "virt_container"`` and ``hypervisor_name``
    (every shipped file of 3.13.0-main); Go runtime files have neither.
    """

    GO = "go"
    RUST = "runtime-rs"


class NodeType(Enum):
    """OCI ``linux.devices[].type``."""

    CHAR = "c"
    UNBUFFERED_CHAR = "u"
    BLOCK = "b"
    FIFO = "p"


class ContainerType(Enum):
    """Whether the container is the pod's sandbox (pause) container (CRI annotations)."""

    SANDBOX = "sandbox"
    CONTAINER = "container"


class Bucket(Enum):
    """Where one container device ends up. Every device lands in exactly one."""

    COLD_VFIO = "cold-vfio"
    HOT_VFIO = "hot-vfio"
    HOT_BLOCK = "hot-block"
    NODE = "node"
    REJECTED = "rejected"


class AgentDeviceType(Enum):
    """kata-agent ``Device.type`` values podplug emits (``kata-types/src/device.rs``)."""

    BLK = "blk"
    SCSI = "scsi"
    VFIO_PCI = "vfio-pci"
    VFIO_PCI_GK = "vfio-pci-gk"


class HotplugMode(Enum):
    """How the guest learns of hot-plugged devices. Never SHPC (Kata #2174: 5 s waits).

    ``acpi``: ACPI PCI hot-plug, the q35 default since QEMU 6.1, for root ports, switch
    ports and bridge slots alike (~0.09 s add and unplug here). ``native``: PCIe native
    hot-plug (pciehp) on root and downstream ports only; unplug waits Linux's 5 s abort
    window, and ``pci-bridge`` slots cannot take hot-plugged devices at all.
    """

    ACPI = "acpi"
    NATIVE = "native"


class VfioKind(Enum):
    """The two host forms of a VFIO device node."""

    GROUP = "group"  # legacy /dev/vfio/<group>: the whole IOMMU group
    IOMMUFD = "iommufd"  # /dev/vfio/devices/vfioN: exactly one function


class ModuleGroup(Enum):
    """A group of guest kernel modules in podplug's image (``/etc/podplug/modules``).

    ``boot`` is what the agent's own channel needs and is loaded before it answers; the
    others are loaded when a plan's devices need them (:mod:`podplug.plan.guest_needs`).
    """

    BOOT = "boot"  # virtio PCI transport + virtio_console
    BLK = "blk"  # virtio_blk
    SCSI = "scsi"  # virtio_scsi, sd_mod
    NVME = "nvme"  # nvme (the emulated VFIO stand-ins, window keepers)
    VFIO = "vfio"  # vfio, vfio_iommu_type1, vfio_pci: the agent binds guest functions
    FS = "fs"  # ext4 when modular: the writable volumes' filesystem round trip
