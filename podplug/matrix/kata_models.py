"""Pure models of upstream Kata's container device selection, one per era.

These models exist to *explain and check* deployments ("what did Kata 3.16 do with this
pod?"); podplug never plans with them (planning is :mod:`podplug.plan.route`).

Upstream, the Go runtime decides which of a container's ``linux.devices`` are attached and
reported to the agent in ``Container.createDevices()``
(``src/runtime/virtcontainers/container.go``; research ``kata-devices.md`` §1). Each model
re-implements, without copying, the code read at the release tags of
kata-containers/kata-containers. A device that ``createDevices`` leaves out is never attached
and never reported to the agent, while its spec node still reaches the guest (§1.1, §1.6).

The modelled pipeline, per container:

1. **Split** (:func:`_split`, the same in every era since ``4c93bb2d61``): a device whose
   *container* path passes ``IsVFIODevice`` goes to the hot list with the ``hot_plug_vfio``
   port when that is set, else to the cold VFIO list (``vfioColdPlugDevices``; called
   ``coldPlugDevices`` before ``2fd2cd4a9b``) when ``cold_plug_vfio`` is set. Every other
   device (block, ``/dev/vfio/vfio``, other char devices, and VFIO with no port at all) goes
   to the hot list (``hotPlugDevices``).
2. **Select**: one function per :class:`KataEra`, the part that changed.
3. **filterDevices**: CD-ROM and floppy majors are removed with only an info log.
4. **Attach**: ``attachDevices`` walks the list in order; a VFIO device without a port fails
   there ("port is not set"), which aborts container creation. So does a block volume QEMU
   refuses, and a vhost-user-blk node Kata cannot plug (below).

Block volumes (issue 14), the same in every era (read at every release tag from 3.6.0 to
4.1.0 and at main, 2026-08):

* **vhost-user-blk** (:func:`kata_is_vhost_user_blk`: a block node of major 241, Kata
  ``IsVhostUserBlk`` in ``pkg/device/manager/utils.go``, by type and major only) is not a
  VFIO path, so the split puts it in the hot list like any block volume, and an era that
  discards the hot list (3.14-3.16, vfio mode with cold plug) drops it silently.
  ``createDevice`` (``manager.go``) makes it a vhost-user-blk device whether or not the
  store is enabled; only ``GetHostPath`` (``pkg/device/config/config.go``) reads
  ``enable_vhost_user_store``: with it, the backend socket comes from the store; without
  it, the node is looked up in ``/sys/dev/block`` and, absent there, the *container* path
  becomes the socket, so the ``chardev-add`` of ``hotplugAddVhostUserBlkDevice``
  (``virtcontainers/qemu.go``) cannot connect and attach fails. Only QEMU plugs it:
  Cloud Hypervisor's ``HotplugAddDevice`` (``clh.go``) has no vhost-user case and fails
  ("unsupported device type"); ``newClhHypervisorConfig`` does not even read the store key.
* **The store needs huge pages**: the Go runtime's QEMU driver (``qemu.go`` ``CreateVM``)
  refuses ``enable_vhost_user_store`` without ``enable_hugepages`` ("... enabled without
  HugePages ..."), so the sandbox never starts and no device of any of its containers
  reaches it (``SANDBOX_FAILS``).
* **aio**: the Go runtime's ``hotplugAddBlockDevice`` (``qemu.go``) puts
  ``block_device_aio`` on every hot-plugged volume's ``blockdev-add`` (govmm
  ``blockdevAddBaseArgs``, ``pkg/govmm/qemu/qmp.go``: its ``file`` node's ``aio``, there
  since 3.0.0-alpha1, ``00860a7e43``, so in every modelled era) and adds the cache options
  (on the ``raw`` node) only with ``block_device_cache_set``. QEMU refuses ``aio=native``
  without ``cache.direct=on``, so with ``native`` and not both ``block_device_cache_set``
  and ``block_device_cache_direct`` every raw volume fails at attach, in every era (loud;
  podplug plans ``threads`` instead, :mod:`podplug.plan.blockdev`). Nothing in
  ``katautils/config.go`` checks the pair. ``block_device_aio`` is read for QEMU only.

Each input device gets exactly one :class:`KataOutcome`:

======================  ============================================================
``KEPT``                listed; attached (a cold VFIO entry is found already attached)
                        and reported to the agent
``DROPPED_SILENTLY``    not selected: never attached nor reported, spec node kept with
                        the host major:minor (ENXIO, #11288; "No PCI mapping", #13103)
``FILTERED``            selected, then removed by ``filterDevices`` (CD-ROM / floppy)
``FAILS_AT_ATTACH``     listed, but attach errors and container creation fails (loud,
                        unlike the two above): a VFIO device with no port, a raw volume
                        with ``aio=native`` and no ``cache.direct``, a vhost-user-blk node
                        with the store off or on Cloud Hypervisor
``SANDBOX_FAILS``       the configuration keeps the VM from starting (the vhost-user store
                        without huge pages): nothing is listed or attached (loud)
``NOT_FOR_PAUSE``       a pause container's cold VFIO entry, left out of its list; the
                        device is in the VM since sandbox creation (correct, not lost)
``LEAKED_TO_PAUSE``     a pause container listing a cold VFIO entry: the guest rejects
                        the pause CreateContainer (what #13681 closed)
======================  ============================================================

Not modelled (the inputs do not carry it): erofs and virtual-volume devices that Kata
prepends; the skip of VFIO devices already cold-plugged as an SR-IOV network
``PhysicalEndpoint`` (``025202a52a``, 3.32.0+); hypervisor annotation overrides (pass the
effective configuration, e.g. after :func:`podplug.inputs.kata.apply_annotations`); the
``vfio_mode = guest-kernel`` removal of ``/dev/vfio/*`` from the gRPC spec; agent behaviour;
runtime-rs (every model is of the Go runtime: a runtime-rs configuration is read as the Go
runtime would read it, so its own block handling, :mod:`podplug.plan.blockdev`, is not
modelled). Assumed: every cold VFIO entry of a container was cold-plugged at sandbox
creation (in Kubernetes the pause spec carries the same nodes). If not, Kata fails at
attach (§1.9).
Also assumed, for what depends on the host: with the store enabled, a vhost-user-blk node
is in ``<store>/block/devices`` and its backend listens at ``<store>/block/sockets``
(otherwise ``NewDevice`` fails: loud); ``/sys/dev/block`` has no node of major 241 (a
local/experimental major); QEMU can use ``io_uring`` (otherwise every volume's hot-plug
fails: Kata has no fallback); huge pages are available when enabled. Not verified: that a
store-less vhost-user-blk node with ``vhost_user_reconnect_timeout_sec`` set fails rather
than leaves QEMU retrying the connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from podplug.inputs.kata import RuntimeConfig
from podplug.model.enums import BlockAio, Hypervisor, NodeType, PortKind, VfioMode
from podplug.model.request import ContainerDevice, ContainerRequest
from podplug.model.text import shown

__all__ = [
    "CDROM_MAJORS",
    "FLOPPY_MAJOR",
    "LOST_OUTCOMES",
    "LOUD_OUTCOMES",
    "VHOST_USER_BLK_MAJOR",
    "KataDeviceOutcome",
    "KataEra",
    "KataList",
    "KataOutcome",
    "KataSelection",
    "compare_eras",
    "era_by_name",
    "era_for_version",
    "failed_devices",
    "filter_devices",
    "is_filtered_major",
    "kata_is_vfio_control_device",
    "kata_is_vfio_device",
    "kata_is_vhost_user_blk",
    "lost_devices",
    "select_devices",
    "sort_container_vfio_devices",
]

_VFIO_DIR = "/dev/vfio/"  # Kata deviceManager vfioPath
_VFIO_CONTROL = "/dev/vfio/vfio"

# container.go ``cdromMajors`` (from Linux include/uapi/linux/major.h), unchanged since 3.0.
CDROM_MAJORS: Mapping[int, str] = {
    11: "SCSI_CDROM_MAJOR", 15: "CDU31A_CDROM_MAJOR", 16: "GOLDSTAR_CDROM_MAJOR",
    17: "OPTICS_CDROM_MAJOR", 18: "SANYO_CDROM_MAJOR", 20: "MITSUMI_X_CDROM_MAJOR",
    23: "MITSUMI_CDROM_MAJOR", 24: "CDU535_CDROM_MAJOR", 25: "MATSUSHITA_CDROM_MAJOR",
    26: "MATSUSHITA_CDROM2_MAJOR", 27: "MATSUSHITA_CDROM3_MAJOR",
    28: "MATSUSHITA_CDROM4_MAJOR", 29: "AZTECH_CDROM_MAJOR", 32: "CM206_CDROM_MAJOR",
}
FLOPPY_MAJOR = 2  # container.go ``floppyMajor``
VHOST_USER_BLK_MAJOR = 241  # pkg/device/config ``VhostUserBlkMajor``


# --------------------------------------------------------------------------------------------
# Eras
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EraFacts:
    first_release: str
    last_release: str | None
    pr: int
    commit: str
    summary: str


class KataEra(Enum):
    """One shape of ``createDevices``' final selection. The value is the ``--compare`` name.

    Releases are *release lines* ``X.Y``: every ``X.Y.Z`` belongs to its line's era (verified
    at every tag from ``3.6.0`` to ``4.1.0``: the selection code is identical within each era).
    """

    PRE_3_14 = "kata-pre-3.14"
    KATA_3_14_3_16 = "kata-3.14-3.16"
    KATA_3_17_3_31 = "kata-3.17-3.31"
    KATA_3_32_4_0 = "kata-3.32-4.0"
    HEAD = "kata-head"

    @property
    def first_release(self) -> str:
        """First release line with this shape (``"3.14"``)."""
        return _FACTS[self].first_release

    @property
    def last_release(self) -> str | None:
        """Last release line with this shape; ``None`` for :attr:`HEAD` (4.1 and later)."""
        return _FACTS[self].last_release

    @property
    def pr(self) -> int:
        """The kata-containers pull request that introduced this shape."""
        return _FACTS[self].pr

    @property
    def commit(self) -> str:
        """The commit (10 hex digits) that introduced this shape."""
        return _FACTS[self].commit

    @property
    def summary(self) -> str:
        """One line: what the era's selection does."""
        return _FACTS[self].summary


