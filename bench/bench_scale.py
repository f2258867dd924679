"""Scale benchmark for podplug (issue 12, item 5, "Scale, booted"), run by hand (not a test):
``python3 bench/bench_scale.py``.

Boots the largest topology podplug's planner allows (391 hot-pluggable ports), hot-plugs
100 virtio-blk volumes in one pipelined batch (:func:`~podplug.vm.hotplug.carry_batch`),
proves each visible in the guest with its own serial (``wait-blks``, ``serial``), unplugs
them in one burst (:func:`~podplug.vm.hotplug.unplug_batch`), and prints a markdown
section; ``bench/all.py`` calls :func:`run` and :func:`markdown`. Everything it drives is
podplug's own: the planner, ``guest_argv``, ``Vm``, ``AgentClient``, the sequencer.

The topology. Kata's configuration caps every count podplug reads: ``pcie_root_port`` and
``pcie_switch_port`` at 16, ``default_bridges`` at 5. At those caps the configuration
alone gives 16 spare root ports + 16 spare downstream ports + 5 x 31 bridge slots = 187
hot-pluggable ports, so 240 needs more downstream ports, and the planner makes those only
for VFIO devices: ``hot_plug_vfio = "switch-port"``, one downstream port per hot VFIO unit,
switches added 32 ports at a time. The pod asks for N single-function SR-IOV-VF-shaped
VFIO groups (one IOMMU group each; BAR sizes chosen here, not read from a device: the many
small hot-plugged functions a Kata pod realistically asks for) and 100 volumes, which Kata's
Go runtime and podplug put on the bridge slots (``block_device_driver = "virtio-blk"``,
ACPI hot-plug). Bus numbers (1-255) stop N at 220: 155 + 16 + 220 = 391 ports, the most
any configuration reaches (each port costs a bus number, a bridge gives 31 slots for one,
and 7 switches are the fewest that hold 220). :func:`limits` gives every budget with the
error one step beyond.

Hot-pluggable ports: every ``pcie-root-port`` not carrying a switch and every
``xio3130-downstream`` port (a PCIe slot with the hot-plug capability, one device at slot
0), and every slot 1-31 of every ``pci-bridge`` (shpc off: QEMU's ACPI PCI hot-plug, which
q35 has on bridges; under native PCIe hot-plug bridge slots take no device and podplug does
not plan them there). Not counted: root ports carrying a switch and switch upstream ports
(each holds a fixed device), and the root bus (podplug never hot-plugs there).

The guest's interrupt vectors, not the planner, are what stop podplug's own VM
(``guest_argv``: ``-smp 1``; Linux 6.1): x86 has about 200 device vectors per vCPU, every
PCIe port takes one (its AER port-service interrupt, even where no AER driver binds) and
every virtio-blk disk one for its config and one per queue. Past that, probes fail
with -ENOSPC: ``virtio_console ... Error -28 initializing vqs`` (the agent's channel, so no
agent) at boot, ``virtio_blk: probe of virtioN failed with error -28`` on hot-plug. So:

1. *as podplug boots it* (``-smp 1``, its own command line): the most VF downstream ports
   that boot (measured: 166, :data:`AS_IS_VFS`), with the 100-volume batch (how many become
   visible), and one more port, which does not boot (the guest's console, quoted);
2. *the largest topology* with the two changes the guest needs (:data:`SMP`,
   :data:`GUEST_APPEND`: ``-smp 2`` and ``pci=noaer``), with the window keepers the planner
   gives its 220 downstream ports: launch -> SeaBIOS handing over to the kernel (its debug
   port, on the host's clock: the guest's own lags it) -> agent ready, QEMU's RSS, the guest's view
   (every port and keeper enumerated), the keepers released as ``podplug run`` releases
   them, the 100-volume batch, its proof, its unplug, then one volume each on the last
   downstream port (bus 255), the last spare root port and the last spare bridge slot;
3. the same controllers without keepers (VFs whose BARs need none): launch -> agent ready
   and RSS, so the difference is what the keepers cost at boot.

Every VM is inside ``with booted(...)``: stopped and its directory removed on every exit
path; one VM at a time; the run checks that no QEMU child and no directory is left.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # ``python3 bench/bench_scale.py`` puts bench/ first, not REPO
    sys.path.insert(0, str(REPO))

from bench.bench_plan import git_state, load, table  # noqa: E402
from podplug.errors import PodplugError  # noqa: E402
from podplug.guest.agent_client import AgentClient  # noqa: E402
from podplug.guest.protocol import parse_lspci  # noqa: E402
from podplug.image.build import GuestImage, build_image  # noqa: E402
from podplug.inputs.kata import (  # noqa: E402
    MAX_BRIDGES,
    MAX_PCIE_ROOT_PORTS,
    MAX_PCIE_SWITCH_PORTS,
    RuntimeConfig,
)
from podplug.model.enums import Bucket, HotplugMode  # noqa: E402
from podplug.model.host import (  # noqa: E402
    IORESOURCE_MEM,
    Bar,
    BlockNode,
    CharNode,
    HostInventory,
    PciFunction,
)
from podplug.model.pci import Bdf  # noqa: E402
from podplug.model.request import ContainerRequest  # noqa: E402
from podplug.plan.guest_needs import after_release, guest_module_groups  # noqa: E402
from podplug.plan.model import BlockdevNode, DevicePlan, Plan, QemuDevice  # noqa: E402
from podplug.plan.plan import plan as make_plan  # noqa: E402
from podplug.plan.sequence import (  # noqa: E402
    StepKind,
    hot_devices,
    plug_steps,
    release_steps,
    unplug_steps,
)
from podplug.plan.standin import STANDIN_VENDOR_DEVICE, stand_ins  # noqa: E402
from podplug.plan.topology import BRIDGE_SLOTS, Role, Target, Use  # noqa: E402
from podplug.plan.windows import parse_size, size_text  # noqa: E402
from podplug.run.session import guest_argv  # noqa: E402
from podplug.vm.hotplug import carry_batch, unplug_batch  # noqa: E402
from podplug.vm.process import DEFAULT_QEMU, Accel, Vm  # noqa: E402
from tests.support import (  # noqa: E402
    PREF64,
    VFIO_GROUP_MAJOR,
    block,
    config,
    live_qemu,
    request,
    vfio_group,
)

ACCEL = Accel.TCG
MEMORY_MIB = 512  # RunOptions' default: enough (QEMU's RSS is in the table)
SMP = 2  # the largest topology's guest needs a second vCPU's interrupt vectors
GUEST_APPEND = "pci=noaer"  # ... and its ports' AER vectors back (see the module docstring)
AS_IS_VFS = 166  # measured: the most VF downstream ports podplug's own VM boots with
VOLUMES = 100
VOLUME_BYTES = 1 << 20  # sparse backing files
MIN_HOTPLUGGABLE = 240
FIRST_GROUP = 12
LOOP_MAJOR = 7
LAUNCH_TIMEOUT_S = 120.0  # Popen -> QMP (the 1400-argument command line starts in ~5 s)
READY_TIMEOUT_S = 900.0  # -> agent ready: minutes for this many devices under TCG
WAIT_MS = 180_000  # the agent's own bound on wait-blks
AS_IS_WAIT_MS = 30_000  # ... where some volumes are known never to come
UNPLUG_TIMEOUT_S = 300.0  # ACPI ejects are handled by the guest one after the other
AGENT_TIMEOUT_S = 120.0  # one agent call that walks every PCI device (lspci)
PLAN_RUNS = 21
VIRTIO_BLK = {(0x1AF4, 0x1001), (0x1AF4, 0x1042)}  # transitional (bridge slot), modern
PCI_BRIDGE_CLASS = 0x0604
KEEPER_IDS = tuple(int(x, 16) for x in STANDIN_VENDOR_DEVICE.split(":"))  # QEMU nvme

#: the pod's VFIO functions. KEEPER_VF's 2 MiB 64-bit prefetchable BAR is more than an
#: empty downstream port's firmware window holds aligned, so the planner gives its port a
#: 2 MiB window keeper; BARE_VF's BARs need none (podplug.plan.windows.keeper_size)
KEEPER_VF = (Bar(0, 2 << 20, PREF64),)
BARE_VF = (Bar(0, 64 << 10, PREF64), Bar(3, 16 << 10, PREF64))
#: bench_plan.py's GPU: 16 MiB registers, a 64 GiB 64-bit prefetchable BAR
GPU = (Bar(0, 16 << 20, IORESOURCE_MEM), Bar(1, 64 << 30, PREF64))
#: the 64-bit window QEMU 7.2 can give a TCG ``-cpu max`` guest (40 physical address bits:
#: docs/hotplug-windows.md, "The 64-bit hole")
GUEST_HOLE64 = 1008 << 30
VF_IDS = (0x8086, 0x1889)  # a label: the BARs above are not that device's
VF_CLASS = 0x020000  # Ethernet controller


def scale_config() -> RuntimeConfig:
    """Kata's caps for every count podplug reads, VFIO hot-plugged onto switch ports, volumes
    as virtio-blk (on the bridges), Kata's default ``vfio_mode`` (guest-kernel)."""
    return config("guest-kernel", hot="switch-port", root_ports=MAX_PCIE_ROOT_PORTS,
                  switch_ports=MAX_PCIE_SWITCH_PORTS, bridges=MAX_BRIDGES)


