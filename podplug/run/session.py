"""``podplug run``: the single wiring point that carries a plan out and proves it.

QEMU binary and its features -> plan (with the aio the binary can use here; refused if it
needs a feature the binary lacks) -> guest image -> accelerator -> boot QEMU with the
planned topology and cold-plugged devices -> guest agent ready -> read back where QEMU put
the cold devices -> hot-plug the rest (rolled back as a batch on failure) -> prove each
device in the guest -> unplug -> shut down -> report. Every process, socket and temporary
directory is gone on every exit path (the VM's own lifecycle guarantees it; this module
owns one temporary directory).

Where this machine cannot be real, the substitute is announced: without a host IOMMU the
VFIO functions are emulated stand-ins (:mod:`podplug.plan.standin`) on the planned ports.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from podplug.errors import PodplugError, RunFailed, VmError
from podplug.guest.agent_client import AgentClient
from podplug.host.volumes import VolumeFacts, read_volume
from podplug.image.build import GuestImage, build_image
from podplug.image.cache import default_cache_dir
from podplug.inputs.load import Inputs
from podplug.interrupts import until_signal
from podplug.model.enums import Bucket, HotplugMode
from podplug.model.host import HostInventory
from podplug.model.qemu import QemuFeature
from podplug.plan.guest_needs import after_release, cmdline_word, guest_module_groups
from podplug.plan.model import BlockdevNode, DevicePlan, Plan, QemuDevice
from podplug.plan.needs import qemu_needs
from podplug.plan.plan import plan as make_plan
from podplug.plan.sequence import (
    Step,
    StepKind,
    hot_devices,
    plug_steps,
    release_steps,
    unplug_steps,
)
from podplug.plan.standin import STANDIN_VENDOR_DEVICE, stand_ins
from podplug.plan.windows import DEFAULT_SPARE_WINDOW, Window
from podplug.render.argv import render_argv
from podplug.run.backends import Backend, plan_backends
from podplug.run.confine import UNPRIVILEGED_USER, Account, confinement_for
from podplug.run.handover import BootFiles, boot_files, fdset_drives, handed_sockets
from podplug.run.report import DeviceRow, RunReport
from podplug.run.verify import GuestProver
from podplug.run.volumes import Depth, VolumePolicy, depth_for, drive_for
from podplug.vm.accel import choose_accel, probe_kvm
from podplug.vm.hotplug import UNPLUG_TIMEOUT_S, StepResult, carry, carry_batch, unplug_batch
from podplug.vm.probe import probe_qemu, require, resolve_qemu
from podplug.vm.process import Accel, Confinement, Vm
from podplug.vm.qompath import read_placements
from podplug.vm.storage_daemon import StorageDaemon, storage_daemon_binary

AGENT_PORT = "podplug.agent"
CONTAINER_DIR = "/run/podplug/ctr"
KEEPER_RELEASE_S = 0.25  # added to the release's bound per keeper (~0.06 s each measured)
TEARDOWN_UNPLUG_S = 5.0  # a failed run's unplugs: a guest that ignored one ignores the rest
USUAL_BOOT_S = 10.0  # QMP to agent ready under TCG here is ~5 s; slower guests get more time


@dataclass(frozen=True)
class RunOptions:
    accel: Accel = Accel.AUTO
    emulate_vfio: bool | None = None  # None: emulate when the host has no IOMMU
    hotplug: HotplugMode = HotplugMode.ACPI
    keep_running: bool = False
    qemu: str | None = None  # --qemu: overrides the configuration's [hypervisor.qemu] path
    spare_window: Window = DEFAULT_SPARE_WINDOW  # --spare-window: the least a spare port gets
    volumes: VolumePolicy = field(default_factory=VolumePolicy)  # which volumes may be written
    cache_dir: Path | None = None
    memory_mib: int = 512
    boot_timeout: float = 60.0  # to a ready agent; ~5 s here, minutes when nested
    progress: Callable[[str], None] = field(default=lambda _: None, compare=False)


def guest_argv(plan: Plan, image: GuestImage, sock: Path, *,
               device: Callable[[QemuDevice], QemuDevice] | None, memory_mib: int,
               accel: Accel, boot: BootFiles | None = None) -> list[str]:
    """The QEMU arguments after the ones :class:`Vm` adds (pure); the hot-plug mode comes
    with the plan (:func:`podplug.render.argv.render_argv`); ``device`` maps the cold VFIO
    functions (the emulated stand-ins of :func:`podplug.plan.standin.stand_ins`); ``boot``
    names the kernel and initramfs handed over open (:mod:`podplug.run.handover`); the
    guest loads the module groups the plan's devices need (:mod:`podplug.plan.guest_needs`)."""
    mapped = device or _same
    preload, _ = after_release(plan, guest_module_groups(plan, device=mapped))
    append = " ".join([image.cmdline, *(["intel_iommu=on"] if plan.guest_iommu else []),
                       cmdline_word(preload)])
    kernel, initrd = (boot.kernel, boot.initrd) if boot else (image.kernel, image.initramfs)
    argv = [
        "-cpu", "host" if accel is Accel.KVM else "max", "-smp", "1", "-m", str(memory_mib),
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
        *render_argv(plan, device, memory_mib=memory_mib),
        "-device", "virtio-serial-pci,id=vser0,bus=pcie.0,addr=01.0",
        "-chardev", f"socket,id=agentch,path={sock},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev=agentch,name={AGENT_PORT}",
    ]  # fmt: skip
    return argv


