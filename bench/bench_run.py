"""Run benchmark for podplug, run by hand (not a test): ``python3 bench/bench_run.py``.

Boots real QEMU VMs under TCG with podplug's own pieces (``load_inputs``/``plan``,
``guest_argv``, ``Vm``, ``AgentClient``, ``plug_steps``/``unplug_steps``/``carry``) and
prints markdown tables (copy them into BENCHMARKS.md). Every figure comes from this one run:

1. the guest image: warm ``build_image()`` (cached);
2. boot of the demo topology: QEMU launch -> QMP up -> guest agent ready (``wait_ready``);
3. hot-plug of a virtio-blk volume: ``device_add`` sent -> the agent's ``blk-of-pci PATH``
   answers, and ``device_del`` -> ``DEVICE_DELETED``, on a root port, a switch downstream
   port and a pci-bridge slot with ACPI hot-plug, and on a root port and a switch downstream
   port with native PCIe hot-plug (pci-bridge slots cannot hot-plug there); the agent's own
   round trip on a device already present;
4. the emulated VFIO stand-in (two-function nvme slot, ``podplug.plan.standin``) on a root
   port: both functions added -> ``wait-pci PATH.0`` and ``PATH.1`` answer; and unplug;
5. the whole ``podplug run`` demo as a subprocess, with the phase timings of its ``--json``.

The targets of one VM are measured in interleaved rounds (one cycle of each target per
round), so a burst of load on this shared machine hits them alike. Every VM is inside
``with Vm(...)``: it is stopped and its directory removed on every exit path, errors included;
the script checks at the end that no QEMU child and no temporary directory is left.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # ``python3 bench/bench_run.py`` puts bench/ first, not REPO
    sys.path.insert(0, str(REPO))

from bench.bench_plan import git_state, load, podplug_exe, table  # noqa: E402
from podplug.errors import QmpCommandError  # noqa: E402
from podplug.guest.agent_client import AgentClient  # noqa: E402
from podplug.host.fakesysfs import demo_host, write_fake_sysfs  # noqa: E402
from podplug.image.build import GuestImage, build_image  # noqa: E402
from podplug.inputs.load import Inputs, load_inputs  # noqa: E402
from podplug.model.enums import Bucket, HotplugMode  # noqa: E402
from podplug.plan.model import DevicePlan, Plan, QemuDevice  # noqa: E402
from podplug.plan.plan import plan as make_plan  # noqa: E402
from podplug.plan.sequence import (  # noqa: E402
    Step,
    StepKind,
    plug_steps,
    unplug_steps,
)
from podplug.plan.standin import stand_in  # noqa: E402
from podplug.plan.topology import Target  # noqa: E402
from podplug.run.session import guest_argv  # noqa: E402
from podplug.run.volumes import drive_for  # noqa: E402
from podplug.vm.hotplug import carry, carry_batch  # noqa: E402
from podplug.vm.process import DEFAULT_QEMU, Accel, Vm  # noqa: E402
from podplug.vm.qmp import DEFAULT_REPLY_TIMEOUT_S  # noqa: E402
from tests.support import live_qemu  # noqa: E402

DEMO = REPO / "podplug" / "demo"
ACCEL = Accel.TCG
MEMORY_MIB = 512  # RunOptions' default
READY_TIMEOUT_S = 60.0
WAIT_MS = "10000"  # the agent's own bound on one wait (blk-of-pci, wait-pci)
SETTLE_S = 0.5  # pause between two cycles on one VM (not timed)
LEFT_BEHIND: list[str] = []  # QEMU processes or VM directories a stopped Vm left behind

#: the hot-plug VM: the demo's GPU group hot-plugged on a root port (rp0), one spare root port
#: (rp1), a switch with two spare downstream ports, one pci-bridge; the volume /dev/xda is
#: planned on a bridge slot (ACPI) or on a root port of its own (native).
HOTPLUG_CONFIG = """\
[hypervisor.qemu]
machine_type = "q35"
block_device_driver = "virtio-blk"
cold_plug_vfio = "no-port"
hot_plug_vfio = "root-port"
pcie_root_port = 2
pcie_switch_port = 2
default_bridges = 1

