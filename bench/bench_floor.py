"""podplug beside its floor, in the same run: boot, hot-plug/unplug per target, batches.

Run by ``python3 bench/all.py`` (which writes ``BENCHMARKS.md`` and the plots); each
function here returns measurements, not text. The floor (:mod:`bench.floor`) is the same
work on the same kernel, initramfs bytes and QEMU command line with nothing of podplug in
it. podplug and its floor are measured in interleaved rounds (one of each per round, the
variants or targets in turn), so a burst of load on this shared machine hits both alike.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_run import (
    ACCEL,
    DEMO,
    HOTPLUG_CONFIG,
    MEMORY_MIB,
    WAIT_MS,
    Boot,
    Cycles,
    Host,
    booted,
    hot,
    inputs_for,
    spare,
    standin_cycle,
    volume_at,
    volume_cycle,
)
from bench.floor import FloorVm, floor_vm
from podplug.guest.agent_client import AgentClient
from podplug.image.build import GuestImage
from podplug.inputs.load import Inputs
from podplug.model.enums import Bucket, HotplugMode
from podplug.plan.model import DevicePlan, Plan, QemuDevice
from podplug.plan.plan import plan as make_plan
from podplug.plan.sequence import (
    Step,
    StepKind,
    hot_devices,
    plug_steps,
    release_steps,
    unplug_steps,
)
from podplug.plan.standin import stand_in, stand_ins
from podplug.run.session import guest_argv, release_window_keepers
from podplug.run.volumes import drive_for
from podplug.vm.hotplug import carry, carry_batch, unplug_batch
from podplug.vm.process import DEFAULT_QEMU, Vm
from podplug.vm.qmp import QmpSession, deleted_event_matches
from tests.support import config, inventory, request, scratch_volumes, vfio_group

#: modules the floor guest loads at boot for hot-plug work (its channel's come anyway)
FLOOR_DEVICE_MODULES = ("virtio_blk", "scsi_common", "scsi_mod", "virtio_scsi",
                        "crct10dif_common", "crct10dif_generic", "crc_t10dif", "crc64",
                        "crc64_rocksoft_generic", "crc64_rocksoft", "t10_pi", "sd_mod")
#: loaded once the window keepers are gone, as podplug does (plan.guest_needs.after_release)
FLOOR_NVME = "nvme_core,nvme"


@dataclass
class Pair:
    """One measured thing, podplug's samples beside the floor's (seconds)."""

    label: str
    podplug: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        if not self.podplug or not self.floor:
            return math.nan
        return statistics.median(self.podplug) / statistics.median(self.floor)


@dataclass
class BootSample:
    """Where one boot went (seconds from QEMU's start; NaN when not known)."""

    total: float
    pre_kernel: float  # QEMU start, firmware, kernel load: total - guest uptime at ready
    kernel: float  # guest uptime when /init starts
    init: float  # /init to the channel's modules loaded
    ready: float  # then to the agent's hello


@dataclass
class BootResult:
    pairs: list[Pair]
    breakdown: dict[str, list[BootSample]]  # "label / podplug|floor" -> samples


def _podplug_boot(b: Boot) -> BootSample:
    return BootSample(b.ready, b.ready - b.guest_uptime, b.init, b.modules - b.init,
                      b.guest_uptime - b.modules)


def _floor_boot(f: FloorVm) -> BootSample:
    return BootSample(f.boot_s, f.boot_s - f.uptime, math.nan, math.nan, math.nan)


def _tail(plan: Plan, image: GuestImage, root: Path,
          device: Callable[[QemuDevice], QemuDevice] | None) -> list[str]:
    return guest_argv(plan, image, root / "agent.sock", device=device, memory_mib=MEMORY_MIB,
                      accel=ACCEL)


def boot_variants(host: Host) -> list[tuple[str, Plan, Callable[[QemuDevice], QemuDevice]]]:
    """The seed's demo, 8 two-function GPU groups cold-plugged on root ports, and none."""
    demo = inputs_for(DEMO / "configuration.toml", host)
    eight = inventory(8, 2, blocks=0)
    return [
        ("seed demo",
         make_plan(demo.config, demo.request, demo.inventory), stand_ins(demo.inventory.functions)),
        ("8 two-function groups, cold",
         make_plan(config("vfio", cold="root-port", root_ports=8),
                   request(*(vfio_group(12 + g) for g in range(8))), eight),
         stand_ins(eight.functions)),
        ("no devices", make_plan(config("vfio"), request(), inventory(0, 0, blocks=0)),
         lambda q: q),
    ]


def bench_boot(rounds: int, image: GuestImage, host: Host, root: Path) -> BootResult:
    """Boot to a ready agent: podplug (``Vm`` + ``wait_ready``) and the floor, interleaved."""
    variants = boot_variants(host)
    pairs = [Pair(label) for label, _, _ in variants]
    breakdown: dict[str, list[BootSample]] = {}
    for _ in range(rounds):
        for pair, (label, plan, mapping) in zip(pairs, variants, strict=True):
            with booted(plan, image, root, device=mapping) as (_vm, _agent, b):
                pair.podplug.append(b.ready)
                breakdown.setdefault(f"{label} / podplug", []).append(_podplug_boot(b))
            with floor_vm(DEFAULT_QEMU, ACCEL, _tail(plan, image, root, mapping), image,
                          root) as f:
                pair.floor.append(f.boot_s)
                breakdown.setdefault(f"{label} / floor", []).append(_floor_boot(f))
    return BootResult(pairs, breakdown)


def release_keepers(plan: Plan, vm: Vm, agent: AgentClient, floor: FloorVm,
                    qmp: QmpSession, mapping: Callable[[QemuDevice], QemuDevice]) -> None:
    """Unplug the window keepers of ``plan``'s downstream ports in both VMs, as ``podplug
    run`` does once the guest is up (set-up, not timed)."""
    release_window_keepers(vm, agent, plan, mapping)
    steps = release_steps(plan)
    if steps:
        unplug_batch(qmp, steps)  # type: ignore[arg-type]  # the same calls, on the floor
    floor.call("load", FLOOR_NVME)


# --- hot-plug per target -----------------------------------------------------------------------

@contextlib.contextmanager
def floor_with_qmp(plan: Plan, image: GuestImage, root: Path,
                   device: Callable[[QemuDevice], QemuDevice] | None = None
                   ) -> Iterator[tuple[FloorVm, QmpSession]]:
    with floor_vm(DEFAULT_QEMU, ACCEL, _tail(plan, image, root, device), image, root,
                  modules=FLOOR_DEVICE_MODULES) as f, QmpSession("floor") as qmp:
        qmp.connect(str(f.workdir / "qmp.sock"), 10.0)
        yield f, qmp


def _floor_del(qmp: QmpSession, ids: Sequence[str], timeout: float = 15.0) -> float:
    """``device_del`` of ``ids[0]`` (retried while the guest is busy, as QEMU requires) to
    the DEVICE_DELETED of every id."""
    started = time.monotonic()
    pending = set(ids)
    with qmp.watch("DEVICE_DELETED",
                   match=lambda ev: any(deleted_event_matches(ev, i) for i in ids)) as watch:
        while True:
            try:
                qmp.execute("device_del", {"id": ids[0]})
                break
            except Exception as exc:
                if "guest is busy" not in str(exc):
                    raise
                time.sleep(0.05)
        while pending:
            event = watch.wait(timeout)
            pending -= {i for i in ids if deleted_event_matches(event, i)}
    return time.monotonic() - started


def floor_cycle(f: FloorVm, qmp: QmpSession, steps: Sequence[Step], glob: str, count: int,
                into: Cycles) -> None:
    """The same QMP steps as podplug's cycle, sent raw; visible = ``count`` more entries of
    ``glob`` in the floor guest's sysfs; unplug = device_del -> every DEVICE_DELETED."""
    adds = [s for s in steps if s.kind is StepKind.DEVICE_ADD]
    for step in steps:
        if step.kind is not StepKind.DEVICE_ADD:
            qmp.execute(step.kind.value, step.arguments)
    before = int(f.call("count", glob))
    t0 = time.monotonic()
    for step in adds:
        qmp.execute("device_add", step.arguments)
    f.call("wait", glob, str(before + count))
    into.add.append(time.monotonic() - t0)
    f.call("settle")  # untimed: an nvme stand-in's probe must end before its removal
    into.unplug.append(_floor_del(qmp, [adds[-1].subject, *[s.subject for s in adds[:-1]]]))
    for step in steps:
        if step.kind is StepKind.BLOCKDEV_ADD:
            qmp.execute("blockdev-del", {"node-name": step.subject})


@dataclass
class Target:
    label: str
    podplug: Cycles
    floor: Cycles
    podplug_cycle: Callable[[Vm, object, Cycles], None]
    floor_cycle: Callable[[FloorVm, QmpSession, Cycles], None]


def _volume_target(label: str, device: DevicePlan, inputs: Inputs, glob: str) -> Target:
    drive = lambda n: drive_for(n, inputs.inventory, fake_host=True, read_only=False)  # noqa: E731
    steps = plug_steps([device], drive=drive)
    return Target(label, Cycles(label), Cycles(label),
                  lambda vm, agent, into: volume_cycle(vm, agent, device, inputs, into),  # type: ignore[arg-type]
                  lambda f, qmp, into: floor_cycle(f, qmp, steps, glob, 1, into))


def _standin_target(label: str, device: DevicePlan) -> Target:
    steps = plug_steps([device], device=stand_in)
    return Target(label, Cycles(label), Cycles(label),
                  lambda vm, agent, into: standin_cycle(vm, agent, device, into),  # type: ignore[arg-type]
                  lambda f, qmp, into: floor_cycle(f, qmp, steps, "/sys/bus/pci/devices/*",
                                                   len(device.functions), into))


def hotplug_targets(plan: Plan, inputs: Inputs, mode: HotplugMode) -> list[Target]:
    volume, gpu = hot(plan, Bucket.HOT_BLOCK), hot(plan, Bucket.HOT_VFIO)
    blk = "/sys/block/vd*"
    on_root_port = volume_at(volume, spare(plan, "rp")) if mode is HotplugMode.ACPI else volume
    targets = [_volume_target("virtio-blk, root port", on_root_port, inputs, blk),
               _volume_target("virtio-blk, switch downstream port",
                              volume_at(volume, spare(plan, "swdp")), inputs, blk)]
    if mode is HotplugMode.ACPI:
        targets.append(_volume_target("virtio-blk, pci-bridge slot", volume, inputs, blk))
    targets.append(_standin_target("VFIO stand-in (2 functions), root port", gpu))
    return targets


def bench_hotplug(mode: HotplugMode, cycles: int, image: GuestImage, inputs: Inputs,
                  root: Path, settle: float = 0.3) -> list[Target]:
    """One podplug VM and one floor VM of the same plan, alive together; per round one cycle
    of each target on each, in turn."""
    plan = make_plan(inputs.config, inputs.request, inputs.inventory, hotplug=mode)
    targets = hotplug_targets(plan, inputs, mode)
    mapping = stand_ins(inputs.inventory.functions)
    with booted(plan, image, root, device=mapping) as (vm, agent, _b), \
            floor_with_qmp(plan, image, root, mapping) as (f, qmp):
        release_keepers(plan, vm, agent, f, qmp, mapping)
        for _ in range(cycles):
            for t in targets:
                t.podplug_cycle(vm, agent, t.podplug)
                time.sleep(settle)
                t.floor_cycle(f, qmp, t.floor)
                time.sleep(settle)
    return targets


SCSI_CONFIG = HOTPLUG_CONFIG.replace('block_device_driver = "virtio-blk"',
                                     'block_device_driver = "virtio-scsi"')


def scsi_cycle(vm: Vm, agent: AgentClient, device: DevicePlan, inputs: Inputs,
               into: Cycles) -> None:
    """A SCSI LUN: scsi-hd onto the plan's virtio-scsi controller (``carry_batch``) ->
    ``blk-of-scsi`` finds the disk; device_del -> DEVICE_DELETED."""
    drive = lambda n: drive_for(n, inputs.inventory, fake_host=True, read_only=False)  # noqa: E731
    assert device.scsi_address is not None
    t0 = time.monotonic()
    carry_batch(vm, plug_steps([device], drive=drive))
    into.qmp.append(time.monotonic() - t0)
    agent.call("blk-of-scsi", device.scsi_address, WAIT_MS, timeout=15.0)
    into.add.append(time.monotonic() - t0)
    for step in unplug_steps([device]):
        r = carry(vm, step)
        if step.kind is StepKind.DEVICE_DEL:
            into.unplug.append(r.seconds)


def bench_scsi(cycles: int, image: GuestImage, host: Host, root: Path,
               settle: float = 0.3) -> Target:
    cfg = root / "scsi.toml"
    cfg.write_text(SCSI_CONFIG)
    inputs = inputs_for(cfg, host)
    plan = make_plan(inputs.config, inputs.request, inputs.inventory)
    volume = hot(plan, Bucket.HOT_BLOCK)
    drive = lambda n: drive_for(n, inputs.inventory, fake_host=True, read_only=False)  # noqa: E731
    steps = plug_steps([volume], drive=drive)
    target = Target("virtio-scsi LUN (scsi-hd on the controller)", Cycles("scsi"), Cycles("scsi"),
                    lambda vm, agent, into: scsi_cycle(vm, agent, volume, inputs, into),
                    lambda f, qmp, into: floor_cycle(f, qmp, steps, "/sys/block/sd*", 1, into))
    mapping = stand_ins(inputs.inventory.functions)
    with booted(plan, image, root, device=mapping) as (vm, agent, _b), \
            floor_with_qmp(plan, image, root, mapping) as (f, qmp):
        release_keepers(plan, vm, agent, f, qmp, mapping)
        for _ in range(cycles):
            target.podplug_cycle(vm, agent, target.podplug)
            time.sleep(settle)
            target.floor_cycle(f, qmp, target.floor)
            time.sleep(settle)
    return target


# --- batches ----------------------------------------------------------------------------------

@dataclass
class BatchResult:
    size: int
    plug: Pair  # request -> every volume visible in the guest
    unplug: Pair  # -> every DEVICE_DELETED and blockdev-del


def bench_batches(sizes: Sequence[int], rounds: int, image: GuestImage,
                  root: Path) -> list[BatchResult]:
    """Batches of ``sizes`` volumes: podplug's ``carry_batch`` + one ``wait-blks``, and its
    ``unplug_batch``; the floor sends the same commands pipelined and polls sysfs."""
    largest = max(sizes)
    plan, all_steps = scratch_volumes(root, largest, bridges=3)
    devices = hot_devices(plan)
    results = [BatchResult(n, Pair(f"{n} volumes: plug"), Pair(f"{n} volumes: unplug"))
               for n in sizes]
    with booted(plan, image, root) as (vm, agent, _b), \
            floor_with_qmp(plan, image, root) as (f, qmp):
        for _ in range(rounds):
            for r in results:
                chosen = devices[:r.size]
                names = {d.blockdev.node_name for d in chosen if d.blockdev is not None}
                ids = {d.qemu.id for d in chosen if d.qemu is not None}
                steps = [s for s in all_steps if s.subject in names | ids]
                paths = [str(d.guest_paths[0]) for d in chosen]
                t0 = time.monotonic()
                carry_batch(vm, steps)
                agent.call("wait-blks", "60000", *paths, timeout=90.0)
                r.plug.podplug.append(time.monotonic() - t0)
                t0 = time.monotonic()
                unplug_batch(vm, unplug_steps(chosen))
                r.unplug.podplug.append(time.monotonic() - t0)
                time.sleep(0.3)
                t0 = time.monotonic()
                qmp.execute_many([(s.kind.value, s.arguments) for s in steps])
                f.call("wait", "/sys/block/vd*", str(r.size), timeout=90.0)
                r.plug.floor.append(time.monotonic() - t0)
                t0 = time.monotonic()
                with qmp.watch("DEVICE_DELETED") as watch:
                    qmp.execute_many([("device_del", {"id": i}) for i in sorted(ids)])
                    pending = set(ids)
                    while pending:
                        ev = watch.wait(60.0)
                        pending -= {i for i in pending if deleted_event_matches(ev, i)}
                qmp.execute_many([("blockdev-del", {"node-name": n}) for n in sorted(names)])
                r.unplug.floor.append(time.monotonic() - t0)
                time.sleep(0.3)
    return results