def decide_emulation(requested: bool | None, sysfs_root: str,
                     host_has_iommu: bool) -> tuple[bool, str]:
    """Whether VFIO functions are emulated stand-ins, and why (pure).

    Real assignment needs the real ``/sys`` and a host IOMMU; a fake sysfs tree (tests, the
    demo) or a host without IOMMU groups always gets stand-ins unless asked otherwise.
    """
    if requested is not None:
        return requested, "--emulate-vfio" if requested else "--no-emulate-vfio"
    if str(Path(sysfs_root)) != "/sys":
        return True, f"--sysfs {sysfs_root} is not the real /sys"
    if not host_has_iommu:
        return True, "no host IOMMU (/sys/kernel/iommu_groups is empty)"
    return False, "host IOMMU present"


def _real_host_has_iommu() -> bool:
    groups = Path("/sys/kernel/iommu_groups")
    return groups.is_dir() and any(groups.iterdir())


class _Clock:
    def __init__(self, progress: Callable[[str], None]) -> None:
        self.start = time.monotonic()
        self.progress = progress
        self.timings: dict[str, float] = {}

    def say(self, text: str) -> None:
        self.progress(f"[{time.monotonic() - self.start:6.2f}s] {text}")

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings[name] = time.monotonic() - started


def run(inputs: Inputs, options: RunOptions) -> RunReport:
    """Plan, boot, plug, prove, unplug; one report row per requested device.

    :raises PodplugError: when the run cannot go on (bad plan, image, QEMU, agent); a
        device that merely fails its check is a FAIL row, not an exception.
    """
    clock = _Clock(options.progress)
    hv = inputs.config.hypervisor
    qemu = resolve_qemu(hv.path, options.qemu, hv.section)
    caps = probe_qemu(qemu, options.cache_dir or default_cache_dir())
    plan = make_plan(inputs.config, inputs.request, inputs.inventory,
                     hotplug=options.hotplug, spare_floor=options.spare_window,
                     io_uring=QemuFeature.AIO_IO_URING in caps.features)
    has_vfio = any(d.functions for d in plan.devices)
    emulate, why_emulate = decide_emulation(options.emulate_vfio, inputs.inventory.sysfs_root,
                                            _real_host_has_iommu())
    notes: list[str] = [f"planned for {plan.hotplug.value} hot-plug"]
    if has_vfio and emulate:
        notes.append(f"VFIO EMULATED ({why_emulate}): each VFIO function is an emulated nvme "
                     f"stand-in ({STANDIN_VENDOR_DEVICE}, serial = host BDF, the host "
                     "function's two largest prefetchable BARs, not its non-prefetchable "
                     "ones) on its planned port; everything guest-side is real")
    elif has_vfio:
        notes.append("VFIO: real host devices passed with vfio-pci")
    drives = plan_drives(plan, inputs.inventory, options.volumes)
    notes += drive_notes(plan, drives, inputs.inventory)
    notes += dict.fromkeys(n for d in plan.in_bucket(Bucket.HOT_BLOCK) for n in d.notes)
    for note in notes:
        clock.say(note)
    mapping = stand_ins(inputs.inventory.functions) if emulate else _same
    require(caps, qemu_needs(plan, device=mapping) | {QemuFeature.SANDBOX})
    clock.say(f"QEMU {caps.version_text}: {qemu}")
    clock.say("guest image: building or loading from cache")
    with clock.phase("image"):
        image = build_image(options.cache_dir)
    accel, why = choose_accel(options.accel, lambda: probe_kvm(qemu_binary=str(qemu)))
    notes.append(f"accelerator {accel.value}: {why}")
    clock.say(f"accelerator {accel.value} ({why})")
    confinement, who = confinement_for(
        os.geteuid(), real_vfio=has_vfio and not emulate, accel=accel,
        account=_account(UNPRIVILEGED_USER), kvm_gid=_group_of("/dev/kvm"))
    notes.append(who)
    clock.say(who)
    with tempfile.TemporaryDirectory(prefix="podplug-run-") as tmp, \
            boot_files(str(image.kernel), str(image.initramfs)) as boot:
        if confinement.user is not None:
            os.chown(tmp, *confinement.user)  # QEMU makes the agent socket here
        backends = plan_backends(plan, Path(tmp), confinement.user)
        for backend in backends.values():
            notes.append(backend.note)
            clock.say(backend.note)
        exports = [b.export for b in backends.values() if b.export is not None]
        daemon = StorageDaemon(exports, binary=storage_daemon_binary(str(qemu)),
                               confinement=Confinement(sandbox=False, user=confinement.user),
                               tmp_parent=tmp) if exports else contextlib.nullcontext()
        sock = Path(tmp) / "agent.sock"
        argv = guest_argv(plan, image, sock, device=mapping if emulate else None,
                          memory_mib=options.memory_mib, accel=accel, boot=boot)
        clock.say("booting VM")
        where = _Where()
        with daemon, clock.phase("vm_total"), \
                Vm(argv, accel=accel, qemu_binary=str(qemu), tmp_parent=tmp,
                   confinement=confinement, pass_fds=boot.fds) as vm:  # QEMU ends first
            try:
                rows = _run_in_vm(vm, plan, inputs, options, clock, sock, emulate, mapping,
                                  drives, where, backends)
            except VmError as exc:
                code = vm.exit_code
                raise RunFailed(exc, phase=where.phase, device=where.device, step=where.step,
                                qemu_exit="" if code is None else f"QEMU had exited ({code})",
                                teardown_errors=where.teardown_errors) from exc
    clock.say("VM stopped, temporary files removed")
    return RunReport(tuple(rows), accel.value, emulate and has_vfio, tuple(notes),
                     clock.timings)