[runtime]
vfio_mode = "vfio"
"""


@dataclass(frozen=True)
class Spread:
    """Timings of one measured thing, in seconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def cells(self, scale: float = 1.0, digits: int = 3) -> tuple[str, str, int]:
        """median, min-max and the number of runs, in ``scale`` units."""
        lo, hi = min(self.samples) * scale, max(self.samples) * scale
        return (f"{self.median * scale:.{digits}f}", f"{lo:.{digits}f}-{hi:.{digits}f}",
                len(self.samples))

    def raw(self) -> str:
        return " ".join(f"{s:.3f}" for s in self.samples)


def spread(samples: Sequence[float]) -> Spread:
    return Spread(tuple(samples))


# --- inputs and VMs ------------------------------------------------------------------------

@dataclass
class Host:
    """A FAKE host sysfs (the demo host) with its loop device backed by a sparse file."""

    sysfs: Path
    disk: Path


def fake_host(tmp: Path) -> Host:
    disk = tmp / "xda.img"
    with open(disk, "wb") as handle:
        handle.truncate(64 << 20)  # as the CLI demo
    return Host(write_fake_sysfs(tmp / "sys", demo_host(str(disk))), disk)


def inputs_for(config: Path, host: Host) -> Inputs:
    return load_inputs(config, DEMO / "spec.json", cdi_dirs=(), sysfs_root=host.sysfs)


@dataclass(frozen=True)
class Boot:
    qmp: float  # Popen -> QMP connected (Vm.launch)
    ready: float  # Popen -> agent answered a ping
    guest_uptime: float  # the guest kernel's uptime in that ping reply
    init: float  # guest uptime when /init (the agent) started (its serial console line)
    modules: float  # guest uptime when /init had loaded the "boot" module group


def serial_uptime(serial: str, what: str) -> float:
    """``podplug-agent: <what> at uptime S s`` from the guest console, or NaN."""
    found = re.search(rf"{what} at uptime ([0-9.]+) s", serial)
    return float(found.group(1)) if found else math.nan


@contextlib.contextmanager
def booted(plan: Plan, image: GuestImage, root: Path,
           device: Callable[[QemuDevice], QemuDevice] = stand_in,
           ) -> Iterator[tuple[Vm, AgentClient, Boot]]:
    """A running VM of ``plan`` (VFIO as emulated stand-ins) with its agent ready; stopped and
    its directory (below ``root``) removed on every exit path."""
    with tempfile.TemporaryDirectory(prefix="vm-", dir=root) as tmp:
        sock = Path(tmp) / "agent.sock"
        argv = guest_argv(plan, image, sock, device=device,
                          memory_mib=MEMORY_MIB, accel=ACCEL)
        started = time.monotonic()
        with Vm(argv, accel=ACCEL, tmp_parent=tmp, name="bench") as vm:
            qmp = time.monotonic() - started
            with contextlib.closing(AgentClient.connect(sock)) as agent:
                pong = agent.wait_ready(READY_TIMEOUT_S)
                ready = time.monotonic() - started
                serial = vm.serial_log.read_text(errors="replace")
                yield vm, agent, Boot(qmp, ready, float(pong.fields.get("uptime", "nan")),
                                      serial_uptime(serial, "init"),
                                      serial_uptime(serial, "modules loaded"))
        if vm.alive:
            LEFT_BEHIND.append(f"QEMU pid {vm.pid}")
        LEFT_BEHIND.extend(p.name for p in Path(tmp).glob("podplug-vm-*"))


# --- 1. guest image --------------------------------------------------------------------------

