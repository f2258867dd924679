"""``podplug doctor``: check a real deployment and say what to fix (pure).

Takes what the shell read (the configuration or the error it raised, optionally the
container spec, the host snapshot and a Kata version) and returns findings, each with a
severity, one line of explanation and the fix. Checks:

* the configuration validates (Kata ``checkPCIeConfig`` done right);
* with a Kata version: whether that release drops devices for this configuration (and,
  with a spec, which ones), naming the fix: the release that fixed it, or the key to change
  (models in :mod:`podplug.matrix.kata_models`);
* with a spec: every device is planned (a rejection is an error with its reason), and the
  topology fits its budgets (ports, root-bus slots, bus numbers);
* the QEMU binary (the configuration's ``path`` or ``--qemu``): it exists, and has every
  feature the plan renders (probed, never inferred from its version);
* the block keys (:mod:`podplug.plan.blockdev`): Kata's hot-plug of every volume fails when
  ``block_device_aio = "native"`` lacks cache.direct, or when the binary cannot open a
  volume with io_uring here; Kata's Go runtime refuses to start a VM with
  ``enable_vhost_user_store`` and no ``enable_hugepages``; cache keys that do not reach QEMU;
* with the host: IOMMU groups exist, every function of each requested group is bound to
  ``vfio-pci`` (a group is viable only when no function is held by a host driver), and
  every hot-pluggable port, by its kind, has windows for what can land there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from podplug.errors import ConfigError, PlanError, TopologyExhausted, UnsupportedPlatform
from podplug.inputs.kata import RuntimeConfig
from podplug.matrix.kata_models import (
    KataEra,
    KataOutcome,
    kata_is_vfio_device,
    kata_is_vhost_user_blk,
    lost_devices,
    select_devices,
)
from podplug.model.enums import BlockAio, Bucket, HotplugMode, KataRuntime, NodeType, PortKind
from podplug.model.host import HostInventory, PciFunction
from podplug.model.qemu import QemuCapabilities, QemuFeature
from podplug.model.request import ContainerDevice, ContainerRequest
from podplug.plan.blockdev import blockdev_shape
from podplug.plan.model import Plan
from podplug.plan.needs import qemu_needs
from podplug.plan.plan import plan as make_plan
from podplug.plan.route import is_vfio_path, resolve_vfio
from podplug.plan.topology import Controller, Role, Use
from podplug.plan.windows import (
    DEFAULT_SPARE_WINDOW,
    Window,
    assignable_units,
    shortfall,
    size_text,
    unit_window,
)

VIABLE_DRIVERS = (None, "vfio-pci", "pci-stub")


class Severity(IntEnum):
    OK = 0
    INFO = 1
    WARNING = 2
    ERROR = 3


@dataclass(frozen=True)
class Finding:
    severity: Severity
    check: str
    message: str
    fix: str = ""


def _kata_fix(era: KataEra, config: RuntimeConfig, request: ContainerRequest) -> str:
    """The first later era whose model keeps every device of ``request``, and the swap of
    cold for hot plug (which no era's either/or selection touches)."""
    hv = config.hypervisor
    swap = (f'set hot_plug_vfio = "{hv.cold_plug_vfio.value}" and cold_plug_vfio = '
            f'"no-port" in [{hv.section}]')
    eras = list(KataEra)
    for later in eras[eras.index(era) + 1:]:
        if not lost_devices(select_devices(later, request, config)):
            return (f"upgrade Kata to {later.first_release}.0 or later (PR #{later.pr}), "
                    f"or {swap}")
    return swap


#: With no spec, the era's model is asked about a typical pod: a GPU group, its control
#: node and a raw block volume (the #11288 pod). The model decides; nothing here re-derives it.
_PROBE = ContainerRequest((
    ContainerDevice("/dev/vfio/vfio", NodeType.CHAR, 10, 196),
    ContainerDevice("/dev/vfio/1", NodeType.CHAR, 236, 1),
    ContainerDevice("/dev/xda", NodeType.BLOCK, 7, 0),
))


def _era_risk(era: KataEra, config: RuntimeConfig) -> str:
    """What the era's model drops from the probe pod under this configuration, or ''."""
    selection = select_devices(era, _PROBE, config)
    lost = [e for e in selection.entries
            if e.outcome in (KataOutcome.DROPPED_SILENTLY, KataOutcome.FILTERED)]
    if not lost:
        return ""
    return (", ".join(e.device.path for e in lost) + " of a pod with a VFIO group, "
            f"/dev/vfio/vfio and a block volume ({lost[0].reason})")


def _attach_fix(device: ContainerDevice, config: RuntimeConfig) -> str:
    """The key that makes Kata attach ``device`` (a VFIO node, a vhost-user-blk node, or a
    volume whose aio QEMU refuses)."""
    section = config.hypervisor.section
    if kata_is_vfio_device(device.path):
        return f"set cold_plug_vfio or hot_plug_vfio in [{section}]"
    if kata_is_vhost_user_blk(device):
        return (f"set enable_vhost_user_store = true in [{section}], with the node under "
                "vhost_user_store_path/block/devices and its socket under block/sockets")
    return (f"set block_device_cache_set = true and block_device_cache_direct = true in "
            f'[{section}], or block_device_aio = "threads"')


def kata_findings(era: KataEra, version: str, config: RuntimeConfig,
                  request: ContainerRequest | None) -> list[Finding]:
    risk = _era_risk(era, config)
    if request is None:
        if risk:
            return [Finding(Severity.WARNING, "kata-version",
                            f"Kata {version} ({era.value}) drops {risk} with this "
                            "configuration", _kata_fix(era, config, _PROBE))]
        return [Finding(Severity.OK, "kata-version",
                        f"Kata {version} ({era.value}): no known device loss for this "
                        "configuration")]
    selection = select_devices(era, request, config)
    findings = []
    for entry in selection.entries:
        path = entry.device.path
        if entry.outcome in (KataOutcome.DROPPED_SILENTLY, KataOutcome.FILTERED):
            findings.append(Finding(Severity.ERROR, "kata-version",
                                    f"Kata {version} drops {path}: {entry.reason}",
                                    _kata_fix(era, config, request)))
        elif entry.outcome is KataOutcome.FAILS_AT_ATTACH:
            findings.append(Finding(Severity.ERROR, "kata-version",
                                    f"Kata {version} fails to attach {path}: {entry.reason}",
                                    _attach_fix(entry.device, config)))
        elif entry.outcome is KataOutcome.SANDBOX_FAILS:
            findings.append(Finding(Severity.ERROR, "kata-version",
                                    f"Kata {version} never starts the VM for {path}: "
                                    f"{entry.reason}",
                                    f"set enable_hugepages = true in "
                                    f"[{config.hypervisor.section}] and reserve huge pages, "
                                    "or enable_vhost_user_store = false"))
        elif entry.outcome is KataOutcome.LEAKED_TO_PAUSE:
            findings.append(Finding(Severity.WARNING, "kata-version",
                                    f"Kata {version} lists {path} in the pause container, "
                                    "which the guest rejects", "upgrade Kata to 4.1.0 or later "
                                    "(PR #13681)"))
    if not findings:
        findings.append(Finding(Severity.OK, "kata-version",
                                f"Kata {version} ({era.value}) keeps all "
                                f"{len(request.devices)} devices of this spec"))
    return findings


def plan_findings(config: RuntimeConfig, request: ContainerRequest,
                  inventory: HostInventory, hotplug: HotplugMode = HotplugMode.ACPI,
                  spare_floor: Window = DEFAULT_SPARE_WINDOW,
                  ) -> tuple[list[Finding], Plan | None]:
    try:
        result = make_plan(config, request, inventory, hotplug=hotplug,
                           spare_floor=spare_floor)
    except TopologyExhausted as exc:
        return [Finding(Severity.ERROR, "topology", str(exc), exc.hint or
                        "request fewer devices, or use switch-port for more ports")], None
    except PlanError as exc:
        return [Finding(Severity.ERROR, "platform", str(exc),
                        "podplug plans QEMU q35 and Cloud Hypervisor configurations")], None
    rejected = result.in_bucket(Bucket.REJECTED)
    findings = [Finding(Severity.ERROR, "plan", f"{d.request.path} rejected: {d.reason}",
                        "see the reason") for d in rejected]
    topo = result.topology
    placed = len(result.devices) - len(rejected)
    findings.append(Finding(Severity.OK, "topology",
                            f"the {placed} device(s) podplug places fit: "
                            f"{topo.root_slots_used} root-bus slots and {topo.bus_numbers} of "
                            "255 bus numbers used"))
    return findings, result


def qemu_findings(qemu: QemuCapabilities | ConfigError,
                  result: Plan | None) -> list[Finding]:
    """The binary that would run the plan, and whether it can."""
    if isinstance(qemu, ConfigError):
        return [Finding(Severity.ERROR, "qemu", str(qemu),
                        "install QEMU there, or point path (or --qemu) at it")]
    findings = [Finding(Severity.OK, "qemu", f"{qemu.binary}: QEMU {qemu.version_text}")]
    if result is not None:
        missing = qemu.lacks(qemu_needs(result))
        if missing:
            findings.append(Finding(
                Severity.ERROR, "qemu",
                f"{qemu.binary} (QEMU {qemu.version_text}) has no "
                f"{', '.join(f.value for f in missing)}, which the plan needs",
                "use a QEMU that has it (QEMU 9.0+ for iommufd), or pass the group node "
                "/dev/vfio/<N> instead of the iommufd cdev"
                if QemuFeature.IOMMUFD_OBJECT in missing else "use a QEMU that has it"))
    return findings


def block_findings(config: RuntimeConfig,
                   qemu: QemuCapabilities | ConfigError | None) -> list[Finding]:
    """What Kata would do with the block keys of ``config`` (and the probed binary)."""
    hv = config.hypervisor
    keys = hv.block
    io_uring = not isinstance(qemu, QemuCapabilities) or \
        QemuFeature.AIO_IO_URING in qemu.features
    shape = blockdev_shape(config, io_uring=io_uring)
    findings: list[Finding] = []
    if keys.aio is BlockAio.NATIVE and shape.aio is not BlockAio.NATIVE:
        direct = ("block_device_cache_direct = true" if config.runtime is KataRuntime.RUST
                  else "block_device_cache_set = true and block_device_cache_direct = true")
        findings.append(Finding(
            Severity.WARNING, "block", 'block_device_aio = "native" without cache.direct: '
            "QEMU refuses the blockdev-add, so Kata fails to hot-plug every volume",
            f'set {direct} in [{hv.section}], or block_device_aio = "threads"'))
    elif keys.aio is BlockAio.IO_URING and not io_uring:
        binary = qemu.binary if isinstance(qemu, QemuCapabilities) else "QEMU"
        findings.append(Finding(
            Severity.ERROR, "block", f"{binary} cannot open a volume with aio=io_uring on this "
            "host (probed; Kata's default): Kata fails to hot-plug every volume",
            f'set block_device_aio = "threads" in [{hv.section}], or allow io_uring '
            "(kernel.io_uring_disabled, seccomp)"))
    if keys.enable_vhost_user_store and not keys.enable_hugepages and \
            config.runtime is KataRuntime.GO:
        findings.append(Finding(
            Severity.ERROR, "block", "enable_vhost_user_store without enable_hugepages: Kata's "
            "Go runtime refuses to start the VM (vhost-user storage needs shared huge pages)",
            f"set enable_hugepages = true in [{hv.section}] and reserve huge pages, or "
            "enable_vhost_user_store = false"))
    findings += [Finding(Severity.INFO, "block", note) for note in shape.notes
                 if "planned with aio=threads" not in note]
    if not findings:
        cache = (f"cache direct={shape.node_cache[0]} no-flush={shape.node_cache[1]}"
                 if shape.node_cache else f"cache.direct={shape.file_direct}"
                 if shape.file_direct is not None else "no cache options")
        findings.append(Finding(Severity.OK, "block", f"volumes: aio={shape.aio.value}, "
                                f"{cache}"))
    return findings


def host_findings(request: ContainerRequest | None, inventory: HostInventory,
                  result: Plan | None) -> list[Finding]:
    vfio = [d for d in (request.devices if request else ()) if is_vfio_path(d.path)]
    findings = []
    if not inventory.has_iommu:
        severity = Severity.ERROR if vfio else Severity.INFO
        findings.append(Finding(severity, "iommu", "no IOMMU groups under "
                                f"{inventory.sysfs_root}/kernel/iommu_groups",
                                "enable the IOMMU (intel_iommu=on or amd_iommu=on, and VT-d/"
                                "AMD-Vi in firmware)"))
    for device in vfio:
        source = resolve_vfio(device, inventory)
        if isinstance(source, str):
            findings.append(Finding(Severity.ERROR, "vfio", f"{device.path}: {source}",
                                    "check the device node and the host's IOMMU groups"))
            continue
        for function in source.functions:
            if function.driver not in VIABLE_DRIVERS:
                findings.append(Finding(
                    Severity.ERROR, "vfio",
                    f"{device.path}: {function.bdf} is bound to {function.driver}, so the "
                    "group is not viable", f"bind it to vfio-pci (driverctl set-override "
                    f"{function.bdf} vfio-pci)"))
        if all(f.driver in VIABLE_DRIVERS for f in source.functions):
            findings.append(Finding(Severity.OK, "vfio", f"{device.path}: "
                                    f"{len(source.functions)} function(s) bound to vfio-pci"))
    if result is not None:
        findings += _bar_findings(result, inventory)
    return findings


_KIND = {Role.ROOT_PORT: "root port", Role.SWITCH_DOWNSTREAM: "switch downstream port",
         Role.PCI_BRIDGE: "pci-bridge"}
GUEST_ADDRESS_LIMIT = 1008 << 30  # the largest 64-bit hole QEMU starts with at 40 phys-bits
RESERVED_BAR_LIMIT = 512 << 30  # SeaBIOS put a 512 GiB BAR over the reserved 0xfd00000000


def _window_text(window: Window) -> str:
    how = "kept by a boot-time device" if window.aligned else "reserved"
    return f"mem {size_text(window.mem)}, pref64 {size_text(window.pref64)} ({how})"


def _bar_findings(result: Plan, inventory: HostInventory) -> list[Finding]:
    """Every hot-pluggable port, by its kind, must have windows for what can land there:
    the unit planned on it, or (a spare, when VFIO is hot-plugged) the host's largest
    assignable unit (firmware sizes windows only for devices present at boot;
    :mod:`podplug.plan.windows`)."""
    findings = []
    ports = {c.id: c for c in result.topology.controllers}
    for device in result.in_bucket(Bucket.HOT_VFIO):
        units: dict[str, list[PciFunction]] = {}
        for function in device.functions:
            host = inventory.functions.get(function.host)
            if host is not None:
                units.setdefault(function.qemu.bus, []).append(host)
        for bus, functions in units.items():
            port = ports.get(bus)
            if port is None:
                continue
            findings.append(_fit_finding(port, functions, device.request.path, Severity.ERROR))
    if result.config.hypervisor.hot_plug_vfio is not PortKind.NO_PORT:
        largest = max(assignable_units(inventory),
                      key=lambda u: (unit_window(u).pref64, unit_window(u).mem), default=())
        for port in result.topology.controllers:
            if port.use is Use.SPARE and largest:
                findings.append(_fit_finding(port, largest, "the host's largest assignable "
                                             "device", Severity.WARNING))
    bars = [b for f in inventory.functions.values() for b in f.bars
            if f.driver == "vfio-pci" and b.prefetchable]
    if any(b.size >= RESERVED_BAR_LIMIT for b in bars):
        findings.append(Finding(Severity.WARNING, "bars", "a prefetchable BAR of 512 GiB or "
                                "more: SeaBIOS placed one over the guest's reserved range at "
                                "0xfd00000000 and the guest driver did not bind (measured)",
                                "give the guest more physical address bits (phys-bits) and "
                                "firmware that places it higher"))
    total = sum(c.window.pref64 for c in result.topology.controllers)
    if total > GUEST_ADDRESS_LIMIT:
        findings.append(Finding(Severity.WARNING, "bars",
                                f"{size_text(total)} of prefetchable windows planned, more "
                                "than a 40-bit guest address space holds (1008G)",
                                "give the guest more physical address bits (phys-bits)"))
    return findings


def _fit_finding(port: Controller, functions: Sequence[PciFunction], what: str,
                 severity: Severity) -> Finding:
    kind = _KIND.get(port.role, port.role.value)
    need = unit_window(functions)
    lack = shortfall(port.window, functions)
    if lack.empty:
        return Finding(Severity.OK, "bars", f"{port.id} ({kind}): {_window_text(port.window)} "
                       f"fits {what} (needs mem {size_text(need.mem)}, pref64 "
                       f"{size_text(need.pref64)})")
    fix = ("use a root port: a switch downstream port has no reserve properties"
           if port.role is Role.SWITCH_DOWNSTREAM and lack.mem else
           "plan with podplug (it sizes every hot-plug window)")
    return Finding(severity, "bars", f"{port.id} ({kind}): {_window_text(port.window)} "
                   f"lacks mem {size_text(lack.mem)}, pref64 {size_text(lack.pref64)} for "
                   f"{what}", fix)


def _key(name: str, value: str, given: bool) -> str:
    return f"{name}={value}" if given else f"{name}={value} (default)"


def config_finding(config: RuntimeConfig, hotplug: HotplugMode) -> Finding:
    """The configuration as read: each key as the file sets it, or marked as Kata's default."""
    hv = config.hypervisor
    keys = [_key("vfio_mode", config.vfio_mode.value, config.vfio_mode_given)]
    keys += [_key(name, value, name in hv.given) for name, value in (
        ("cold_plug_vfio", hv.cold_plug_vfio.value), ("hot_plug_vfio", hv.hot_plug_vfio.value),
        ("block_device_driver", hv.block_device_driver.value))]
    return Finding(Severity.OK, "config",
                   f"[{hv.section}] valid: {' '.join(keys)}; planned for {hotplug.value} "
                   "hot-plug")


def diagnose(config: RuntimeConfig | ConfigError | UnsupportedPlatform, *,
             request: ContainerRequest | None = None,
             inventory: HostInventory | None = None, era: KataEra | None = None,
             version: str = "", hotplug: HotplugMode = HotplugMode.ACPI,
             qemu: QemuCapabilities | ConfigError | None = None,
             spare_floor: Window = DEFAULT_SPARE_WINDOW) -> list[Finding]:
    """Every finding for this deployment, in check order; each says one thing, and the
    checks that need a valid, planned configuration are left out when it is not."""
    if isinstance(config, UnsupportedPlatform):
        return [Finding(Severity.ERROR, "platform", str(config),
                        "podplug plans QEMU q35 and Cloud Hypervisor configurations "
                        "(configuration-qemu*.toml, configuration-clh.toml)")]
    if isinstance(config, ConfigError):
        return [Finding(Severity.ERROR, "config", str(config),
                        f"allowed: {', '.join(config.allowed)}" if config.allowed else
                        "fix the key named")]
    findings = [config_finding(config, hotplug)]
    findings += [Finding(Severity.INFO, "config", note) for note in config.notes]
    findings += block_findings(config, qemu)
    if era is not None and config.runtime is KataRuntime.RUST:
        findings.append(Finding(Severity.INFO, "kata-version",
                                f"Kata {version}: the release models describe the Go runtime; "
                                "runtime-rs routes each device on its own and has no #11288 "
                                "either/or selection"))
    elif era is not None:
        findings += kata_findings(era, version, config, request)
    result = None
    if request is not None and inventory is not None:
        more, result = plan_findings(config, request, inventory, hotplug, spare_floor)
        findings += more
    if qemu is not None:
        findings += qemu_findings(qemu, result)
    if inventory is not None:
        findings += host_findings(request, inventory, result)
    return findings


def worst(findings: list[Finding]) -> Severity:
    return max((f.severity for f in findings), default=Severity.OK)