def _same(device: QemuDevice) -> QemuDevice:
    return device


@dataclass(frozen=True)
class Drive:
    """The drive a volume gets for this run, what the host holds there, and the proof."""

    node: BlockdevNode
    facts: VolumeFacts
    depth: Depth


def is_fake_host(inventory: HostInventory) -> bool:
    """A host snapshot that is not this machine's (a ``--sysfs`` stand-in tree)."""
    return str(Path(inventory.sysfs_root)) != "/sys"


def plan_drives(plan: Plan, inventory: HostInventory,
                policy: VolumePolicy) -> dict[str, Drive]:
    """Each planned volume's drive, read-only unless its proof may write (shell: reads the
    host volume's facts). :raises InputError: a destructive check refused."""
    drives = {}
    for device in plan.in_bucket(Bucket.HOT_BLOCK):
        if device.blockdev is None:
            continue  # vhost-user-blk: its back end holds the disk (podplug.run.backends)
        node = drive_for(device.blockdev, inventory, fake_host=is_fake_host(inventory),
                         read_only=True)
        facts = read_volume(node.filename)
        depth = depth_for(policy, device.request.path, facts)
        drives[device.blockdev.node_name] = Drive(
            replace(node, read_only=depth is Depth.READ_ONLY), facts, depth)
    return drives