def bench_image(runs: int) -> tuple[str, GuestImage]:
    t0 = time.perf_counter()
    image = build_image()  # builds the image only if the cache lacks it
    first = time.perf_counter() - t0
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        build_image()
        samples.append(time.perf_counter() - t0)
    med, span, n = spread(samples).cells(1e3, 1)
    text = table(("`build_image()`", "median ms", "min-max ms", "runs"),
                 [("warm (cached)", med, span, n)])
    size = image.kernel.stat().st_size + image.initramfs.stat().st_size
    return (f"{text}\n\nfirst call of this process (warm-up): {first * 1e3:.1f} ms; "
            f"kernel + initramfs {size / (1 << 20):.1f} MiB ({image.kernel.name}, "
            f"{image.initramfs.name})"), image


# --- 2. boot ---------------------------------------------------------------------------------

def bench_boot(runs: int, image: GuestImage, host: Host, root: Path) -> str:
    inputs = inputs_for(DEMO / "configuration.toml", host)
    plan = make_plan(inputs.config, inputs.request, inputs.inventory)
    boots: list[Boot] = []
    stops: list[float] = []
    for _ in range(runs):
        with booted(plan, image, root) as (vm, _agent, boot):
            boots.append(boot)
        assert vm.stop_report is not None
        stops.append(vm.stop_report.seconds)
    rows = [
        ("QEMU launch -> QMP connected (`Vm.launch`)", *spread([b.qmp for b in boots]).cells()),
        ("QMP connected -> agent ready (`wait_ready`; run's `boot` phase)",
         *spread([b.ready - b.qmp for b in boots]).cells()),
        ("**QEMU launch -> agent ready**", *spread([b.ready for b in boots]).cells()),
        ("guest uptime when `/init` starts (kernel boot)",
         *spread([b.init for b in boots]).cells(digits=2)),
        ("guest uptime when `/init` has loaded the boot modules",
         *spread([b.modules for b in boots]).cells(digits=2)),
        ("guest uptime in the ready ping",
         *spread([b.guest_uptime for b in boots]).cells(digits=2)),
        ("shutdown (`quit`, reap, remove the directory)", *spread(stops).cells()),
    ]
    controllers = ", ".join(c.id for c in plan.topology.controllers)
    return (table(("boot of the demo topology (TCG, -m 512, -smp 1)", "median s", "min-max s",
                   "runs"), rows)
            + f"\n\ntopology: {controllers}; cold stand-ins for GPU group 12 (2 functions), "
            f"guest IOMMU {plan.guest_iommu}\n\nraw launch -> ready: "
            f"{spread([b.ready for b in boots]).raw()}")


# --- 3./4. hot-plug --------------------------------------------------------------------------

@dataclass
class Cycles:
    """The cycles of one target: ``add`` is device_add sent -> visible in the guest."""

    label: str
    qmp: list[float] = field(default_factory=list)  # device_add(s) + QOM placement check
    add: list[float] = field(default_factory=list)
    unplug: list[float] = field(default_factory=list)  # device_del -> DEVICE_DELETED (all)
    accepted: list[float] = field(default_factory=list)  # until QEMU accepts device_del
    busy: int = 0  # device_del refused with "guest is busy" (carry retries every 0.5 s)


def volume_at(device: DevicePlan, target: Target) -> DevicePlan:
    """The planned volume moved to ``target`` (same device, drive and id; new bus/addr)."""
    assert device.qemu is not None
    props = dict(device.qemu.props)
    props.update(bus=target.bus, addr=f"{target.addr:02x}.0")
    return replace(device, qemu=QemuDevice(device.qemu.driver, tuple(props.items())),
                   guest_paths=(target.path,))


def volume_cycle(vm: Vm, agent: AgentClient, device: DevicePlan, inputs: Inputs,
                 into: Cycles) -> None:
    """blockdev-add + device_add as ``podplug run`` sends them (``carry_batch``: pipelined,
    placement read back) -> the agent's ``wait-blks`` finds the disk; device_del ->
    DEVICE_DELETED; blockdev-del (untimed)."""
    path = str(device.guest_paths[0])
    steps = plug_steps([device], drive=lambda n: drive_for(n, inputs.inventory, fake_host=True,
                                                           read_only=False))
    t0 = time.monotonic()
    carry_batch(vm, steps)
    into.qmp.append(time.monotonic() - t0)
    seen = agent.call("wait-blks", WAIT_MS, path, timeout=15.0)
    into.add.append(time.monotonic() - t0)
    assert seen.lines, f"no block device below {path}"
    unplug(vm, unplug_steps([device]), into)


