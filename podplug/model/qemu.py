"""What a QEMU binary can do: its version and the features podplug's plans may need.

Filled by :func:`podplug.vm.probe.probe_qemu` (the shell asks the binary itself over QMP)
and compared with :func:`podplug.plan.needs.qemu_needs` (what a plan renders). Versions are
facts to report, never a stand-in for a feature check: Debian 12 ships QEMU 7.2, Debian 13
QEMU 10.0, and a distribution may backport or drop a feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class QemuFeature(Enum):
    """A QEMU feature a plan may render, spelled as the plan uses it.

    Each is probed by a type or a property (:data:`podplug.vm.probe.FEATURE_PROBES`):
    ``-object iommufd`` and ``vfio-pci,iommufd=`` arrived in QEMU 9.0; ``pref64-reserve`` on
    ``pcie-root-port`` in 3.0; nvme's persistent memory region (``pmrdev``) in 5.1; a memory
    backend without reserved RAM (``reserve=off``) in 6.1. ``-sandbox`` exists only in a
    QEMU built with libseccomp (Debian's is); its ``obsolete``/``elevateprivileges``/
    ``spawn``/``resourcecontrol`` suboptions date from QEMU 2.11 and 3.1. ``aio=io_uring``
    (QEMU 5.0, built with liburing) also needs a kernel that lets QEMU set up a ring: it is
    probed by opening a file with it for real.
    """

    IOMMUFD_OBJECT = "-object iommufd"
    VFIO_IOMMUFD = "vfio-pci,iommufd="
    PREF64_RESERVE = "pref64-reserve="  # on pcie-root-port and pci-bridge
    MEM_RESERVE = "mem-reserve="
    NVME_PMR = "nvme,pmrdev="
    MEMORY_NORESERVE = "memory-backend-ram,reserve="
    SANDBOX = "-sandbox"  # QEMU built with libseccomp: every podplug VM runs under it
    AIO_IO_URING = "aio=io_uring"  # a volume's file node opened with io_uring, here
    VHOST_USER_BLK = "vhost-user-blk-pci"  # QEMU built with vhost-user (Linux)
    SHARED_RAM = "memory-backend-memfd"  # guest RAM a vhost-user backend can map


@dataclass(frozen=True)
class QemuCapabilities:
    """One QEMU binary, as it described itself."""

    binary: str
    version: tuple[int, int, int]
    package: str  # the distribution's package version, e.g. "Debian 1:7.2+dfsg-7+deb12u18"
    features: frozenset[QemuFeature]

    @property
    def version_text(self) -> str:
        text = ".".join(map(str, self.version))
        return f"{text} ({self.package})" if self.package else text

    def lacks(self, needed: frozenset[QemuFeature]) -> tuple[QemuFeature, ...]:
        """The needed features this binary does not have, in a stable order."""
        return tuple(f for f in QemuFeature if f in needed and f not in self.features)