_FACTS: Mapping[KataEra, _EraFacts] = {
    KataEra.PRE_3_14: _EraFacts(
        "3.6", "3.13", 8861, "4c93bb2d61",
        "hot list only: cold VFIO entries never reach any container's device list (the "
        "devices are cold-plugged at sandbox creation, the agent gets no entry for them)"),
    KataEra.KATA_3_14_3_16: _EraFacts(
        "3.14", "3.16", 10767, "419b5ed715",
        "either/or: cold_plug_vfio with vfio_mode = vfio keeps only the cold VFIO list "
        "(every other device silently dropped, #11288); otherwise the hot list only"),
    KataEra.KATA_3_17_3_31: _EraFacts(
        "3.17", "3.31", 11289, "2fd2cd4a9b",
        "cold_plug_vfio with vfio_mode = vfio: cold VFIO list + hot list; otherwise the hot "
        "list only (guest-kernel still loses the cold VFIO entries)"),
    KataEra.KATA_3_32_4_0: _EraFacts(
        "3.32", "4.0", 13103, "e6777f0866",
        "cold_plug_vfio (any vfio_mode): cold VFIO list + hot list, for every container, "
        "the pause container included (the leak #13681 closed)"),
    KataEra.HEAD: _EraFacts(
        "4.1", None, 13681, "5a338e9ea1",
        "cold_plug_vfio: cold VFIO list + hot list, except for the CRI sandbox (pause) "
        "container, which gets the hot list only"),
}