def standin_cycle(vm: Vm, agent: AgentClient, device: DevicePlan, into: Cycles) -> None:
    """Both stand-in functions added in one pipelined batch (function 1, then 0) -> one
    ``wait-pcis`` for both; device_del of function 0 -> DEVICE_DELETED of both."""
    steps = plug_steps([device], device=stand_in)
    t0 = time.monotonic()
    carry_batch(vm, steps)
    into.qmp.append(time.monotonic() - t0)
    agent.call("wait-pcis", WAIT_MS, *(str(f.guest_path) for f in device.functions),
               timeout=15.0)
    into.add.append(time.monotonic() - t0)
    agent.call("modules", "nvme")  # untimed: the stand-ins' nvme probes end before removal
    unplug(vm, unplug_steps([device]), into)


def unplug(vm: Vm, steps: Sequence[Step], into: Cycles) -> None:
    for step in steps:
        if step.kind is not StepKind.DEVICE_DEL:
            carry(vm, step)
            continue
        with busy_refusals(vm) as seen:
            result = carry(vm, step)
        into.unplug.append(result.seconds)
        into.accepted.append(seen[-1] - seen[0])
        into.busy += len(seen) - 2


@contextlib.contextmanager
def busy_refusals(vm: Vm) -> Iterator[list[float]]:
    """Times (monotonic) of the start, of each "guest is busy" refusal of ``device_del`` and
    of the accepted ``device_del``, seen by wrapping this Vm's ``execute`` (bench only)."""
    seen = [time.monotonic()]
    execute = vm.execute

    def counting(command: str, arguments: Mapping[str, object] | None = None,
                 timeout: float = DEFAULT_REPLY_TIMEOUT_S) -> object:
        try:
            reply = execute(command, arguments, timeout)
        except QmpCommandError as exc:
            if command == "device_del" and "guest is busy" in exc.desc:
                seen.append(time.monotonic())
            raise
        if command == "device_del":
            seen.append(time.monotonic())
        return reply

    setattr(vm, "execute", counting)  # noqa: B010 (an instance attribute, removed below)
    try:
        yield seen
    finally:
        delattr(vm, "execute")


def hot(plan: Plan, bucket: Bucket) -> DevicePlan:
    (device,) = plan.in_bucket(bucket)
    return device


def spare(plan: Plan, bus_prefix: str) -> Target:
    return next(t for t in plan.topology.spare_targets if t.bus.startswith(bus_prefix))


def bench_hotplug(mode: HotplugMode, cycles: int, image: GuestImage, inputs: Inputs,
                  agent_runs: int, root: Path) -> tuple[list[Cycles], Boot, dict[str, Spread]]:
    """One VM in ``mode``; ``cycles`` rounds over its targets; agent round trips at the end."""
    plan = make_plan(inputs.config, inputs.request, inputs.inventory, hotplug=mode)
    volume, gpu = hot(plan, Bucket.HOT_BLOCK), hot(plan, Bucket.HOT_VFIO)
    planned = volume.qemu.bus if volume.qemu is not None else "?"
    targets: list[tuple[Cycles, Callable[[Vm, AgentClient, Cycles], None]]] = []

    def on(label: str, device: DevicePlan) -> None:
        targets.append((Cycles(f"{label}: {device.qemu.bus if device.qemu else '?'} "
                               f"{device.guest_paths[0]}"),
                        lambda vm, agent, into: volume_cycle(vm, agent, device, inputs, into)))

    if mode is HotplugMode.ACPI:
        assert planned.startswith("pci-bridge"), planned
        on("virtio-blk, root port", volume_at(volume, spare(plan, "rp")))
        on("virtio-blk, switch downstream port", volume_at(volume, spare(plan, "swdp")))
        on("virtio-blk, pci-bridge slot (as planned)", volume)
    else:
        assert planned.startswith("rp"), planned  # native: never on a bridge slot
        on("virtio-blk, root port (as planned)", volume)
        on("virtio-blk, switch downstream port", volume_at(volume, spare(plan, "swdp")))
    targets.append((Cycles(f"VFIO stand-in, 2-function slot, root port: "
                           f"{gpu.functions[0].qemu.bus} {gpu.guest_paths[0]}"),
                    lambda vm, agent, into: standin_cycle(vm, agent, gpu, into)))
    with booted(plan, image, root) as (vm, agent, boot):
        for _ in range(cycles):
            for into, cycle in targets:
                cycle(vm, agent, into)
                time.sleep(SETTLE_S)
        trips = agent_round_trips(vm, agent, volume, inputs, agent_runs)
    return [c for c, _ in targets], boot, trips