def config_text(cfg: RuntimeConfig) -> str:
    hv = cfg.hypervisor
    return (f'`machine_type = "{hv.machine_type}"`, `hot_plug_vfio = '
            f'"{hv.hot_plug_vfio.value}"`, `pcie_root_port = {hv.pcie_root_port}`, '
            f"`pcie_switch_port = {hv.pcie_switch_port}`, `default_bridges = "
            f'{hv.default_bridges}`, `block_device_driver = "{hv.block_device_driver.value}"`'
            f', `vfio_mode = "{cfg.vfio_mode.value}"`')


# --- the pod and its host ----------------------------------------------------------------------

def vf(index: int, bars: tuple[Bar, ...]) -> PciFunction:
    """VF ``index``: a slot of its own (no two form one multi-function unit), its own group."""
    bdf = Bdf(0, 0x41 + index // 32, index % 32, 0)
    return PciFunction(bdf, *VF_IDS, VF_CLASS, True, bars, "vfio-pci", 0, FIRST_GROUP + index)


def pod(vfs: int, bars: tuple[Bar, ...], disks: Sequence[Path],
        ) -> tuple[HostInventory, ContainerRequest]:
    """The host (``vfs`` VFs bound to vfio-pci, a loop device per disk image) and the pod
    asking for all of them: the VFIO groups, then the volumes /dev/vol000...."""
    functions = {f.bdf: f for f in (vf(i, bars) for i in range(vfs))}
    groups = {FIRST_GROUP + i: (bdf,) for i, bdf in enumerate(functions)}
    chars = {(VFIO_GROUP_MAJOR, g): CharNode(VFIO_GROUP_MAJOR, g, f"vfio/{g}") for g in groups}
    chars[(10, 196)] = CharNode(10, 196, "vfio/vfio")
    nodes = {(LOOP_MAJOR, i): BlockNode(LOOP_MAJOR, i, f"loop{i}", str(disk))
             for i, disk in enumerate(disks)}
    devices = [vfio_group(g) for g in groups]
    devices += [block(i, f"/dev/vol{i:03d}") for i in range(len(disks))]
    return HostInventory(functions, groups, nodes, chars), request(*devices)


def plan_pod(vfs: int, bars: tuple[Bar, ...], disks: Sequence[Path],
             cfg: RuntimeConfig | None = None) -> Plan:
    inventory, req = pod(vfs, bars, disks)
    return make_plan(cfg or scale_config(), req, inventory)


def fake_disks(count: int) -> list[Path]:
    """Names only, for planning: the planner never opens a volume."""
    return [Path(f"/nonexistent/disk{i}.img") for i in range(count)]


Probe = Callable[[int], PodplugError | None]


def largest(plans: Probe) -> int:
    """The largest n >= 0 for which ``plans(n)`` is None (doubling, then bisection)."""
    if plans(1) is not None:
        return 0
    lo, hi = 1, 2
    while plans(hi) is None:
        lo, hi = hi, hi * 2
        if hi > 1 << 14:
            raise RuntimeError("no budget reached")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if plans(mid) is None else (lo, mid)
    return lo


def probe(build: Callable[[int], object]) -> Probe:
    def plans(n: int) -> PodplugError | None:
        try:
            build(n)
        except PodplugError as exc:
            return exc
        return None
    return plans


def vf_probe(cfg: RuntimeConfig, volumes: int) -> Probe:
    disks = fake_disks(volumes)
    return probe(lambda n: plan_pod(n, KEEPER_VF, disks, cfg))


def volume_probe(cfg: RuntimeConfig) -> Probe:
    return probe(lambda n: plan_pod(0, KEEPER_VF, fake_disks(n), cfg))


# --- what the topology holds -------------------------------------------------------------------

@dataclass(frozen=True)
class Ports:
    root_ports: int  # not carrying a switch
    downstream: int
    bridges: int
    bridge_slots: int  # hot-pluggable (ACPI)
    bridge_slots_planned: int  # of them: planned for the pod's volumes
    switches: int
    keepers: int
    keeper_bytes: int
    pref64_bytes: int  # 64-bit prefetchable windows asked of firmware (reserves + keepers)
    controllers: int
    bus_numbers: int
    root_slots: int

    @property
    def hotpluggable(self) -> int:
        return self.root_ports + self.downstream + self.bridge_slots


def ports_of(p: Plan) -> Ports:
    cs = p.topology.controllers
    bridges = sum(1 for c in cs if c.role is Role.PCI_BRIDGE)
    pref64 = sum(c.keeper for c in cs) + sum(parse_size(v) for c in cs for k, v in c.reserves
                                             if k == "pref64-reserve")
    return Ports(
        root_ports=sum(1 for c in cs if c.role is Role.ROOT_PORT and c.use is not Use.SWITCH),
        downstream=sum(1 for c in cs if c.role is Role.SWITCH_DOWNSTREAM),
        bridges=bridges,
        bridge_slots=bridges * len(BRIDGE_SLOTS) if p.hotplug is HotplugMode.ACPI else 0,
        bridge_slots_planned=len(p.topology.bridge_targets),
        switches=sum(1 for c in cs if c.role is Role.SWITCH_UPSTREAM),
        keepers=sum(1 for c in cs if c.keeper),
        keeper_bytes=sum(c.keeper for c in cs),
        pref64_bytes=pref64,
        controllers=len(cs),
        bus_numbers=p.topology.bus_numbers,
        root_slots=p.topology.root_slots_used,
    )


# --- the planner's limits ----------------------------------------------------------------------

def _config_error(**counts: int) -> str:
    try:
        config(**counts)  # type: ignore[arg-type]  # only the int keywords are passed
    except PodplugError as exc:
        return str(exc)
    raise AssertionError(f"{counts} parsed")


def limits() -> list[list[str]]:
    """Each budget of the planner: [budget, the most that plans, the error one step beyond]."""
    rows = [
        ["`pcie_root_port` (Kata maxPCIeRootPort)", str(MAX_PCIE_ROOT_PORTS),
         _config_error(root_ports=MAX_PCIE_ROOT_PORTS + 1)],
        ["`pcie_switch_port` (Kata maxPCIeSwitchPort)", str(MAX_PCIE_SWITCH_PORTS),
         _config_error(switch_ports=MAX_PCIE_SWITCH_PORTS + 1)],
        ["`default_bridges` (Kata maxPCIBridges)", str(MAX_BRIDGES),
         _config_error(bridges=MAX_BRIDGES + 1)],
    ]
    cfg = scale_config()
    cases: list[tuple[str, Probe]] = [
        ("virtio-blk volumes on bridge slots (this configuration, no VFIO)",
         volume_probe(cfg)),
        (f"hot VFIO units on downstream ports (this configuration + {VOLUMES} volumes): "
         "bus numbers", vf_probe(cfg, VOLUMES)),
        ("hot VFIO units on downstream ports, `default_bridges = 1`, no root ports "
         "(bench_plan.py's case; 31 bridge slots beside them)",
         vf_probe(config(hot="switch-port"), 0)),
        ('hot VFIO units on root ports (`hot_plug_vfio = "root-port"`, 5 bridges): '
         "root-bus slots", vf_probe(config(hot="root-port", root_ports=MAX_PCIE_ROOT_PORTS,
                                           bridges=MAX_BRIDGES), 0)),
        ("virtio-blk volumes on root ports of their own (`default_bridges = 0`)",
         volume_probe(config(bridges=0))),
    ]
    for label, plans in cases:
        n = largest(plans)
        error = plans(n + 1)
        assert error is not None
        rows.append([label, str(n), str(error)])
    return rows


# --- booting -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Guest:
    """How the guest is booted: podplug's own way (``smp=1``, no extra words) or changed."""

    smp: int = 1
    append: str = ""
    firmware_log: bool = False  # SeaBIOS's debug port to a file (an ISA device, no PCI)

    def argv(self, p: Plan, image: GuestImage, sock: Path,
             mapping: Callable[[QemuDevice], QemuDevice]) -> list[str]:
        if self.append:
            image = replace(image, cmdline=f"{image.cmdline} {self.append}")
        argv = guest_argv(p, image, sock, device=mapping, memory_mib=MEMORY_MIB, accel=ACCEL)
        at = argv.index("-smp") + 1
        assert argv[at] == "1", argv[at]  # guest_argv's own
        argv[at] = str(self.smp)
        if self.firmware_log:
            argv += ["-chardev", f"file,id=firmware,path={sock.parent / FIRMWARE_LOG}",
                     "-device", "isa-debugcon,iobase=0x402,chardev=firmware"]
        return argv

    @property
    def text(self) -> str:
        words = [f"`-smp {self.smp}`", *(f"`{w}`" for w in self.append.split()),
                 *(["SeaBIOS's debug port to a file"] if self.firmware_log else [])]
        return " + ".join(words) if (self.smp != 1 or self.append) else "podplug's own"


AS_IS = Guest()
NEEDED = Guest(SMP, GUEST_APPEND, firmware_log=True)
FIRMWARE_LOG = "firmware.log"


class BootFailed(RuntimeError):
    """The guest never got its agent up; ``console`` is what its console said last."""

    def __init__(self, cause: str, console: str, seconds: float) -> None:
        super().__init__(cause)
        self.console = console
        self.seconds = seconds


@dataclass
class Boot:
    qmp_s: float  # Popen -> QMP connected
    kernel_s: float  # Popen -> SeaBIOS hands over to the kernel (host clock; nan: not seen)
    ready_s: float  # Popen -> the agent's hello (or a ping reply)
    uptime_s: float  # the guest kernel's uptime in that reply
    init_uptime_s: float  # guest uptime when /init started (its console line)
    rss_kib: int  # QEMU's VmRSS right after ready
    hwm_kib: int  # QEMU's VmHWM then
    pid: int
    qemu_says: str  # QEMU's own stderr (warnings)


class FirmwareClock:
    """The host time at which SeaBIOS hands over to the kernel (``Booting from ROM`` on its
    debug port, polled every 0.1 s from another thread): the guest's own clock cannot say,
    it lags the host's under this load, and a ``quiet`` kernel prints nothing before /init."""

    MARK = "Booting from ROM"

    def __init__(self, log: Path | None, started: float) -> None:
        self.handover_s = math.nan
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(log, started), daemon=True)
        if log is not None:
            self._thread.start()

    def _watch(self, log: Path, started: float) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(OSError):
                if self.MARK in log.read_text(errors="replace"):
                    self.handover_s = time.monotonic() - started
                    return

    def stop(self) -> float:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.handover_s