_ALIASES: Mapping[str, KataEra] = {"kata-3.16": KataEra.KATA_3_14_3_16}
_OLDEST_MODELLED = (3, 6)
_VERSION = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})\.([0-9]{1,6})")  # ASCII digits only


def _line(release: str) -> tuple[int, int]:
    major, minor = release.split(".")
    return int(major), int(minor)


def era_for_version(version: str) -> KataEra:
    """The era of a Kata release ``"X.Y.Z"`` (``"3.16.0"`` → :attr:`KataEra.KATA_3_14_3_16`).

    Releases 4.1.0 and later are :attr:`KataEra.HEAD`. 3.6.0 to 3.13.x are
    :attr:`KataEra.PRE_3_14`. Older releases are refused: before ``4c93bb2d61`` (3.6.0)
    ``createDevices`` had no cold/hot split (3.2.0 to 3.5.0 removed cold VFIO nodes later, in
    ``Container.create``, and also dropped ``/dev/vfio/vfio`` in guest-kernel mode), so no
    model here describes them.

    :raises ValueError: for anything but ``X.Y.Z`` digits, or a release before 3.6.0.
    """
    match = _VERSION.fullmatch(version)
    if match is None:
        raise ValueError(f"not a Kata release version {shown(repr(version), 40)}: expected "
                         "X.Y.Z in ASCII digits, e.g. 3.16.0")
    line = (int(match[1]), int(match[2]))
    if line < _OLDEST_MODELLED:
        raise ValueError(
            f"Kata {version} predates the modelled code: before 3.6.0 (4c93bb2d61) "
            "createDevices had no cold/hot split; no era models it")
    for era in reversed(KataEra):
        if line >= _line(era.first_release):
            return era
    raise AssertionError("unreachable: PRE_3_14 starts at the oldest modelled line")