def agent_round_trips(vm: Vm, agent: AgentClient, volume: DevicePlan, inputs: Inputs,
                      runs: int) -> dict[str, Spread]:
    """The agent's own answer time with the volume present (nothing to wait for)."""
    path = str(volume.guest_paths[0])
    steps = plug_steps([volume], drive=lambda n: drive_for(n, inputs.inventory, fake_host=True,
                                                read_only=False))
    for step in steps:
        carry(vm, step)
    agent.call("blk-of-pci", path, WAIT_MS)
    calls: dict[str, Callable[[], object]] = {
        "`ping`": lambda: agent.call("ping"),
        f"`blk-of-pci {path}` (present)": lambda: agent.call("blk-of-pci", path),
        f"`wait-pci {path} 0` (present)": lambda: agent.call("wait-pci", path, "0"),
    }
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            t0 = time.monotonic()
            call()
            samples[name].append(time.monotonic() - t0)
    unplug(vm, unplug_steps([volume]), Cycles("round-trip volume"))
    return {name: spread(v) for name, v in samples.items()}


def hotplug_table(mode: HotplugMode, results: list[Cycles]) -> str:
    rows = []
    for c in results:
        rows.append((c.label, *spread(c.add).cells(), *spread(c.qmp).cells()[:1],
                     *spread(c.unplug).cells()[:2], spread(c.accepted).cells()[0], c.busy))
    return table((f"{mode.value} hot-plug, target", "add -> visible median s",
                  "min-max s", "runs", "QMP part median s", "del -> DEVICE_DELETED median s",
                  "min-max s", "del accepted after median s", "busy refusals"), rows)


def raw_lines(mode: HotplugMode, results: list[Cycles]) -> list[str]:
    return [f"- {mode.value}, {c.label}: add {spread(c.add).raw()}; del {spread(c.unplug).raw()}"
            f" (accepted after {spread(c.accepted).raw()})" for c in results]


# --- 5. the whole podplug run ----------------------------------------------------------------

PHASES = ("image", "vm_total", "boot", "hotplug", "verify", "unplug")


def bench_cli(runs: int, tmpdir: Path) -> str:
    """``podplug run`` with ``TMPDIR=tmpdir``, so what it leaves there can be checked."""
    exe, env = podplug_exe(), {**os.environ, "TMPDIR": str(tmpdir)}
    walls: list[float] = []
    timings: dict[str, list[float]] = {p: [] for p in PHASES}
    devices: dict[str, list[float]] = {}
    accels = set()
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run([exe, "run", "--json"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600, check=False)
        walls.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"podplug run failed ({done.returncode}): {done.stderr[-2000:]}")
        report = json.loads(done.stdout)
        accels.add(report["accel"])
        for phase in PHASES:
            timings[phase].append(report["timings"][phase])
        for row in report["devices"]:
            devices.setdefault(row["path"], []).append(row["seconds"])
    rows: list[tuple[object, ...]] = [
        ("**whole process** (`podplug run --json`, wall)", *spread(walls).cells())]
    rows += [(f"phase `{p}`", *spread(v).cells()) for p, v in timings.items()]
    rest = [walls[i] - timings["image"][i] - timings["vm_total"][i] for i in range(runs)]
    rows.append(("wall - image - vm_total (interpreter, imports, plan, fake host)",
                 *spread(rest).cells()))
    rows += [(f"row `{path}` (its hot-plug + proof)", *spread(v).cells())
             for path, v in devices.items()]
    return (table(("`podplug run` demo (subprocess)", "median s", "min-max s", "runs"), rows)
            + f"\n\naccelerator chosen: {', '.join(sorted(accels))} (`--accel auto`, the "
            f"default); raw wall: {spread(walls).raw()}")