def proc_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return -1


def serial_uptime(serial: str, what: str) -> float:
    found = re.search(rf"{what} at uptime ([0-9.]+) s", serial)
    return float(found.group(1)) if found else math.nan


LEFT_BEHIND: list[str] = []


@contextlib.contextmanager
def booted(p: Plan, image: GuestImage, root: Path, guest: Guest,
           mapping: Callable[[QemuDevice], QemuDevice]) -> Iterator[tuple[Vm, AgentClient, Boot]]:
    """A running VM of ``p`` with its agent ready; stopped and its directory (below ``root``)
    removed on every exit path. :raises BootFailed: the agent never answered."""
    with tempfile.TemporaryDirectory(prefix="vm-", dir=root) as tmp:
        sock = Path(tmp) / "agent.sock"
        vm = Vm(guest.argv(p, image, sock, mapping), accel=ACCEL, tmp_parent=tmp, name="scale")
        started = time.monotonic()
        try:
            vm.launch(LAUNCH_TIMEOUT_S)
            qmp = time.monotonic() - started
            assert vm.pid is not None and vm.workdir is not None
            clock = FirmwareClock(Path(tmp) / FIRMWARE_LOG if guest.firmware_log else None,
                                  started)
            with contextlib.closing(AgentClient.connect(sock)) as agent:
                try:
                    pong = agent.wait_ready(READY_TIMEOUT_S)
                except PodplugError as exc:
                    clock.stop()
                    failed = time.monotonic() - started
                    time.sleep(0.5)  # the console's last lines
                    console = (vm.workdir / "serial.log").read_text(errors="replace")
                    raise BootFailed(str(exc), console, failed) from exc
                ready = time.monotonic() - started
                kernel = clock.stop()
                serial = vm.serial_log.read_text(errors="replace")
                stderr = (vm.workdir / "qemu.log").read_text(errors="replace")
                yield vm, agent, Boot(qmp, kernel, ready,
                                      float(pong.fields.get("uptime", "nan")),
                                      serial_uptime(serial, "init"), proc_kib(vm.pid, "VmRSS"),
                                      proc_kib(vm.pid, "VmHWM"), vm.pid,
                                      " ".join(stderr.split()))
        finally:
            vm.shutdown()
            if vm.alive:
                LEFT_BEHIND.append(f"QEMU pid {vm.pid}")
            LEFT_BEHIND.extend(str(x) for x in Path(tmp).glob("podplug-vm-*"))


