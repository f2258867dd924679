"""Kata Containers ``configuration.toml``: the keys that decide where devices go.

Pure: TOML text (:func:`parse_kata_text`) or a parsed mapping (:func:`parse_kata_config`)
in, a :class:`RuntimeConfig` out; files are read by :mod:`podplug.inputs.load`.

Keys read (``src/runtime/pkg/katautils/config.go``; research ``kata-devices.md`` §2):

* ``[runtime] vfio_mode``: ``vfio`` | ``guest-kernel`` (default ``guest-kernel``).
* ``[hypervisor.<name>]``: ``cold_plug_vfio`` and ``hot_plug_vfio`` (``no-port`` |
  ``root-port`` | ``switch-port`` | ``bridge-port``, default ``no-port``; empty string is the
  default), ``pcie_root_port`` and ``pcie_switch_port`` (counts, at most 16 each:
  ``maxPCIeRootPort`` / ``maxPCIeSwitchPort``), ``machine_type``, ``block_device_driver``,
  ``default_bridges`` (at most 5, Kata's ``maxPCIBridges``), ``enable_annotations`` and
  ``path``, the hypervisor binary (Kata's default for QEMU is
  ``/usr/bin/qemu-system-x86_64``, its Makefile's ``QEMUPATH`` under ``PREFIX=/usr``; it
  is checked when podplug runs a binary, not when it plans: the TDX files ship a
  placeholder there).

Block keys (``[hypervisor.qemu]``, :class:`BlockKeys`; how they shape a volume is decided in
:mod:`podplug.plan.blockdev`): ``block_device_aio`` (``io_uring`` | ``native`` |
``threads``, default ``io_uring`` in both runtimes), ``block_device_cache_set``,
``block_device_cache_direct``, ``block_device_cache_noflush``, ``disable_block_device_use``
(the Go runtime reads it for block-backed rootfs and mounts only; runtime-rs's kata-types
``adjust_config`` also clears ``block_device_driver`` and ``enable_vhost_user_store``),
``enable_vhost_user_store``, ``vhost_user_store_path`` (Go default
``/var/run/kata-containers/vhost-user``, the Makefile's ``PKGRUNDIR``; runtime-rs
``/var/run/vhost-user``), ``vhost_user_reconnect_timeout_sec`` and ``enable_hugepages``.

Order of checks, so that a file podplug does not plan for is named as such rather than for
some key on the way: the hypervisor table (``qemu``; ``clh``, which runtime-rs kata-types
3.13-3.20 spelled ``cloud-hypervisor``; any other Kata hypervisor is refused as
unsupported, exit 4), then QEMU's ``machine_type`` (``q35``; ``virt``, ``s390-ccw-virtio``
and the rest are refused as unsupported), then the keys. ``block_device_driver`` takes
either runtime's spelling: the Go runtime's ``virtio-blk`` and runtime-rs's
``virtio-blk-pci`` are the same PCI device; ``virtio-scsi`` is both's; the other drivers
Kata knows (``virtio-mmio``, ``virtio-blk-mmio``, ``virtio-blk-ccw``, ``nvdimm``,
``virtio-pmem``) are named and refused as unsupported; anything else is a typo (exit 2).

The two runtimes read some keys differently (kata-types vs ``katautils/config.go``, the same
from 3.13.0 to main unless said): with no ``block_device_driver`` the Go runtime plans
``virtio-scsi``, runtime-rs ``virtio-blk-pci``; runtime-rs has no ``hot_plug_vfio`` key at
all (its shipped files of 3.24-3.28 carry one, which it ignores: so does podplug, saying
so), and takes only ``no-port`` or ``root-port`` for ``cold_plug_vfio`` (read from 3.31.0).

Validation follows Kata's ``checkPCIeConfig`` (§2.4), with its defects fixed: when both
``cold_plug_vfio`` and ``hot_plug_vfio`` are set the message names each with its own value
(Kata swapped the labels); port strings are checked for every machine type (Kata skipped
them off q35/virt); Cloud Hypervisor accepts only ``no-port``/``root-port``; a count above
its limit is an error naming the key and the limit (Kata clamped it silently).

Annotation overrides (``src/runtime/pkg/oci/utils.go``) use the prefix
``io.katacontainers.config.hypervisor.``. An override is honoured only when its suffix
matches one of the hypervisor's ``enable_annotations`` regular expressions (Kata's
``checkAnnotationNameIsValid``), otherwise the request is refused. Setting
``hot_plug_vfio`` forces ``cold_plug_vfio = no-port`` and the reverse; when both are given,
cold wins because Kata processes it last. Port counts apply only when greater than zero.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from podplug.errors import ConfigError, UnsupportedPlatform
from podplug.model.enums import (
    BlockAio,
    BlockDriver,
    Hypervisor,
    KataRuntime,
    PortKind,
    VfioMode,
)
from podplug.model.text import parse_uint

MAX_PCIE_ROOT_PORTS = 16  # Kata maxPCIeRootPort ("Limitation from QEMU": IO space)
MAX_PCIE_SWITCH_PORTS = 16  # Kata maxPCIeSwitchPort
MAX_BRIDGES = 5  # Kata maxPCIBridges (virtcontainers/hypervisor.go)

ANNOTATION_PREFIX = "io.katacontainers.config.hypervisor."
_CLH_PORTS = (PortKind.NO_PORT, PortKind.ROOT_PORT)
PLANNED_HYPERVISORS = (Hypervisor.QEMU, Hypervisor.CLOUD_HYPERVISOR)
PLANNED_MACHINES = ("q35",)

#: table names as the two runtimes spell them (runtime-rs kata-types 3.13-3.20:
#: ``cloud-hypervisor``; the Go runtime and later kata-types: ``clh``)
TABLE_NAMES: dict[str, Hypervisor] = {
    **{h.value: h for h in Hypervisor}, "cloud-hypervisor": Hypervisor.CLOUD_HYPERVISOR}

#: block_device_driver spellings of both runtimes -> what podplug plans
BLOCK_DRIVERS: dict[str, BlockDriver] = {
    "virtio-blk": BlockDriver.VIRTIO_BLK,  # Go runtime
    "virtio-blk-pci": BlockDriver.VIRTIO_BLK,  # runtime-rs (kata-types VIRTIO_BLK_PCI)
    "virtio-scsi": BlockDriver.VIRTIO_SCSI,
}
#: drivers Kata knows that put volumes elsewhere than on PCI (MMIO, CCW, NVDIMM, pmem)
UNPLANNED_BLOCK_DRIVERS = ("virtio-mmio", "virtio-blk-mmio", "virtio-blk-ccw", "nvdimm",
                           "virtio-pmem")
#: the keys of a [hypervisor.*] table podplug reads (others are left alone)
BLOCK_KEYS = ("block_device_aio", "block_device_cache_set", "block_device_cache_direct",
              "block_device_cache_noflush", "disable_block_device_use",
              "enable_vhost_user_store", "vhost_user_store_path",
              "vhost_user_reconnect_timeout_sec", "enable_hugepages")
READ_KEYS = ("path", "machine_type", "cold_plug_vfio", "hot_plug_vfio", "pcie_root_port",
             "pcie_switch_port", "block_device_driver", "default_bridges",
             "enable_annotations", *BLOCK_KEYS)
GO_VHOST_USER_STORE = "/var/run/kata-containers/vhost-user"  # Makefile DEFVHOSTUSERSTOREPATH
RUST_VHOST_USER_STORE = "/var/run/vhost-user"  # kata-types DEFAULT_VHOST_USER_STORE_PATH


@dataclass(frozen=True)
class BlockKeys:
    """The keys of a ``[hypervisor.*]`` table that shape every block volume (module doc)."""

    aio: BlockAio = BlockAio.IO_URING
    cache_set: bool = False
    cache_direct: bool = False
    cache_noflush: bool = False
    disable_block_device_use: bool = False
    enable_vhost_user_store: bool = False
    vhost_user_store_path: str = GO_VHOST_USER_STORE
    vhost_user_reconnect_timeout_sec: int = 0
    enable_hugepages: bool = False


@dataclass(frozen=True)
class HypervisorConfig:
    """The device-relevant part of one ``[hypervisor.<name>]`` table."""

    kind: Hypervisor
    machine_type: str
    cold_plug_vfio: PortKind = PortKind.NO_PORT
    hot_plug_vfio: PortKind = PortKind.NO_PORT
    pcie_root_port: int = 0
    pcie_switch_port: int = 0
    block_device_driver: BlockDriver = BlockDriver.VIRTIO_SCSI
    default_bridges: int = 1
    enable_annotations: tuple[str, ...] = ()
    block: BlockKeys = BlockKeys()
    path: str = ""  # the hypervisor binary; "" when the file does not say
    table: str = ""  # the table's name in the file ("cloud-hypervisor"); "" = kind's name
    given: frozenset[str] = frozenset()  # the keys of READ_KEYS the file itself sets

    @property
    def section(self) -> str:
        return f"hypervisor.{self.table or self.kind.value}"

    @property
    def vfio_port(self) -> PortKind:
        """The one port kind VFIO devices use (cold or hot; validation allows one)."""
        if self.cold_plug_vfio is not PortKind.NO_PORT:
            return self.cold_plug_vfio
        return self.hot_plug_vfio


@dataclass(frozen=True)
class RuntimeConfig:
    """What podplug needs from a Kata configuration."""

    vfio_mode: VfioMode
    hypervisor: HypervisorConfig
    vfio_mode_given: bool = True  # the file sets [runtime] vfio_mode (else Kata's default)
    runtime: KataRuntime = KataRuntime.GO
    notes: tuple[str, ...] = ()  # keys read differently than they look, said once


_E = TypeVar("_E", PortKind, VfioMode, BlockDriver, BlockAio)


def _enum_value(enum: type[_E], key: str, raw: object, default: _E, problem: str) -> _E:
    if raw is None or raw == "":
        return default
    allowed = [member.value for member in enum]
    if not isinstance(raw, str) or raw not in allowed:
        raise ConfigError(key, problem, value=raw, allowed=allowed)
    return enum(raw)


def _count(key: str, raw: object, limit: int) -> int:
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ConfigError(key, "must be a non-negative integer", value=raw)
    if raw > limit:
        raise ConfigError(key, f"exceeds the limit of {limit}", value=raw)
    return raw


def _flag(section: str, table: Mapping[str, object], key: str) -> bool:
    raw = table.get(key, False)
    if not isinstance(raw, bool):
        raise ConfigError(f"{section}.{key}", "must be true or false", value=raw)
    return raw


def _block_keys(section: str, table: Mapping[str, object], runtime: KataRuntime) -> BlockKeys:
    """:class:`BlockKeys` of one table; runtime-rs's ``disable_block_device_use`` also turns
    the vhost-user store off (kata-types ``BlockDeviceInfo::adjust_config``)."""
    store = table.get("vhost_user_store_path", "")
    if not isinstance(store, str):
        raise ConfigError(f"{section}.vhost_user_store_path", "must be a string", value=store)
    if store and not store.startswith("/"):
        raise ConfigError(f"{section}.vhost_user_store_path", "must be an absolute path",
                          value=store)
    default_store = RUST_VHOST_USER_STORE if runtime is KataRuntime.RUST \
        else GO_VHOST_USER_STORE
    reconnect = table.get("vhost_user_reconnect_timeout_sec", 0)
    if isinstance(reconnect, bool) or not isinstance(reconnect, int) or \
            not 0 <= reconnect < 1 << 32:
        raise ConfigError(f"{section}.vhost_user_reconnect_timeout_sec",
                          "must be a whole number of seconds (0 disables reconnecting)",
                          value=reconnect)
    disabled = _flag(section, table, "disable_block_device_use")
    store_on = _flag(section, table, "enable_vhost_user_store")
    return BlockKeys(
        aio=_enum_value(BlockAio, f"{section}.block_device_aio", table.get("block_device_aio"),
                        BlockAio.IO_URING, "unknown block I/O mechanism"),
        cache_set=_flag(section, table, "block_device_cache_set"),
        cache_direct=_flag(section, table, "block_device_cache_direct"),
        cache_noflush=_flag(section, table, "block_device_cache_noflush"),
        disable_block_device_use=disabled,
        enable_vhost_user_store=store_on and not (disabled and runtime is KataRuntime.RUST),
        vhost_user_store_path=store or default_store,
        vhost_user_reconnect_timeout_sec=reconnect,
        enable_hugepages=_flag(section, table, "enable_hugepages"),
    )


def _hypervisor_table(doc: Mapping[str, object]) -> tuple[str, Mapping[str, object]]:
    tables = doc.get("hypervisor")
    allowed = sorted(TABLE_NAMES)
    if not isinstance(tables, Mapping) or not tables:
        raise ConfigError("hypervisor", "no [hypervisor.<name>] table found", allowed=allowed)
    if len(tables) != 1:
        raise ConfigError("hypervisor", "exactly one [hypervisor.<name>] table is allowed",
                          value=", ".join(sorted(tables)))
    ((name, table),) = tables.items()
    if name not in TABLE_NAMES:
        raise ConfigError(f"hypervisor.{name}", "unknown hypervisor", allowed=allowed)
    if not isinstance(table, Mapping):
        raise ConfigError(f"hypervisor.{name}", "must be a table")
    return name, table


def _runtime_of(runtime: Mapping[str, object]) -> KataRuntime:
    rust = "hypervisor_name" in runtime or runtime.get("name") == "virt_container"
    return KataRuntime.RUST if rust else KataRuntime.GO


def _block_driver(key: str, raw: object, runtime: KataRuntime) -> BlockDriver:
    if raw is None or raw == "":
        # Go: defaultBlockDeviceDriver; runtime-rs: DEFAULT_BLOCK_DEVICE_TYPE
        return BlockDriver.VIRTIO_BLK if runtime is KataRuntime.RUST else BlockDriver.VIRTIO_SCSI
    if isinstance(raw, str) and raw in BLOCK_DRIVERS:
        return BLOCK_DRIVERS[raw]
    if isinstance(raw, str) and raw in UNPLANNED_BLOCK_DRIVERS:
        raise UnsupportedPlatform(key, raw, list(BLOCK_DRIVERS))
    raise ConfigError(key, "unsupported block device driver", value=raw,
                      allowed=[*BLOCK_DRIVERS, *UNPLANNED_BLOCK_DRIVERS])


def parse_kata_config(doc: Mapping[str, object]) -> RuntimeConfig:
    """Extract and validate the device keys of a parsed Kata ``configuration.toml``.

    :raises UnsupportedPlatform: for a hypervisor, machine type or block driver podplug does
        not plan, checked in that order before any other key.
    :raises ConfigError: naming the key, its value and what is allowed.
    """
    name, table = _hypervisor_table(doc)
    kind = TABLE_NAMES[name]
    section = f"hypervisor.{name}"
    if kind not in PLANNED_HYPERVISORS:
        raise UnsupportedPlatform("hypervisor", name, [h.value for h in PLANNED_HYPERVISORS])
    machine = table.get("machine_type", "q35" if kind is Hypervisor.QEMU else "")
    if not isinstance(machine, str):
        raise ConfigError(f"{section}.machine_type", "must be a string", value=machine)
    if kind is Hypervisor.QEMU and machine not in PLANNED_MACHINES:
        raise UnsupportedPlatform(f"[{section}] machine_type", machine, PLANNED_MACHINES)
    runtime = doc.get("runtime", {})
    if not isinstance(runtime, Mapping):
        raise ConfigError("runtime", "must be a table")
    flavour = _runtime_of(runtime)
    notes: list[str] = []
    hot_raw = table.get("hot_plug_vfio")
    if flavour is KataRuntime.RUST and hot_raw not in (None, "", "no-port"):
        notes.append(f"[{section}] hot_plug_vfio = {hot_raw!r} is not a runtime-rs key: "
                     "ignored, as runtime-rs ignores it")
    if flavour is KataRuntime.RUST:
        hot_raw = None
        cold_raw = table.get("cold_plug_vfio")
        if cold_raw not in (None, "", "no-port", "root-port"):
            raise ConfigError(f"{section}.cold_plug_vfio", "runtime-rs plugs VFIO only on "
                              "root ports", value=cold_raw, allowed=["no-port", "root-port"])
    vfio_mode = _enum_value(VfioMode, "runtime.vfio_mode", runtime.get("vfio_mode"),
                            VfioMode.GUEST_KERNEL, "unknown VFIO mode")
    port_problem = "unknown PCIe port"
    annotations = table.get("enable_annotations", [])
    if not isinstance(annotations, list) or not all(isinstance(a, str) for a in annotations):
        raise ConfigError(f"{section}.enable_annotations", "must be a list of strings")
    bridges = table.get("default_bridges", 1)
    binary = table.get("path", "")
    # checked as a binary only when one is run (podplug.vm.probe): the TDX files ship
    # "PLACEHOLDER_FOR_DISTRO_QEMU_WITH_TDX_SUPPORT" there, and still plan
    if not isinstance(binary, str):
        raise ConfigError(f"{section}.path", "must be a string", value=binary)
    hv = HypervisorConfig(
        kind=kind,
        machine_type=machine,
        cold_plug_vfio=_enum_value(PortKind, f"{section}.cold_plug_vfio",
                                   table.get("cold_plug_vfio"), PortKind.NO_PORT, port_problem),
        hot_plug_vfio=_enum_value(PortKind, f"{section}.hot_plug_vfio",
                                  hot_raw, PortKind.NO_PORT, port_problem),
        pcie_root_port=_count(f"{section}.pcie_root_port", table.get("pcie_root_port"),
                              MAX_PCIE_ROOT_PORTS),
        pcie_switch_port=_count(f"{section}.pcie_switch_port", table.get("pcie_switch_port"),
                                MAX_PCIE_SWITCH_PORTS),
        block_device_driver=_block_driver(f"[{section}] block_device_driver",
                                          table.get("block_device_driver"), flavour),
        default_bridges=_count(f"{section}.default_bridges", bridges, MAX_BRIDGES),
        enable_annotations=tuple(annotations),
        block=_block_keys(section, table, flavour),
        path=binary,
        table=name if name != kind.value else "",
        given=frozenset(k for k in READ_KEYS if k in table
                        and not (k == "hot_plug_vfio" and flavour is KataRuntime.RUST)),
    )
    validate_ports(hv)
    if kind is Hypervisor.CLOUD_HYPERVISOR and hv.block_device_driver is BlockDriver.VIRTIO_SCSI:
        raise ConfigError(f"{section}.block_device_driver", "Cloud Hypervisor has no virtio-scsi",
                          value=hv.block_device_driver.value, allowed=["virtio-blk"])
    return RuntimeConfig(vfio_mode=vfio_mode, hypervisor=hv,
                         vfio_mode_given="vfio_mode" in runtime, runtime=flavour,
                         notes=tuple(notes))


def validate_ports(hv: HypervisorConfig, *, prefix: str = "") -> None:
    """Kata's ``checkPCIeConfig``, done right (module docstring).

    :param prefix: how to name the keys in errors (the section, or the annotation prefix).
    :raises ConfigError: when both keys are set, or the hypervisor does not take the port.
    """
    prefix = prefix or f"{hv.section}."
    cold_key, hot_key = prefix + "cold_plug_vfio", prefix + "hot_plug_vfio"
    cold, hot = hv.cold_plug_vfio, hv.hot_plug_vfio
    if cold is not PortKind.NO_PORT and hot is not PortKind.NO_PORT:
        raise ConfigError(
            f"{cold_key} and {hot_key}",
            f'both set (cold_plug_vfio = "{cold.value}", hot_plug_vfio = "{hot.value}"); '
            'only one of them may be other than "no-port"',
        )
    if hv.kind is Hypervisor.CLOUD_HYPERVISOR:
        for key, port in ((cold_key, cold), (hot_key, hot)):
            if port not in _CLH_PORTS:
                raise ConfigError(key, "Cloud Hypervisor has a flat root bus",
                                  value=port.value, allowed=[p.value for p in _CLH_PORTS])


def _annotation_enabled(patterns: tuple[str, ...], suffix: str, section: str) -> bool:
    for pattern in patterns:
        try:
            if re.fullmatch(pattern, suffix):
                return True
        except re.error as exc:
            raise ConfigError(f"{section}.enable_annotations", f"not a regular expression "
                              f"({exc})", value=pattern) from exc
    return False


def apply_annotations(config: RuntimeConfig, annotations: Mapping[str, str]) -> RuntimeConfig:
    """Apply ``io.katacontainers.config.hypervisor.*`` overrides with Kata's precedence.

    :raises ConfigError: naming the annotation when it is not enabled or its value is invalid.
    """
    hv = config.hypervisor
    known = ("hot_plug_vfio", "cold_plug_vfio", "pcie_root_port", "pcie_switch_port")
    given = {s: annotations[ANNOTATION_PREFIX + s] for s in known
             if ANNOTATION_PREFIX + s in annotations}
    for suffix in given:
        if not _annotation_enabled(hv.enable_annotations, suffix, hv.section):
            raise ConfigError(
                ANNOTATION_PREFIX + suffix,
                f'annotation is not enabled: add "{suffix}" to [{hv.section}] enable_annotations',
            )
    # Kata order: hot_plug_vfio, then cold_plug_vfio (so cold wins), then the counts.
    if "hot_plug_vfio" in given:
        port = _enum_value(PortKind, ANNOTATION_PREFIX + "hot_plug_vfio", given["hot_plug_vfio"],
                           PortKind.NO_PORT, "invalid PCIe port in annotation")
        hv = replace(hv, hot_plug_vfio=port, cold_plug_vfio=PortKind.NO_PORT)
    if "cold_plug_vfio" in given:
        port = _enum_value(PortKind, ANNOTATION_PREFIX + "cold_plug_vfio",
                           given["cold_plug_vfio"], PortKind.NO_PORT,
                           "invalid PCIe port in annotation")
        hv = replace(hv, cold_plug_vfio=port, hot_plug_vfio=PortKind.NO_PORT)
    counts = {suffix: _annotation_count(suffix, given[suffix], limit)
              for suffix, limit in (("pcie_root_port", MAX_PCIE_ROOT_PORTS),
                                    ("pcie_switch_port", MAX_PCIE_SWITCH_PORTS))
              if suffix in given}
    if counts.get("pcie_root_port", 0) > 0:
        hv = replace(hv, pcie_root_port=counts["pcie_root_port"])
    if counts.get("pcie_switch_port", 0) > 0:
        hv = replace(hv, pcie_switch_port=counts["pcie_switch_port"])
    validate_ports(hv, prefix=ANNOTATION_PREFIX if given else "")
    return replace(config, hypervisor=hv)


def _annotation_count(suffix: str, raw: str, limit: int) -> int:
    """Kata reads these with ``strconv.ParseUint(value, 10, 32)``: ASCII digits only."""
    key = ANNOTATION_PREFIX + suffix
    try:
        count = parse_uint(raw, 32)
    except ValueError as exc:
        raise ConfigError(key, f"must be a count: {exc}") from exc
    return _count(key, count, limit) if count > 0 else 0


def parse_kata_text(text: str) -> RuntimeConfig:
    """Parse the text of a ``configuration.toml``: any text gives a config or a podplug
    error (TOML syntax, a number too long for Python to convert, nesting too deep)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(toml)", f"not valid TOML: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise ConfigError("(toml)", f"not TOML podplug can read: {exc}") from exc
    return parse_kata_config(doc)