def drive_notes(plan: Plan, drives: dict[str, Drive], inventory: HostInventory) -> list[str]:
    notes = []
    for device in plan.in_bucket(Bucket.HOT_BLOCK):
        if device.blockdev is None:
            continue
        drive = drives[device.blockdev.node_name]
        if drive.node.filename != device.blockdev.filename:
            notes.append(f"VOLUME STAND-IN: {device.request.path}'s host node "
                         f"{device.blockdev.filename} belongs to the FAKE host "
                         f"{inventory.sysfs_root}: its backing file {drive.node.filename} is "
                         "the drive")
        how = ("read-only (QEMU opens it read-only; podplug did not make it)"
               if drive.depth is Depth.READ_ONLY else "with write and filesystem checks")
        notes.append(f"{device.request.path} is proven {how}")
    return notes


@dataclass
class _Where:
    """Where a run is, for the error that stops it (:class:`RunFailed`)."""

    phase: str = "boot"
    device: str = ""
    step: str = ""
    teardown_errors: list[str] = field(default_factory=list)

    def at(self, phase: str, device: str = "", step: str = "") -> None:
        self.phase, self.device, self.step = phase, device, step


def release_window_keepers(vm: Vm, agent: AgentClient, plan: Plan,
                           device: Callable[[QemuDevice], QemuDevice]) -> int:
    """The window keepers leave (``unplug_batch`` of :func:`release_steps`), then the guest
    loads the module groups held back until they were gone (:func:`after_release`: nvme
    never binds a keeper). Returns how many keepers left."""
    steps = release_steps(plan)
    keepers = sum(1 for step in steps if step.kind is StepKind.DEVICE_DEL)
    if steps:  # measured: 220 keepers left in 11.4-14.1 s under TCG; the bound grows with them
        unplug_batch(vm, steps, unplug_timeout=UNPLUG_TIMEOUT_S + KEEPER_RELEASE_S * keepers)
    _, later = after_release(plan, guest_module_groups(plan, device=device))
    for group in later:
        agent.call("modules", group.value)
    return keepers


def _run_in_vm(vm: Vm, plan: Plan, inputs: Inputs, options: RunOptions, clock: _Clock,
               sock: Path, emulate: bool, mapping: Callable[[QemuDevice], QemuDevice],
               drives: dict[str, Drive], where: _Where,
               backends: dict[str, Backend]) -> list[DeviceRow]:
    handing = {name: (drive.node, drive.facts) for name, drive in drives.items()}
    with contextlib.closing(AgentClient.connect(sock)) as agent, \
            fdset_drives(vm, handing) as handed, \
            handed_sockets(vm, {i: b.chardev for i, b in backends.items()}) as sockets:
        where.at("boot", step="agent ping")
        with clock.phase("boot"):
            agent.wait_ready(options.boot_timeout)
        clock.say(f"guest agent ready ({clock.timings['boot']:.2f} s after QMP)")
        actual: dict[str, str] = {}
        cold = [(device.request.path, function.qemu.id)
                for device in plan.in_bucket(Bucket.COLD_VFIO) for function in device.functions]
        if cold:
            where.at("cold-plug read-back", cold[0][0], f"qom-get {cold[0][1]}")
            placed = read_placements(vm.execute_many, [qemu_id for _, qemu_id in cold])
            for path, qemu_id in cold:
                where.at("cold-plug read-back", path, f"qom-get {qemu_id}")
                found = placed[qemu_id]
                if isinstance(found, PodplugError):
                    raise found
                actual[qemu_id] = str(found.path)
        if release_steps(plan):
            where.at("window keeper release")
            with clock.phase("release"):
                released = release_window_keepers(vm, agent, plan, mapping)
            clock.say(f"{released} window keeper(s) unplugged: their ports keep the windows "
                      "firmware sized")
        hot = hot_devices(plan)
        steps = plug_steps(hot, device=mapping, drive=lambda n: handed[n.node_name],
                           chardev=lambda c: sockets[c.id])
        clock.say(f"hot-plugging {len(hot)} device(s): {len(steps)} QMP steps")
        where.at("hot-plug")
        with clock.phase("hotplug"):
            results: list[StepResult] = carry_batch(vm, steps)
        for result in results:
            if result.actual_path is not None:
                actual[result.step.subject] = str(result.actual_path)
        teardown = list(unplug_steps(hot, device=mapping))
        try:
            rows = _prove(vm, plan, inputs, options, clock, agent, emulate, drives, actual,
                          results, where, backends)
            with clock.phase("unplug"):
                while teardown:
                    step = teardown[0]
                    where.at("unplug", step.container_path, f"{step.kind.value} {step.subject}")
                    carry(vm, step)
                    teardown.pop(0)
        except BaseException:
            if vm.alive:  # the run stops here: take out what it plugged before QEMU quits
                where.teardown_errors += _tear_down(vm, teardown)
            raise
        clock.say(f"unplugged {len(hot)} device(s)")
    return rows