def console_errors(console: str) -> list[str]:
    """The guest console's error lines, timestamps dropped, each once."""
    found = re.findall(r"^(?:\[[ 0-9.]+\] )?(.*(?:Error|error|FATAL).*)$", console, re.M)
    return list(dict.fromkeys(line.strip() for line in found))


@dataclass
class View:
    bridges: int  # PCI bridge functions: every port, upstream port and pci-bridge
    keepers: int
    blks: int
    seconds: float  # the lspci walk


def guest_view(agent: AgentClient) -> View:
    t0 = time.monotonic()
    devices = parse_lspci(agent.call("lspci", timeout=AGENT_TIMEOUT_S))
    seconds = time.monotonic() - t0
    return View(sum(1 for d in devices if d.pci_class >> 8 == PCI_BRIDGE_CLASS),
                sum(1 for d in devices if (d.vendor, d.device) == KEEPER_IDS),
                sum(1 for d in devices if (d.vendor, d.device) in VIRTIO_BLK), seconds)


def held(vm: Vm) -> tuple[set[str], set[str]]:
    """The block nodes and the devices QEMU holds (node names, device ids)."""
    nodes = vm.execute("query-named-block-nodes")
    devices = vm.execute("qom-list", {"path": "/machine/peripheral"})
    assert isinstance(nodes, list) and isinstance(devices, list)
    return ({str(n.get("node-name")) for n in nodes},
            {str(d["name"]) for d in devices if str(d.get("type", "")).startswith("child<")})


def release(vm: Vm, agent: AgentClient, p: Plan,
            mapping: Callable[[QemuDevice], QemuDevice]) -> tuple[int, float, str, float]:
    """The window keepers leave as ``podplug run`` lets them (``unplug_batch`` of
    ``release_steps``), then the module groups held back for them load (nvme):
    (steps, seconds, groups, seconds)."""
    steps = release_steps(p)
    t0 = time.monotonic()
    if steps:
        unplug_batch(vm, steps, unplug_timeout=UNPLUG_TIMEOUT_S)
    released = time.monotonic() - t0
    _, later = after_release(p, guest_module_groups(p, device=mapping))
    t0 = time.monotonic()
    for group in later:  # never bound to a keeper (podplug.plan.guest_needs.after_release)
        agent.call("modules", group.value, timeout=AGENT_TIMEOUT_S)
    return len(steps), released, ",".join(g.value for g in later), time.monotonic() - t0