def era_by_name(name: str) -> KataEra:
    """The era for a ``--compare`` name (``"kata-3.17-3.31"``) or alias (``"kata-3.16"``).

    :raises ValueError: naming the accepted names.
    """
    for era in KataEra:
        if era.value == name:
            return era
    if name in _ALIASES:
        return _ALIASES[name]
    allowed = [era.value for era in KataEra] + list(_ALIASES)
    raise ValueError(f"unknown Kata era {name!r}; expected one of: {', '.join(allowed)}")


# --------------------------------------------------------------------------------------------
# Kata's helpers, re-implemented
# --------------------------------------------------------------------------------------------


def kata_is_vfio_device(path: str) -> bool:
    """Kata ``deviceManager.IsVFIODevice`` (``pkg/device/manager/utils.go``).

    True when ``path`` starts with ``/dev/vfio/`` and has something after it, unless it
    starts with ``/dev/vfio/vfio`` (so the control node, but also ``/dev/vfio/vfio12``, is
    not VFIO). ``createDevices`` applies it to the *container* path.
    """
    if path.startswith(_VFIO_CONTROL):
        return False
    return path.startswith(_VFIO_DIR) and len(path) > len(_VFIO_DIR)


def kata_is_vfio_control_device(path: str) -> bool:
    """Kata ``deviceManager.IsVFIOControlDevice``: exactly ``/dev/vfio/vfio``."""
    return path == _VFIO_CONTROL


def _control_first(indices: Sequence[int], devices: Sequence[ContainerDevice]) -> tuple[int, ...]:
    """``sortContainerVFIODevices`` (``cddcde1d40``, #7493) on indices into ``devices``.

    Walks the list once: a control node is put in front of everything gathered so far, any
    other device is appended. So the rest keeps its order and several control nodes end up
    in reverse order.
    """
    ordered: list[int] = []
    for index in indices:
        if kata_is_vfio_control_device(devices[index].path):
            ordered.insert(0, index)
        else:
            ordered.append(index)
    return tuple(ordered)


def sort_container_vfio_devices(
    devices: Sequence[ContainerDevice],
) -> tuple[ContainerDevice, ...]:
    """Kata ``sortContainerVFIODevices`` (``cddcde1d40``): control nodes moved to the front."""
    return tuple(devices[i] for i in _control_first(range(len(devices)), devices))


def kata_is_vhost_user_blk(device: ContainerDevice) -> bool:
    """Kata ``deviceManager.IsVhostUserBlk``: a block node of major 241, whatever its path
    and whether or not ``enable_vhost_user_store`` is set."""
    return device.type is NodeType.BLOCK and device.major == VHOST_USER_BLK_MAJOR


def is_filtered_major(major: int) -> bool:
    """Whether Kata's ``filterDevices`` removes a device of this major.

    It looks at the major only, whatever the node type: CD-ROM majors (:data:`CDROM_MAJORS`,
    11 for ``/dev/sr*`` but also 29, the char major of ``/dev/fb*``) and floppy (2, also the
    char major of legacy ``/dev/pty*``).
    """
    return major == FLOPPY_MAJOR or major in CDROM_MAJORS


def filter_devices(devices: Sequence[ContainerDevice]) -> tuple[ContainerDevice, ...]:
    """Kata ``filterDevices`` (container.go, every era): keep the order, drop filtered majors."""
    return tuple(d for d in devices if not is_filtered_major(d.major))


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


class KataList(Enum):
    """The ``createDevices`` list a device was split into (the Go variable name)."""

    COLD_VFIO = "vfioColdPlugDevices"
    HOT = "hotPlugDevices"


class KataOutcome(Enum):
    """What upstream Kata does with one container device (module docstring table)."""

    KEPT = "kept"
    DROPPED_SILENTLY = "dropped-silently"
    FILTERED = "filtered"
    FAILS_AT_ATTACH = "fails-at-attach"
    NOT_FOR_PAUSE = "not-for-pause"
    LEAKED_TO_PAUSE = "leaked-to-pause"
    SANDBOX_FAILS = "sandbox-fails"