# --- leftovers -------------------------------------------------------------------------------

def leftovers(root: Path) -> list[str]:
    """VM directories (kept by :func:`booted`) and what ``podplug run`` left in its TMPDIR."""
    cli = [f"TMPDIR/{p.name}" for p in (root / "cli-tmp").glob("*")]
    return sorted(LEFT_BEHIND + cli)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--image-runs", type=int, default=5)
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--acpi-cycles", type=int, default=5)
    parser.add_argument("--native-cycles", type=int, default=3)
    parser.add_argument("--agent-runs", type=int, default=20)
    parser.add_argument("--cli-runs", type=int, default=3)
    args = parser.parse_args(argv)

    started = time.monotonic()
    print(f"# podplug run benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    qemu = subprocess.run([DEFAULT_QEMU, "--version"], capture_output=True, text=True,
                          check=True).stdout.splitlines()[0]
    print(f"\nmachine: {platform.machine()}, nproc {os.cpu_count()}, "
          f"Python {platform.python_version()} ({sys.executable}), {platform.platform()}; "
          f"{qemu}; accelerator {ACCEL.value}\n")
    print(f"code: {git_state()}; load average at start: {load()}\n")

    print("## 1. Guest image\n")
    text, image = bench_image(args.image_runs)
    print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="podplug-bench-") as tmp:
        root = Path(tmp)
        host = fake_host(root)
        print(f"\n## 2. Boot: demo topology (load average before: {load()})\n")
        print(bench_boot(args.boots, image, host, root), flush=True)

        config = root / "configuration.toml"
        config.write_text(HOTPLUG_CONFIG)
        inputs = inputs_for(config, host)
        raw: list[str] = []
        for mode, cycles in ((HotplugMode.ACPI, args.acpi_cycles),
                             (HotplugMode.NATIVE, args.native_cycles)):
            print(f"\n## 3./4. Hot-plug, {mode.value} (load average before: {load()})\n")
            results, boot, trips = bench_hotplug(mode, cycles, image, inputs, args.agent_runs,
                                                 root)
            print(hotplug_table(mode, results))
            print(f"\n(this VM booted to agent ready in {boot.ready:.2f} s)\n")
            print(table((f"agent round trip ({mode.value} VM)", "median ms", "min-max ms",
                         "runs"), [(name, *s.cells(1e3, 1)) for name, s in trips.items()]),
                  flush=True)
            raw += raw_lines(mode, results)
        print("\nRaw hot-plug samples (s, in cycle order):\n")
        print("\n".join(raw))

        print(f"\n## 5. Whole `podplug run` demo (load average before: {load()})\n")
        (root / "cli-tmp").mkdir()
        print(bench_cli(args.cli_runs, root / "cli-tmp"))
        left = leftovers(root)

    qemu_left = live_qemu(os.getpid())
    print(f"\nleft behind: {len(qemu_left)} QEMU child processes; {len(left)} files or "
          f"directories of VMs or `podplug run` {left or ''}")
    print(f"load average at end: {load()}; benchmark wall time "
          f"{time.monotonic() - started:.0f} s")
    return 1 if qemu_left or left else 0


if __name__ == "__main__":
    sys.exit(main())