# --- a batch of volumes ------------------------------------------------------------------------

def backing(node: BlockdevNode, files: dict[str, str]) -> BlockdevNode:
    """The fake host's loop device -> its backing file (as ``podplug run`` on a fake host)."""
    return replace(node, file_driver="file", filename=files[node.filename])


def serial_of(device: DevicePlan) -> str:
    assert device.qemu is not None
    return str(dict(device.qemu.props)["serial"])


def moved(device: DevicePlan, target: Target, index: int) -> DevicePlan:
    """Volume ``device`` as another volume ``edgeN`` at ``target`` (own id, node, serial)."""
    assert device.qemu is not None and device.blockdev is not None
    node = replace(device.blockdev, node_name=f"drive-edge{index}")
    props = dict(device.qemu.props)
    props.update(id=f"edge{index}", drive=node.node_name, bus=target.bus,
                 addr=f"{target.addr:02x}.0", serial=f"edge{index}")
    return replace(device, blockdev=node, guest_paths=(target.path,),
                   qemu=QemuDevice(device.qemu.driver, tuple(props.items())))


@dataclass
class Batch:
    """One batch of volumes plugged, proven and unplugged."""

    count: int
    steps: int
    carry_s: float  # carry_batch: every add sent and answered, every placement read back
    wait_s: float  # then wait-blks until every disk is there (or its timeout)
    visible: int  # volumes whose disk the guest has
    serials_ok: int  # ... with the serial QEMU was given
    distinct: int  # distinct disk names among them
    serial_s: float  # the ``serial DISK`` calls
    unplug_s: float  # unplug_batch: every DEVICE_DELETED, then every blockdev-del
    last_event_s: float  # the last DEVICE_DELETED
    blk_left: int  # virtio-blk functions the guest still has after the unplug
    as_before: bool  # QEMU holds exactly the nodes and devices it held before
    paths: list[str] = field(default_factory=list)
    error: str = ""  # wait-blks' error when not every disk came

    @property
    def visible_s(self) -> float:
        return self.carry_s + self.wait_s


def batch(vm: Vm, agent: AgentClient, volumes: Sequence[DevicePlan], files: dict[str, str],
          wait_ms: int = WAIT_MS) -> Batch:
    """Plug ``volumes`` in one pipelined batch, prove each (wait-blks, its serial), unplug
    them in one burst."""
    before = held(vm)
    steps = plug_steps(volumes, drive=lambda n: backing(n, files))
    paths = [str(d.guest_paths[0]) for d in volumes]
    t0 = time.monotonic()
    results = carry_batch(vm, steps)
    carried = time.monotonic() - t0
    assert [str(r.actual_path) for r in results if r.actual_path] == paths
    error = ""
    try:
        seen = agent.call("wait-blks", str(wait_ms), *paths, timeout=wait_ms / 1000 + 30)
        found = dict(line.split() for line in seen.lines)
    except PodplugError as exc:  # some never came: which did
        error = str(exc)
        found = {}
        for path in paths:
            with contextlib.suppress(PodplugError):
                found[path] = agent.call("blk-of-pci", path).words[0]
    waited = time.monotonic() - t0 - carried
    t1 = time.monotonic()
    serials = sum(1 for d in volumes if str(d.guest_paths[0]) in found
                  and agent.call("serial", found[str(d.guest_paths[0])]).fields.get("serial")
                  == serial_of(d))
    serial_s = time.monotonic() - t1
    t2 = time.monotonic()
    out = unplug_batch(vm, unplug_steps(volumes), unplug_timeout=UNPLUG_TIMEOUT_S)
    unplugged = time.monotonic() - t2
    last = max(r.seconds for r in out if r.step.kind is StepKind.DEVICE_DEL)
    return Batch(len(volumes), len(steps), carried, waited, len(found), serials,
                 len(set(found.values())), serial_s, unplugged, last, guest_view(agent).blks,
                 held(vm) == before, paths, error)


# --- the result --------------------------------------------------------------------------------

@dataclass
class ScaleResult:
    """Every figure of one run: seconds, KiB, counts; ``limits`` rows are [budget, most that
    plans, the error one step beyond]."""

    config: str
    guest: str  # how the main boots' guest differs from podplug's own
    vfs: int
    vf_bars: str
    # the topology of the main boot
    hotpluggable: int
    root_ports: int
    downstream_ports: int
    bridge_slots: int
    bridge_slots_for_volumes: int
    bridges: int
    switches: int
    controllers: int
    bus_numbers: int
    root_slots: int
    keepers: int
    keeper_bytes: int
    pref64_bytes: int
    plan_s: float  # median of plan_runs
    plan_min_s: float
    plan_runs: int
    # main boot: the largest topology, with keepers
    qmp_s: float
    kernel_s: float  # launch -> SeaBIOS hands over to the kernel (host clock)
    ready_s: float
    guest_uptime_s: float  # the guest's clock: it lags the host's (see kernel_s, ready_s)
    init_uptime_s: float
    rss_kib: int
    hwm_kib: int
    qemu_says: str
    guest_bridges: int  # PCI bridge functions the guest enumerated (planned: bus_numbers)
    guest_keepers: int  # keepers it enumerated before the release
    guest_keepers_after: int
    lspci_s: float
    release_steps: int
    release_s: float
    later_modules: str  # module groups loaded once the keepers are gone (nvme)
    later_modules_s: float
    volumes: int
    batch_steps: int
    carry_batch_s: float
    wait_blks_s: float
    visible_s: float
    visible: int
    serials_ok: int
    distinct_disks: int
    serial_s: float
    unplug_s: float
    unplug_last_event_s: float
    blk_left: int
    qemu_as_before: bool
    rss_after_kib: int
    hwm_after_kib: int
    edge_paths: list[str]
    edge_visible_s: float
    edge_unplug_s: float
    edge_ok: bool
    shutdown_s: float
    # the same controllers without keepers (nan/-1: not booted)
    bare_kernel_s: float
    bare_ready_s: float
    bare_guest_uptime_s: float
    bare_rss_kib: int
    bare_hwm_kib: int
    # podplug's own guest (-smp 1, its command line): the most VF ports it boots, and one more
    as_is_vfs: int
    as_is_hotpluggable: int
    as_is_ready_s: float
    as_is_guest_uptime_s: float
    as_is_visible: int  # of the 100 volumes
    as_is_serials_ok: int
    as_is_blk_left: int
    as_is_error: str  # wait-blks' error
    as_is_beyond_boots: bool
    as_is_beyond_s: float  # launch -> the agent channel gone
    as_is_beyond_console: list[str]  # the guest console's errors
    limits: list[list[str]]
    gpu_pref64_bytes: int  # the same topology with GPU-shaped VFs (64 GiB BAR): what it asks
    left_qemu: int
    left_files: list[str]
    wall_s: float