LOST_OUTCOMES = frozenset({KataOutcome.DROPPED_SILENTLY, KataOutcome.FILTERED})
"""Outcomes where the device silently never reaches the container (see :func:`lost_devices`)."""

LOUD_OUTCOMES = frozenset({KataOutcome.FAILS_AT_ATTACH, KataOutcome.SANDBOX_FAILS})
"""Outcomes where Kata stops with an error instead of running without the device."""

_PROBLEM_OUTCOMES = LOST_OUTCOMES | LOUD_OUTCOMES | {KataOutcome.LEAKED_TO_PAUSE}


@dataclass(frozen=True)
class KataDeviceOutcome:
    """One input device: the list Kata split it into, its outcome and why.

    ``position`` is its index in :attr:`KataSelection.devices`, ``None`` when not listed.
    """

    device: ContainerDevice
    kata_list: KataList
    outcome: KataOutcome
    position: int | None
    reason: str


@dataclass(frozen=True)
class KataSelection:
    """What one era of Kata makes of one container's devices.

    ``entries`` has one item per input device, in input order. ``devices`` is Kata's
    ``c.devices``: the ordered list that ``attachDevices`` walks and ``appendDevices`` turns
    into agent ``Device`` entries (generic nodes such as ``/dev/vfio/vfio`` attach nothing).
    """

    era: KataEra
    entries: tuple[KataDeviceOutcome, ...]
    devices: tuple[ContainerDevice, ...]

    def outcome_of(self, path: str) -> KataOutcome:
        """The outcome of the first input device with container path ``path``.

        :raises KeyError: when no input device has that path.
        """
        for entry in self.entries:
            if entry.device.path == path:
                return entry.outcome
        raise KeyError(path)

    @property
    def attach_failure(self) -> KataDeviceOutcome | None:
        """The device whose attach fails first (in ``devices`` order), aborting creation.

        Devices listed after it are never attached.
        """
        failing = sorted(
            (e for e in self.entries
             if e.outcome is KataOutcome.FAILS_AT_ATTACH and e.position is not None),
            key=lambda e: e.position or 0)
        return failing[0] if failing else None

    @property
    def problems(self) -> tuple[KataDeviceOutcome, ...]:
        """Entries that are lost, fail at attach, or leak into the pause container."""
        return tuple(e for e in self.entries if e.outcome in _PROBLEM_OUTCOMES)


def lost_devices(selection: KataSelection) -> tuple[ContainerDevice, ...]:
    """Input devices Kata silently never gives the container: dropped or filtered.

    Not included: ``FAILS_AT_ATTACH`` (loud), ``NOT_FOR_PAUSE`` (correct), ``LEAKED_TO_PAUSE``
    (an extra entry, not a missing one).
    """
    return tuple(e.device for e in selection.entries if e.outcome in LOST_OUTCOMES)


def failed_devices(selection: KataSelection) -> tuple[ContainerDevice, ...]:
    """Input devices Kata fails loudly on: its attach errors, or the sandbox never starts.

    Every one of them, not only the first: an attach failure aborts the container, so the
    devices listed after it are never attached either (see
    :attr:`KataSelection.attach_failure`), but each of these would fail on its own.
    """
    return tuple(e.device for e in selection.entries if e.outcome in LOUD_OUTCOMES)


# --------------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BlockFacts:
    """What the Go runtime does with block volumes under one configuration (module doc)."""

    qemu: bool  # the only hypervisor that plugs vhost-user-blk and reads block_device_aio
    vhost_user_store: bool  # enable_vhost_user_store, as the Go runtime reads it (QEMU only)
    vm_refused: bool  # the store without huge pages: CreateVM errors
    native_without_direct: bool  # aio=native and no cache.direct sent: QEMU refuses


def _block_facts(config: RuntimeConfig) -> _BlockFacts:
    hv = config.hypervisor
    keys = hv.block
    qemu = hv.kind is Hypervisor.QEMU
    store = qemu and keys.enable_vhost_user_store
    direct = keys.cache_set and keys.cache_direct  # govmm ExecuteBlockdevAddWithCache
    return _BlockFacts(qemu, store, store and not keys.enable_hugepages,
                       qemu and keys.aio is BlockAio.NATIVE and not direct)