def _prove(vm: Vm, plan: Plan, inputs: Inputs, options: RunOptions, clock: _Clock,
           agent: AgentClient, emulate: bool, drives: dict[str, Drive],
           actual: dict[str, str], results: list[StepResult], where: _Where,
           backends: dict[str, Backend]) -> list[DeviceRow]:
    slowness = max(1.0, clock.timings["boot"] / USUAL_BOOT_S)
    if slowness > 1.0:
        clock.say(f"slow guest: agent timeouts scaled by {slowness:.1f}")
    volumes: dict[str, tuple[VolumeFacts | None, Depth]] = {
        d.request.path: (drives[d.blockdev.node_name].facts, drives[d.blockdev.node_name].depth)
        for d in plan.in_bucket(Bucket.HOT_BLOCK) if d.blockdev is not None}
    volumes.update((b.container_path, (b.facts, b.depth)) for b in backends.values())
    prover = GuestProver(agent, plan, inputs.inventory, CONTAINER_DIR, emulate, slowness,
                         volumes=volumes)
    proven: dict[int, DeviceRow] = {}
    order = _report_order(plan)
    with clock.phase("verify"):
        for index in _proof_order(order):
            device = order[index]
            where.at("proof", device.request.path, "guest agent")
            started = time.monotonic()
            row = prover.prove(device, actual)
            proven[index] = _timed(row, time.monotonic() - started, results, device)
            clock.say(f"{'OK  ' if row.usable else 'FAIL'} {device.request.path}: "
                      f"{row.check or row.error}")
    if options.keep_running:
        where.at("keep running")
        clock.say(f"keeping the VM running (QMP in {vm.workdir}); Ctrl-C to stop")
        until_signal(lambda: not vm.alive)
        if not vm.alive:
            raise VmError("QEMU exited while kept running")
    return [proven[i] for i in range(len(order))]


def _tear_down(vm: Vm, steps: list[Step]) -> list[str]:
    """Best effort, bounded: the unplug steps a failed run did not get to. Returns what
    could not be undone (QEMU quits right after, taking it along)."""
    problems: list[str] = []
    for step in steps:
        if not vm.alive:
            return [*problems, "QEMU exited during the teardown"]
        try:
            carry(vm, step, unplug_timeout=TEARDOWN_UNPLUG_S)
        except PodplugError as exc:
            problems.append(f"{step.kind.value} {step.subject}: {exc}")
    return problems


def _account(name: str) -> Account | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(name, entry.pw_uid, entry.pw_gid)


def _group_of(path: str) -> int | None:
    try:
        return os.stat(path).st_gid
    except OSError:
        return None


def _report_order(plan: Plan) -> list[DevicePlan]:
    return list(plan.container_devices) + list(plan.in_bucket(Bucket.REJECTED))


def _proof_order(devices: list[DevicePlan]) -> list[int]:
    """Entries first, in the container's order (as Kata's agent handles them before the
    container starts), then the nodes passed as the spec gives them."""
    return sorted(range(len(devices)), key=lambda i: devices[i].agent is None)


def _timed(row: DeviceRow, seconds: float, results: list[StepResult],
           device: DevicePlan) -> DeviceRow:
    plugged = sum(r.seconds for r in results if r.step.container_path == device.request.path)
    return replace(row, seconds=seconds + plugged)