def make_disks(root: Path) -> list[Path]:
    (root / "disks").mkdir(exist_ok=True)
    disks = []
    for i in range(VOLUMES):
        disk = root / "disks" / f"disk{i:03d}.img"
        with open(disk, "wb") as handle:
            handle.truncate(VOLUME_BYTES)
        disks.append(disk)
    return disks


def the_volumes(p: Plan) -> list[DevicePlan]:
    volumes = [d for d in hot_devices(p) if d.bucket is Bucket.HOT_BLOCK]
    assert len(volumes) == VOLUMES
    return volumes


def run(image: GuestImage, root: Path, *, vfs: int | None = None, bare: bool = True,
        as_is: bool = True) -> ScaleResult:
    """Plan, boot, plug, prove and unplug (the module docstring's 1-3). ``vfs``: the VF
    downstream ports of the main boot, by default the most that plan next to the volumes;
    ``bare``/``as_is``: do boots 3 and 1. Files go in a directory of its own below ``root``,
    removed at the end."""
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=root))
    try:
        return _run(work, image, vfs, bare, as_is, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(root: Path, image: GuestImage, vfs: int | None, bare: bool, as_is: bool,
         started: float) -> ScaleResult:
    cfg = scale_config()
    limit_rows = limits()
    if vfs is None:
        vfs = largest(vf_probe(cfg, VOLUMES))
    disks = make_disks(root)
    inventory, req = pod(vfs, KEEPER_VF, disks)
    samples = []
    for _ in range(PLAN_RUNS):
        t0 = time.perf_counter()
        p = make_plan(cfg, req, inventory)
        samples.append(time.perf_counter() - t0)
    ports = ports_of(p)
    if ports.hotpluggable < MIN_HOTPLUGGABLE:
        raise SystemExit(f"{ports.hotpluggable} hot-pluggable ports < {MIN_HOTPLUGGABLE}")
    volumes = the_volumes(p)
    files = {n.dev_path: str(n.loop_backing_file) for n in inventory.block_nodes.values()}

    # 1. podplug's own guest: the most VF ports it boots, with the batch; then one more
    a_ready = a_uptime = beyond_s = math.nan
    a_batch: Batch | None = None
    beyond_boots, beyond_console = False, []
    if as_is:
        inv_a, req_a = pod(AS_IS_VFS, KEEPER_VF, disks)
        plan_a = make_plan(cfg, req_a, inv_a)
        mapping = stand_ins(inv_a.functions)
        with booted(plan_a, image, root, AS_IS, mapping) as (vm, agent, boot):
            a_ready, a_uptime = boot.ready_s, boot.uptime_s
            release(vm, agent, plan_a, mapping)
            a_batch = batch(vm, agent, the_volumes(plan_a), files, AS_IS_WAIT_MS)
        inv_b, req_b = pod(AS_IS_VFS + 1, BARE_VF, disks)  # keepers change nothing here
        plan_b = make_plan(cfg, req_b, inv_b)
        try:
            with booted(plan_b, image, root, AS_IS, stand_ins(inv_b.functions)):
                beyond_boots = True
        except BootFailed as exc:
            beyond_s, beyond_console = exc.seconds, console_errors(exc.console)

    # 2. the largest topology, with its keepers and the guest it needs
    mapping = stand_ins(inventory.functions)
    far = [
        p.topology.vfio_targets[-1],  # the last downstream port: bus 255
        [t for t in p.topology.spare_targets if t.bus.startswith("rp")][-1],
        [t for t in p.topology.spare_targets if t.bus.startswith("pci-bridge")][-1],
    ]
    with booted(p, image, root, NEEDED, mapping) as (vm, agent, boot):
        view = guest_view(agent)
        n_release, release_s, later, later_s = release(vm, agent, p, mapping)
        keepers_after = guest_view(agent).keepers
        main = batch(vm, agent, volumes, files)
        rss_after, hwm_after = proc_kib(boot.pid, "VmRSS"), proc_kib(boot.pid, "VmHWM")
        edge = batch(vm, agent, [moved(volumes[i], t, i) for i, t in enumerate(far)], files)
    assert vm.stop_report is not None
    shutdown_s = vm.stop_report.seconds

    # 3. the same controllers without keepers
    bare_boot: Boot | None = None
    if bare:
        inv_c, req_c = pod(vfs, BARE_VF, disks)
        plan_c = make_plan(cfg, req_c, inv_c)
        assert ports_of(plan_c).keepers == 0
        assert [c.id for c in plan_c.topology.controllers] == [
            c.id for c in p.topology.controllers]
        with booted(plan_c, image, root, NEEDED, stand_ins(inv_c.functions)) as (_, _, b):
            bare_boot = b

    nan = math.nan
    return ScaleResult(
        config=config_text(cfg), guest=NEEDED.text, vfs=vfs,
        vf_bars=", ".join(f"BAR{b.index} {size_text(b.size)} 64-bit prefetchable"
                          for b in KEEPER_VF),
        hotpluggable=ports.hotpluggable, root_ports=ports.root_ports,
        downstream_ports=ports.downstream, bridge_slots=ports.bridge_slots,
        bridge_slots_for_volumes=ports.bridge_slots_planned, bridges=ports.bridges,
        switches=ports.switches, controllers=ports.controllers, bus_numbers=ports.bus_numbers,
        root_slots=ports.root_slots, keepers=ports.keepers, keeper_bytes=ports.keeper_bytes,
        pref64_bytes=ports.pref64_bytes,
        plan_s=statistics.median(samples), plan_min_s=min(samples), plan_runs=len(samples),
        qmp_s=boot.qmp_s, kernel_s=boot.kernel_s, ready_s=boot.ready_s,
        guest_uptime_s=boot.uptime_s,
        init_uptime_s=boot.init_uptime_s, rss_kib=boot.rss_kib, hwm_kib=boot.hwm_kib,
        qemu_says=boot.qemu_says,
        guest_bridges=view.bridges, guest_keepers=view.keepers,
        guest_keepers_after=keepers_after, lspci_s=view.seconds,
        release_steps=n_release, release_s=release_s, later_modules=later,
        later_modules_s=later_s,
        volumes=main.count, batch_steps=main.steps, carry_batch_s=main.carry_s,
        wait_blks_s=main.wait_s, visible_s=main.visible_s, visible=main.visible,
        serials_ok=main.serials_ok, distinct_disks=main.distinct, serial_s=main.serial_s,
        unplug_s=main.unplug_s, unplug_last_event_s=main.last_event_s,
        blk_left=main.blk_left, qemu_as_before=main.as_before,
        rss_after_kib=rss_after, hwm_after_kib=hwm_after,
        edge_paths=edge.paths, edge_visible_s=edge.visible_s, edge_unplug_s=edge.unplug_s,
        edge_ok=(edge.serials_ok == edge.distinct == len(far) and edge.as_before
                 and not edge.blk_left),
        shutdown_s=shutdown_s,
        bare_kernel_s=bare_boot.kernel_s if bare_boot else nan,
        bare_ready_s=bare_boot.ready_s if bare_boot else nan,
        bare_guest_uptime_s=bare_boot.uptime_s if bare_boot else nan,
        bare_rss_kib=bare_boot.rss_kib if bare_boot else -1,
        bare_hwm_kib=bare_boot.hwm_kib if bare_boot else -1,
        as_is_vfs=AS_IS_VFS,
        as_is_hotpluggable=ports.hotpluggable - ports.downstream + AS_IS_VFS,
        as_is_ready_s=a_ready, as_is_guest_uptime_s=a_uptime,
        as_is_visible=a_batch.visible if a_batch else -1,
        as_is_serials_ok=a_batch.serials_ok if a_batch else -1,
        as_is_blk_left=a_batch.blk_left if a_batch else -1,
        as_is_error=a_batch.error if a_batch else "",
        as_is_beyond_boots=beyond_boots, as_is_beyond_s=beyond_s,
        as_is_beyond_console=beyond_console,
        limits=limit_rows,
        gpu_pref64_bytes=ports_of(plan_pod(vfs, GPU, fake_disks(VOLUMES))).pref64_bytes,
        left_qemu=len(live_qemu(os.getpid())),
        left_files=sorted(LEFT_BEHIND + [str(x) for x in root.glob("vm-*")]),
        wall_s=time.monotonic() - started,
    )


# --- markdown ----------------------------------------------------------------------------------

def _s(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def markdown(r: ScaleResult) -> str:
    """The markdown section of one run (``bench/all.py`` puts it under its own heading)."""
    ports = table(("hot-pluggable port", "count", "why it counts"), [
        ("`pcie-root-port` (spare)", r.root_ports,
         "a PCIe slot with hot-plug, one device at slot 0"),
        (f"`xio3130-downstream` ({r.switches} switches)", r.downstream_ports,
         "likewise; each the target of one of the pod's hot VFIO units, with its keeper"),
        (f"`pci-bridge` slot ({r.bridges} bridges x {len(BRIDGE_SLOTS)})", r.bridge_slots,
         f"ACPI hot-plug (shpc off); {r.bridge_slots_for_volumes} planned for the volumes"),
        ("**total**", f"**{r.hotpluggable}**", f"at least {MIN_HOTPLUGGABLE} asked"),
        ("(not counted: root ports carrying a switch, upstream ports)", 2 * r.switches,
         "each holds a fixed device"),
    ])
    keeper_cost = r.ready_s - r.bare_ready_s
    figures = table(("the largest topology, booted", "value"), [
        (f"`plan()` (median of {r.plan_runs}; min)",
         f"{r.plan_s * 1e3:.1f} ms ({r.plan_min_s * 1e3:.1f})"),
        ("QEMU launch -> QMP connected", f"{_s(r.qmp_s)} s"),
        ("QEMU launch -> SeaBIOS hands over to the kernel (firmware; host clock)",
         f"{_s(r.kernel_s)} s"),
        ("**QEMU launch -> agent ready**", f"**{_s(r.ready_s)} s**"),
        ("guest uptime in the agent's hello (the guest's clock); when `/init` started",
         f"{_s(r.guest_uptime_s)} s; {_s(r.init_uptime_s)} s (the kernel ran "
         f"{_s(r.ready_s - r.kernel_s)} s of host time)"),
        ("the same controllers without keepers: launch -> kernel; -> ready (uptime)",
         f"{_s(r.bare_kernel_s)} s; {_s(r.bare_ready_s)} s ({_s(r.bare_guest_uptime_s)} s)"),
        (f"**what {r.keepers} keepers cost at boot**: in all (firmware + kernel)",
         f"**{_s(keeper_cost)} s** ({_s(r.kernel_s - r.bare_kernel_s)} + "
         f"{_s(keeper_cost - (r.kernel_s - r.bare_kernel_s))})"),
        ("QEMU VmRSS after boot, with keepers / without; VmHWM then, with / without",
         f"{_mib(r.rss_kib)} / {_mib(r.bare_rss_kib)} MiB; {_mib(r.hwm_kib)} / "
         f"{_mib(r.bare_hwm_kib)} MiB"),
        ("the guest enumerates: PCI bridge functions (planned); keepers before / after",
         f"{r.guest_bridges} ({r.bus_numbers}); {r.guest_keepers} / "
         f"{r.guest_keepers_after} (`lspci` walk {_s(r.lspci_s)} s)"),
        (f"**keeper release** (`unplug_batch` of {r.release_steps} steps, as `podplug run`)",
         f"**{_s(r.release_s)} s**"),
        (f"then the held-back module group(s) `{r.later_modules or '-'}` (`modules`)",
         f"{_s(r.later_modules_s)} s"),
        (f"{r.volumes}-volume batch: `carry_batch` ({r.batch_steps} QMP steps, placements "
         "read back)", f"{_s(r.carry_batch_s)} s"),
        ("then `wait-blks` until every disk is there", f"{_s(r.wait_blks_s)} s"),
        (f"**device_add burst -> all {r.volumes} visible** (per volume)",
         f"**{_s(r.visible_s)} s** ({r.visible_s / r.volumes * 1e3:.0f} ms)"),
        ("visible; with their own serial (`serial DISK`); distinct disks",
         f"{r.visible}; {r.serials_ok}; {r.distinct_disks} ({_s(r.serial_s)} s of calls)"),
        ("**`unplug_batch`** (every DEVICE_DELETED, then blockdev-del); the last event",
         f"**{_s(r.unplug_s)} s**; {_s(r.unplug_last_event_s)} s"),
        ("after it: virtio-blk functions in the guest; QEMU holds what it held before",
         f"{r.blk_left}; {'yes' if r.qemu_as_before else 'NO'}"),
        ("QEMU VmRSS / VmHWM after the batch",
         f"{_mib(r.rss_after_kib)} / {_mib(r.hwm_after_kib)} MiB"),
        (f"far ends {', '.join(r.edge_paths)}: burst -> visible; unplug",
         f"{_s(r.edge_visible_s)} s; {_s(r.edge_unplug_s)} s "
         f"({'each proven' if r.edge_ok else 'FAILED'})"),
        ("shutdown (`quit`, reap, remove the directory)", f"{_s(r.shutdown_s)} s"),
        ("left behind: QEMU processes; directories", f"{r.left_qemu}; {len(r.left_files)}"),
    ])
    as_is = table(("podplug's own guest (`-smp 1`, its command line)", "value"), [
        (f"{r.as_is_vfs} VF downstream ports ({r.as_is_hotpluggable} hot-pluggable), keepers: "
         "launch -> agent ready (guest uptime)",
         f"{_s(r.as_is_ready_s)} s ({_s(r.as_is_guest_uptime_s)} s)"),
        (f"... the {r.volumes}-volume batch: disks the guest got; with their own serial",
         f"{r.as_is_visible}; {r.as_is_serials_ok} (after the unplug: {r.as_is_blk_left} "
         "left)"),
        (f"{r.as_is_vfs + 1} VF downstream ports: boots?",
         "yes" if r.as_is_beyond_boots else
         f"no: the agent channel gone {_s(r.as_is_beyond_s)} s after launch"),
    ])
    lines = [
        f"Configuration: {r.config}. The pod: {r.vfs} hot VFIO groups, each one SR-IOV "
        f"VF-shaped function ({r.vf_bars}), and {r.volumes} virtio-blk volumes (1 MiB sparse "
        f"files). TCG, `-m {MEMORY_MIB}`, ACPI hot-plug; guest: {r.guest} (why: below).",
        "", ports, "",
        f"{r.controllers} controllers, {r.bus_numbers} of 255 bus numbers, {r.root_slots} of "
        f"29 root-bus slots; {r.keepers} window keepers ({size_text(r.keeper_bytes)} of PMR); "
        f"64-bit prefetchable windows asked of firmware: {_gib(r.pref64_bytes)}.",
        "", figures, "",
        f"QEMU said: {r.qemu_says or 'nothing'}", "",
        as_is, "",
    ]
    if r.as_is_error:
        lines += [f"There `wait-blks` ended with `{r.as_is_error.split(' below ')[0]} below "
                  f"...` ({r.volumes - max(0, r.as_is_visible)} paths); with `loglevel=7` the "
                  "console says `virtio_blk: probe of virtioN failed with error -28` for "
                  "each (seen while this benchmark was written).", ""]
    if r.as_is_beyond_console:
        lines += ["The guest console, one port beyond:", "",
                  *[f"    {line}" for line in r.as_is_beyond_console], ""]
    lines += [table(("planner budget", "most that plans", "the error one step beyond"),
                    [(a, b, f"`{c}`") for a, b, c in r.limits]), "",
              f"Not a budget of the planner: the guest's 64-bit address space. The same "
              f"topology with bench_plan.py's GPU (a 64 GiB BAR) instead of the VF plans, "
              f"asking {_gib(r.gpu_pref64_bytes)} of 64-bit windows (64 GiB keepers, 128 GiB "
              f"spare root ports) of a guest with {_gib(GUEST_HOLE64)} to give."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--vfs", type=int, default=None,
                        help="VF downstream ports of the main boot (default: the most that plan)")
    parser.add_argument("--no-bare", action="store_true", help="skip the keeper-less boot")
    parser.add_argument("--no-as-is", action="store_true",
                        help="skip the boots of podplug's own guest")
    args = parser.parse_args(argv)
    print(f"# podplug scale benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    qemu = subprocess.run([DEFAULT_QEMU, "--version"], capture_output=True, text=True,
                          check=True).stdout.splitlines()[0]
    print(f"\nmachine: {platform.machine()}, nproc {os.cpu_count()}, Python "
          f"{platform.python_version()}, {platform.platform()}; {qemu}; {git_state()}; "
          f"load average at start: {load()}\n", flush=True)
    image = build_image()
    with tempfile.TemporaryDirectory(prefix="podplug-bench-scale-") as tmp:
        result = run(image, Path(tmp), vfs=args.vfs, bare=not args.no_bare,
                     as_is=not args.no_as_is)
    left = live_qemu(os.getpid())
    print("## Scale, booted\n")
    print(markdown(result))
    print(f"\nload average at end: {load()}; benchmark wall time {result.wall_s:.0f} s; "
          f"after the run: {len(left)} QEMU children")
    return 1 if left or result.left_qemu or result.left_files else 0


if __name__ == "__main__":
    sys.exit(main())