@dataclass(frozen=True)
class _Split:
    """``createDevices``' two lists (indices into ``devices``) and what selection reads."""

    devices: tuple[ContainerDevice, ...]
    cold: tuple[int, ...]
    hot: tuple[int, ...]
    cold_plug: bool  # cold_plug_vfio != no-port
    hot_plug: bool  # hot_plug_vfio != no-port
    vfio_mode: VfioMode
    cri_sandbox: bool
    block: _BlockFacts


def _split(request: ContainerRequest, config: RuntimeConfig) -> _Split:
    """The per-device loop of ``createDevices`` (``4c93bb2d61`` onwards, unchanged since).

    Shape: two flags, "cold port set" and "hot port set", read from the hypervisor config.
    For each device, in input order: VFIO (by container path) with the hot flag → hot list,
    its port set to ``hot_plug_vfio``; VFIO with the cold flag → cold VFIO list, port left
    unset (the sandbox-level device is found again by major:minor); anything else → hot list.
    The hot flag is tested first. A VFIO device with neither flag lands in the hot list
    without a port.
    """
    hv = config.hypervisor
    cold_plug = hv.cold_plug_vfio is not PortKind.NO_PORT
    hot_plug = hv.hot_plug_vfio is not PortKind.NO_PORT
    cold: list[int] = []
    hot: list[int] = []
    for index, device in enumerate(request.devices):
        is_vfio = kata_is_vfio_device(device.path)
        if is_vfio and not hot_plug and cold_plug:
            cold.append(index)
        else:
            hot.append(index)
    return _Split(request.devices, tuple(cold), tuple(hot), cold_plug, hot_plug,
                  config.vfio_mode, request.is_sandbox, _block_facts(config))


def _select_pre_3_14(split: _Split) -> tuple[int, ...]:
    """kata-pre-3.14: 3.6.0 to 3.13.x, PR #8861 (``4c93bb2d61``).

    Shape: the container's list is the hot list with control nodes moved to the front; the
    cold VFIO list is only handed to ``annotateContainerWithVFIOMetadata``. Read from the
    code at 3.6.0 and 3.13.0 (research §1.4's table starts at 3.14); #10767's commit message
    confirms it ("the device info passed to the agent ... is dropped" for cold plug).
    """
    return _control_first(split.hot, split.devices)


def _select_3_14_3_16(split: _Split) -> tuple[int, ...]:
    """kata-3.14-3.16: PR #10767 (``419b5ed715``), until PR #11289.

    Shape, the either/or bug: when the cold port is set and ``vfio_mode`` is ``vfio``, the
    list is the cold VFIO list (control nodes first) and the hot list is discarded;
    otherwise it is the hot list (control nodes first) and the cold VFIO list is discarded.
    """
    if split.cold_plug and split.vfio_mode is VfioMode.VFIO:
        return _control_first(split.cold, split.devices)
    return _control_first(split.hot, split.devices)


def _select_3_17_3_31(split: _Split) -> tuple[int, ...]:
    """kata-3.17-3.31: PR #11289 (``2fd2cd4a9b``, fixes #11288), until PR #13103.

    Shape: when the cold port is set and ``vfio_mode`` is ``vfio``, the list is the cold
    VFIO list with control nodes first, followed by the hot list *as is* (so a control node,
    which is in the hot list, lands after the cold VFIO groups). Otherwise the hot list with
    control nodes first; the cold VFIO list is discarded (guest-kernel).
    """
    if split.cold_plug and split.vfio_mode is VfioMode.VFIO:
        return _control_first(split.cold, split.devices) + split.hot
    return _control_first(split.hot, split.devices)


def _select_3_32_4_0(split: _Split) -> tuple[int, ...]:
    """kata-3.32-4.0: PR #13103 (``e6777f0866``), until PR #13681.

    Shape: the ``vfio_mode`` condition is gone: when the cold port is set, cold VFIO list
    (control nodes first) followed by the hot list as is, for every container including the
    pause container; otherwise the hot list with control nodes first.
    """
    if split.cold_plug:
        return _control_first(split.cold, split.devices) + split.hot
    return _control_first(split.hot, split.devices)


def _select_head(split: _Split) -> tuple[int, ...]:
    """kata-head: 4.1.0 and later, PR #13681 (``5a338e9ea1``).

    Shape: when the cold port is set and the container is not the CRI sandbox (its
    container-type annotation is not ``pod_sandbox``), cold VFIO list (control nodes first)
    followed by the hot list as is; otherwise the hot list with control nodes first.
    """
    if split.cold_plug and not split.cri_sandbox:
        return _control_first(split.cold, split.devices) + split.hot
    return _control_first(split.hot, split.devices)


_SELECTORS: Mapping[KataEra, Callable[[_Split], tuple[int, ...]]] = {
    KataEra.PRE_3_14: _select_pre_3_14,
    KataEra.KATA_3_14_3_16: _select_3_14_3_16,
    KataEra.KATA_3_17_3_31: _select_3_17_3_31,
    KataEra.KATA_3_32_4_0: _select_3_32_4_0,
    KataEra.HEAD: _select_head,
}


def select_devices(
    era: KataEra, request: ContainerRequest, config: RuntimeConfig,
) -> KataSelection:
    """Model ``createDevices`` + ``filterDevices`` + the attach port check for one era.

    Pure. ``config`` is the effective configuration (annotation overrides already applied);
    ``request.is_sandbox`` stands for Kata's ``IsCriSandbox`` (container type
    ``pod_sandbox``).
    """
    split = _split(request, config)
    if split.block.vm_refused:
        return KataSelection(era, tuple(
            KataDeviceOutcome(d, KataList.COLD_VFIO if i in split.cold else KataList.HOT,
                              KataOutcome.SANDBOX_FAILS, None, _vm_refused(config))
            for i, d in enumerate(split.devices)), ())
    selected = _SELECTORS[era](split)
    listed = tuple(i for i in selected if not is_filtered_major(split.devices[i].major))
    positions = {index: position for position, index in enumerate(listed)}
    chosen = set(selected)
    entries = tuple(
        _entry(era, split, index, index in chosen, positions.get(index))
        for index in range(len(split.devices))
    )
    return KataSelection(era, entries, tuple(split.devices[i] for i in listed))


def compare_eras(
    request: ContainerRequest, config: RuntimeConfig,
    eras: Sequence[KataEra] = tuple(KataEra),
) -> tuple[KataSelection, ...]:
    """:func:`select_devices` for each era, in the order given (oldest first by default)."""
    return tuple(select_devices(era, request, config) for era in eras)


# --------------------------------------------------------------------------------------------
# Outcomes and reasons
# --------------------------------------------------------------------------------------------


def _entry(
    era: KataEra, split: _Split, index: int, selected: bool, position: int | None,
) -> KataDeviceOutcome:
    device = split.devices[index]
    kata_list = KataList.COLD_VFIO if index in split.cold else KataList.HOT
    is_cold = kata_list is KataList.COLD_VFIO
    if not selected:
        if is_cold and split.cri_sandbox:
            outcome, reason = KataOutcome.NOT_FOR_PAUSE, _not_for_pause(era)
        else:
            outcome, reason = KataOutcome.DROPPED_SILENTLY, _dropped(era, split, is_cold)
    elif is_filtered_major(device.major):
        outcome, reason = KataOutcome.FILTERED, _filtered(device.major)
    elif is_cold and split.cri_sandbox:
        outcome, reason = KataOutcome.LEAKED_TO_PAUSE, _leaked(era)
    elif kata_is_vfio_device(device.path) and not (split.hot_plug or split.cold_plug):
        outcome = KataOutcome.FAILS_AT_ATTACH
        reason = ("VFIO device with neither cold_plug_vfio nor hot_plug_vfio set: listed "
                  "without a port, VFIODevice.Attach fails (\"cold_plug_vfio= or "
                  "hot_plug_vfio= port is not set\") and container creation fails")
    elif kata_is_vhost_user_blk(device) and (vhost := _vhost_user_failure(split)):
        outcome, reason = KataOutcome.FAILS_AT_ATTACH, vhost
    elif (device.type is NodeType.BLOCK and not kata_is_vhost_user_blk(device)
          and split.block.native_without_direct):
        outcome = KataOutcome.FAILS_AT_ATTACH
        reason = ("block_device_aio = \"native\" without block_device_cache_set and "
                  "block_device_cache_direct: the volume's blockdev-add carries aio=native "
                  "and no cache.direct, QEMU refuses it, so hot-plug fails and container "
                  "creation fails (every era since 3.0.0-alpha1, 00860a7e43)")
    else:
        outcome, reason = KataOutcome.KEPT, _kept(device, is_cold, split)
    return KataDeviceOutcome(device, kata_list, outcome, position, reason)


def _kept(device: ContainerDevice, is_cold: bool, split: _Split) -> str:
    if is_cold:
        return ("cold VFIO entry: NewDevice finds the device cold-plugged at sandbox "
                "creation, attach is a no-op (refcount), the agent gets its entry")
    if kata_is_vfio_device(device.path):
        return "hot_plug_vfio set: hot-plugged at container creation"
    if kata_is_vfio_control_device(device.path):
        return "VFIO control node: generic device, nothing attached, passed in the spec"
    if kata_is_vhost_user_blk(device):
        return ("vhost-user-blk (major 241): its backend socket found in the vhost-user "
                "store, hot-plugged as vhost-user-blk-pci after a chardev-add at container "
                "creation, reported to the agent")
    if device.type is NodeType.BLOCK:
        return "block device: hot-plugged at container creation, reported to the agent"
    return "generic device node: nothing attached, passed in the spec"


def _dropped(era: KataEra, split: _Split, is_cold: bool) -> str:
    if not is_cold:
        return (f"{era.value}: cold_plug_vfio with vfio_mode = vfio keeps only the cold VFIO "
                "list (419b5ed715): this hot-list device is never attached nor reported; its "
                "spec node keeps the host major:minor, open() gives ENXIO in the guest "
                "(#11288)")
    why = ("before #10767 only the hot list is kept" if era is KataEra.PRE_3_14
           else "vfio_mode = guest-kernel selects the hot list only")
    if split.vfio_mode is VfioMode.VFIO:
        effect = ("no vfio-pci entry, so no /dev/vfio/<guest group> is set up in the "
                  "container (the spec node keeps the host major:minor)")
    else:
        effect = ("no vfio-pci-gk entry, so no host->guest PCI map: PCIDEVICE_* translation "
                  "fails with \"No PCI mapping found\" (fixed by e6777f0866); the CDI "
                  "annotations from annotateContainerWithVFIOMetadata still apply")
    return (f"{era.value}: the cold VFIO list is discarded ({why}); the device is in the VM "
            f"from sandbox creation but the agent gets {effect}")


def _vhost_user_failure(split: _Split) -> str:
    """Why attaching a vhost-user-blk node fails under this configuration, or ''."""
    if not split.block.qemu:
        return ("vhost-user-blk (major 241) on Cloud Hypervisor: the device manager makes a "
                "vhost-user-blk device, whose hot-plug the clh driver does not support "
                "(\"unsupported device type\"): container creation fails")
    if not split.block.vhost_user_store:
        return ("vhost-user-blk (major 241) with enable_vhost_user_store = false: the device "
                "manager still makes a vhost-user-blk device (IsVhostUserBlk looks at the "
                "major only), but without the store its socket is the container path, so "
                "QEMU's chardev-add cannot connect: attach fails, container creation fails")
    return ""


def _vm_refused(config: RuntimeConfig) -> str:
    return (f"enable_vhost_user_store without enable_hugepages in [{config.hypervisor.section}]"
            ": the Go runtime refuses to create the QEMU VM (\"enabled without HugePages\"), "
            "so the sandbox never starts and no container gets any device")


def _filtered(major: int) -> str:
    kind = "floppy" if major == FLOPPY_MAJOR else f"CD-ROM, {CDROM_MAJORS[major]}"
    return (f"major {major} ({kind}): filterDevices removes it after selection with only an "
            "info log; never attached nor reported to the agent")


def _not_for_pause(era: KataEra) -> str:
    why = ("#13681 keeps the CRI sandbox container free of cold VFIO entries"
           if era is KataEra.HEAD else "this era does not select the cold VFIO list here")
    return ("pause (CRI sandbox) container: the device was cold-plugged at sandbox creation "
            f"and the pause container owns no device; {why}")


def _leaked(era: KataEra) -> str:
    note = ("" if era is KataEra.KATA_3_32_4_0 else
            "; in vfio mode since 419b5ed715 (that the guest rejected it then too is "
            "inference)")
    return ("pause (CRI sandbox) container lists a cold VFIO entry: the guest rejects a "
            "pause CreateContainer carrying devices and sandbox creation fails (5a338e9ea1), "
            "unless the GuestPciPath stays unresolved behind pxb-pcie NUMA (#12948) and "
            f"appendVfioDevice skips it{note}")
