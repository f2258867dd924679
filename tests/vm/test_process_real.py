"""The QEMU lifecycle and the QMP adapter against a real QEMU (``-accel tcg``, no guest).

QEMU runs q35 with ``-S`` and no kernel: QMP works without a guest. The topology has two
root ports, a switch (root port + x3130-upstream + 2 xio3130-downstream) and a pci-bridge.
Tests marked ``vm`` need ``qemu-system-x86_64`` and FAIL (never skip) without it. The
unmarked tests at the end are pure. Nothing here opens /dev/kvm.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podplug.errors import HotplugTimeout, QemuLaunchError, QmpCommandError, StateError, VmError
from podplug.vm.accel import choose_accel, firmware_probe, probe_kvm
from podplug.vm.process import (
    Accel,
    StopHow,
    Vm,
    VmState,
    build_argv,
)
from podplug.vm.qmp import QmpEvent, deleted_event_matches
from podplug.vm.qompath import read_placement
from tests.support import QEMU

vm = pytest.mark.vm

TOPOLOGY = [
    "-machine", "q35", "-m", "128", "-S",
    "-device", "pcie-root-port,id=rp1,bus=pcie.0,addr=0x2,chassis=1,slot=1",
    "-device", "pcie-root-port,id=rp2,bus=pcie.0,addr=0x3,chassis=2,slot=2",
    "-device", "pcie-root-port,id=rp3,bus=pcie.0,addr=0x4,chassis=3,slot=3",
    "-device", "x3130-upstream,id=up1,bus=rp3",
    "-device", "xio3130-downstream,id=dn1,bus=up1,addr=0x0,chassis=11,slot=0",
    "-device", "xio3130-downstream,id=dn2,bus=up1,addr=0x1,chassis=12,slot=1",
    "-device", "pci-bridge,id=br1,bus=pcie.0,addr=0x5,chassis_nr=5,shpc=off",
]  # fmt: skip
NATIVE = ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]


def require_qemu() -> None:
    if not os.access(QEMU, os.X_OK):
        pytest.fail(f"{QEMU} is not installed (apt-get install qemu-system-x86)")


def plug(target: Vm, dev_id: str, bus: str, addr: str | None = "0") -> None:
    """A virtio-blk-pci on a fresh null-co node, like the recipe's hot-plug step."""
    node = f"node-{dev_id}"
    target.execute("blockdev-add", {"driver": "null-co", "node-name": node, "size": 1 << 20})
    args: dict[str, object] = {"driver": "virtio-blk-pci", "id": dev_id, "bus": bus, "drive": node}
    if addr is not None:
        args["addr"] = addr
    target.execute("device_add", args)


def process_gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for a (non-reaping) init."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.fixture(scope="module")
def topo() -> Iterator[Vm]:
    require_qemu()
    with Vm(TOPOLOGY, accel=Accel.TCG, qemu_binary=QEMU, name="topo") as machine:
        yield machine


# -- placement: qom-get addr/parent_bus on a real QEMU ----------------------------------


@vm
def test_qemu_is_installed() -> None:
    require_qemu()


@vm
def test_qom_shapes(topo: Vm) -> None:
    """What QEMU 7.2 really returns (the facts qompath is built on)."""
    plug(topo, "shape", "br1", "0x8.0x3")
    assert topo.qom_get("/machine/peripheral/shape", "addr") == (8 << 3) | 3
    assert topo.qom_get("/machine/peripheral/shape", "parent_bus") == "/machine/peripheral/br1/br1"
    assert topo.qom_get("/machine/peripheral/rp1", "parent_bus") == "/machine/q35/pcie.0"
    assert topo.qom_get("/machine/peripheral/rp1", "addr") == 2 << 3
    # a bare id is a partial QOM path: fine for an endpoint, ambiguous for a port
    assert topo.qom_get("shape", "addr") == 67
    with pytest.raises(QmpCommandError) as info:
        topo.qom_get("rp1", "addr")
    assert info.value.error_class == "DeviceNotFound"
    placement = read_placement(topo.qmp, "shape")
    assert str(placement) == "05/08.3" and placement.function == 3 and not placement.notes


@vm
def test_root_port_path(topo: Vm) -> None:
    plug(topo, "blk-rp", "rp1")
    assert str(read_placement(topo.qmp, "blk-rp")) == "02/00"


@vm
def test_switch_downstream_path(topo: Vm) -> None:
    plug(topo, "blk-dn", "dn2")
    placement = read_placement(topo.qmp, "blk-dn")
    assert str(placement) == "04/00/01/00"
    assert [hop.qom_path.rsplit("/", 1)[1] for hop in placement.hops] == [
        "rp3", "up1", "dn2", "blk-dn",
    ]  # fmt: skip


@vm
def test_bridge_slot_path(topo: Vm) -> None:
    plug(topo, "blk-br", "br1", "3")
    assert str(read_placement(topo.qmp, "blk-br")) == "05/03"


@vm
def test_occupied_port_with_addr0_is_refused(topo: Vm) -> None:
    plug(topo, "occ-a", "dn1")
    with pytest.raises(QmpCommandError) as info:
        plug(topo, "occ-b", "dn1")
    assert info.value.error_class == "GenericError"
    assert "not available" in info.value.desc and "occ-a" in info.value.desc
    assert info.value.command == "device_add"
    assert info.value.arguments == {
        "driver": "virtio-blk-pci", "id": "occ-b", "bus": "dn1", "drive": "node-occ-b",
        "addr": "0",
    }  # fmt: skip


@vm
def test_without_addr_an_occupied_port_takes_slot_1_or_is_refused(topo: Vm) -> None:
    """Pitfall 2, why podplug always gives ``addr``: QEMU 7.2 accepts a device without one
    on an occupied PCIe port at slot 1, where the port cannot expose it, and qompath shows
    it there; QEMU 10.0 picks function 1 of slot 0 instead and refuses it (function 0 is no
    multifunction device). Either way the device never lands where a plan put it."""
    try:
        plug(topo, "occ-c", "dn1", addr=None)
    except QmpCommandError as refused:
        assert refused.error_class == "GenericError"
        assert "slot 0 function 0 already occupied" in refused.desc
        assert "cannot be exposed to guest" in refused.desc
        topo.execute("blockdev-del", {"node-name": "node-occ-c"})
    else:
        assert str(read_placement(topo.qmp, "occ-c")) == "04/00/00/01"


@vm
def test_unknown_bus(topo: Vm) -> None:
    with pytest.raises(QmpCommandError) as info:
        plug(topo, "lost", "nope")
    assert info.value.error_class == "GenericError"
    assert info.value.desc == "Bus 'nope' not found"


@vm
def test_device_del_of_unknown_id(topo: Vm) -> None:
    with pytest.raises(QmpCommandError) as info:
        topo.device_del_and_wait("ghost", 1.0)
    assert info.value.error_class == "DeviceNotFound"


# -- device_del without a guest -----------------------------------------------------------


@vm
def test_device_del_without_guest_acpi_never_completes(topo: Vm) -> None:
    """ACPI hot-plug (q35 default): QEMU accepts device_del and waits for the guest's _EJ0.

    With no guest OS nothing ejects: no DEVICE_DELETED and the device stays. While the VM is
    paused (-S) a second device_del is refused, for good (6.5 s tried; QEMU's re-request
    window runs on the virtual clock, which a paused VM does not advance).
    """
    plug(topo, "pending", "rp2")
    started = time.monotonic()
    with pytest.raises(HotplugTimeout) as info:
        topo.device_del_and_wait("pending", 1.0)
    waited = time.monotonic() - started
    assert info.value.device == "pending" and info.value.expected == "DEVICE_DELETED"
    assert 1.0 <= waited < 5.0  # bounded by the 1 s asked, with room for a noisy machine
    assert topo.qom_get("/machine/peripheral/pending", "addr") == 0
    with pytest.raises(QmpCommandError) as again:
        topo.execute("device_del", {"id": "pending"})
    assert again.value.error_class == "GenericError"
    assert again.value.desc == "Device pending is already in the process of unplug"
    assert not [e for e in topo.qmp.recent_events() if e.name == "DEVICE_DELETED"]


@vm
def test_device_del_with_firmware_only_acpi_repeats_silently() -> None:
    """The vCPU running (SeaBIOS, no OS): a repeated device_del is accepted, still nothing
    ejects the device."""
    require_qemu()
    with Vm(TOPOLOGY, accel=Accel.TCG, qemu_binary=QEMU, name="running") as machine:
        machine.execute("cont")
        plug(machine, "pend2", "rp1")
        with pytest.raises(HotplugTimeout):
            machine.device_del_and_wait("pend2", 0.5)
        assert machine.execute("device_del", {"id": "pend2"}) == {}
        assert machine.qom_get("/machine/peripheral/pend2", "addr") == 0


@vm
def test_device_del_without_guest_native_removes_at_once() -> None:
    """Native PCIe hot-plug: the guest never powered the slot on, so QEMU removes the
    hot-plugged device at once, with DEVICE_DELETED twice (virtio-backend first)."""
    require_qemu()
    with Vm(TOPOLOGY + NATIVE, accel=Accel.TCG, qemu_binary=QEMU, name="native") as machine:
        plug(machine, "nat", "rp1")
        started = time.monotonic()
        event = machine.device_del_and_wait("nat", 10.0)
        assert time.monotonic() - started < 5.0  # removed at once, not at the 10 s timeout
        assert event.name == "DEVICE_DELETED"
        assert event.data == {"device": "nat", "path": "/machine/peripheral/nat"}
        deadline = time.monotonic() + 2.0
        while len(machine.qmp.recent_events()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        first, second = machine.qmp.recent_events()[:2]
        assert first.data == {"path": "/machine/peripheral/nat/virtio-backend"}
        assert second.data["device"] == "nat"
        with pytest.raises(QmpCommandError) as info:
            machine.qom_get("/machine/peripheral/nat", "addr")
        assert info.value.error_class == "DeviceNotFound"
        # the node is free again
        machine.execute("blockdev-del", {"node-name": "node-nat"})


@vm
def test_watch_sees_an_event_and_times_out_boundedly(topo: Vm) -> None:
    with topo.watch("SHUTDOWN") as never:
        started = time.monotonic()
        with pytest.raises(HotplugTimeout):
            never.wait(0.3, subject="vm")
        assert time.monotonic() - started < 5.0  # bounded
    fresh = Vm(TOPOLOGY, accel=Accel.TCG, qemu_binary=QEMU, name="watch")
    with fresh, fresh.watch("RESUME") as resumed:
        fresh.execute("cont")
        assert resumed.wait(2.0).name == "RESUME"


# -- lifecycle ----------------------------------------------------------------------------


@vm
def test_states_guards_and_shutdown_cleanup() -> None:
    require_qemu()
    machine = Vm(TOPOLOGY, accel=Accel.TCG, qemu_binary=QEMU, name="states")
    assert machine.state.value == "planned"
    with pytest.raises(StateError) as info:
        machine.execute("query-status")
    assert info.value.state == "planned" and info.value.required == ("running",)
    machine.launch(30.0)
    assert machine.state.value == "running"
    pid, workdir = machine.pid, machine.workdir
    assert pid is not None and workdir is not None and (workdir / "qmp.sock").exists()
    status = machine.execute("query-status")  # QEMU 7.2 adds "singlestep": False; 10.0 not
    assert isinstance(status, dict)
    assert (status["status"], status["running"]) == ("prelaunch", False)
    report = machine.shutdown(10.0)
    assert report.how is StopHow.QUIT and report.exitcode == 0
    assert machine.state is VmState.STOPPED
    assert process_gone(pid)
    assert not workdir.exists()
    with pytest.raises(StateError) as info:
        machine.execute("query-status")
    assert info.value.state == "stopped"
    with pytest.raises(StateError):
        machine.launch()
    assert machine.shutdown() is report  # idempotent


@vm
def test_keyboard_interrupt_in_with_block_cleans_up() -> None:
    require_qemu()
    seen: dict[str, object] = {}
    with pytest.raises(KeyboardInterrupt), \
            Vm(TOPOLOGY, accel=Accel.TCG, qemu_binary=QEMU, name="kbi") as machine:
        seen["pid"], seen["dir"] = machine.pid, machine.workdir
        raise KeyboardInterrupt
    assert machine.state is VmState.STOPPED
    assert isinstance(seen["pid"], int) and process_gone(seen["pid"])
    assert isinstance(seen["dir"], Path) and not seen["dir"].exists()


@vm
def test_qemu_death_is_reported_and_shutdown_still_cleans_up() -> None:
    require_qemu()
    machine = Vm(TOPOLOGY, accel=Accel.TCG, qemu_binary=QEMU, name="dies")
    with machine:
        assert machine.pid is not None
        os.kill(machine.pid, signal.SIGKILL)
        with pytest.raises(VmError, match=r"QEMU exited \(code -9\)"):
            machine.execute("query-status")
    assert machine.stop_report is not None and machine.stop_report.how is StopHow.EXITED
    assert machine.workdir is not None and not machine.workdir.exists()


@vm
def test_bad_argv_is_a_launch_error_with_qemu_message() -> None:
    require_qemu()
    machine = Vm(["-machine", "q35", "-device", "no-such-device"], accel=Accel.TCG,
                 qemu_binary=QEMU)
    with pytest.raises(QemuLaunchError) as info:
        machine.launch(10.0)
    err = info.value
    assert "'no-such-device' is not a valid device model name" in str(err)
    assert "'no-such-device' is not a valid device model name" in err.output
    assert err.exitcode == 1 and err.argv[0] == QEMU and "-qmp" in err.argv
    assert machine.state is VmState.STOPPED
    assert machine.workdir is not None and not machine.workdir.exists()


@vm
def test_qmp_that_never_comes_is_a_bounded_launch_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake-qemu"
    fake.write_text("#!/bin/sh\necho 'fake qemu: not listening' >&2\nexec sleep 30\n")
    fake.chmod(0o755)
    machine = Vm([], accel=Accel.TCG, qemu_binary=str(fake))
    started = time.monotonic()
    with pytest.raises(QemuLaunchError, match=r"did not appear within 0\.5 s") as info:
        machine.launch(0.5)
    assert time.monotonic() - started < 3.0
    assert "fake qemu: not listening" in info.value.output
    assert info.value.exitcode == -signal.SIGKILL
    assert machine.pid is not None and process_gone(machine.pid)


@vm
def test_keyboard_interrupt_during_launch_cleans_up(tmp_path: Path) -> None:
    """A real SIGINT (Python's default handler) while launch waits for a QMP that never comes."""
    fake = tmp_path / "fake-qemu"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    machine = Vm([], accel=Accel.TCG, qemu_binary=str(fake))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            machine.launch(10.0)
    finally:
        timer.cancel()
    assert machine.state is VmState.STOPPED
    assert machine.pid is not None and process_gone(machine.pid)
    assert machine.workdir is not None and not machine.workdir.exists()


@vm
def test_missing_binary_is_a_launch_error() -> None:
    machine = Vm([], accel=Accel.TCG, qemu_binary="/nonexistent/qemu")
    with pytest.raises(QemuLaunchError, match="cannot execute"):
        machine.launch(1.0)
    assert machine.state is VmState.STOPPED


@vm
def test_qemu_dies_with_its_parent_pdeathsig() -> None:
    """Pitfall 8: SIGKILL the Python process that launched QEMU; QEMU must die too."""
    require_qemu()
    script = textwrap.dedent(
        """
        import sys, time
        from podplug.vm.process import Accel, Vm
        vm = Vm(["-machine", "q35", "-S"], accel=Accel.TCG, qemu_binary=sys.argv[1])
        vm.launch(30.0)
        print(vm.pid, vm.workdir, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script, QEMU], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout is not None
        pid_text, workdir = parent.stdout.readline().split()
        qemu_pid = int(pid_text)
        assert not process_gone(qemu_pid)
    finally:
        parent.kill()
        parent.wait(5)
    deadline = time.monotonic() + 5.0
    while not process_gone(qemu_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process_gone(qemu_pid)
    shutil.rmtree(workdir, ignore_errors=True)  # nobody was left to remove it


@vm
def test_firmware_probe_mechanics_under_tcg() -> None:
    """The probe's machinery (never run with KVM in tests): SeaBIOS ends under TCG."""
    require_qemu()
    assert 0.0 < firmware_probe(Accel.TCG, qemu_binary=QEMU, deadline_s=10.0) < 10.0


# -- pure ---------------------------------------------------------------------------------


def test_build_argv(tmp_path: Path) -> None:
    argv = build_argv("qemu", Accel.TCG, tmp_path, ["-machine", "q35"])
    assert argv[:3] == ["qemu", "-accel", "tcg"]
    assert argv[-2:] == ["-machine", "q35"]
    for flag in ("-display", "-no-reboot", "-nodefaults", "-no-user-config"):
        assert flag in argv
    assert f"unix:{tmp_path}/qmp.sock,server=on,wait=off" in argv
    assert f"file:{tmp_path}/serial.log" in argv
    with pytest.raises(ValueError):
        build_argv("qemu", Accel.AUTO, tmp_path, [])
    with pytest.raises(ValueError):
        build_argv("qemu", Accel.TCG, tmp_path / "a,b", [])
    with pytest.raises(ValueError):
        Vm([], accel=Accel.AUTO)


def test_choose_accel() -> None:
    def unused() -> bool:
        raise AssertionError("probe must not run")

    def broken() -> bool:
        raise VmError("SeaBIOS did not finish")

    assert choose_accel(Accel.TCG, unused)[0] is Accel.TCG
    assert choose_accel(Accel.KVM, unused) == (Accel.KVM, "KVM requested explicitly (not probed)")
    assert choose_accel(Accel.AUTO, lambda: True)[0] is Accel.KVM
    accel, note = choose_accel(Accel.AUTO, lambda: False)
    assert accel is Accel.TCG and "using TCG" in note
    accel, note = choose_accel(Accel.AUTO, broken)
    assert accel is Accel.TCG and "SeaBIOS did not finish" in note


def test_probe_kvm_vetoes_a_cpu_without_vmx_or_svm(tmp_path: Path) -> None:
    """Fake paths: neither /dev/kvm nor QEMU is touched."""
    device = tmp_path / "kvm"
    device.write_text("")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 hypervisor lm\n")
    with pytest.raises(VmError, match="no vmx/svm"):
        probe_kvm(kvm_device=str(device), cpuinfo=str(cpuinfo))
    with pytest.raises(VmError, match="missing"):
        probe_kvm(kvm_device=str(tmp_path / "absent"), cpuinfo=str(cpuinfo))
    accel, note = choose_accel(
        Accel.AUTO, lambda: probe_kvm(kvm_device=str(device), cpuinfo=str(cpuinfo))
    )
    assert accel is Accel.TCG and "no vmx/svm" in note


def test_deleted_event_filter() -> None:
    backend = QmpEvent("DEVICE_DELETED", {"path": "/machine/peripheral/d1/virtio-backend"})
    own = QmpEvent("DEVICE_DELETED", {"device": "d1", "path": "/machine/peripheral/d1"})
    path_only = QmpEvent("DEVICE_DELETED", {"path": "/machine/peripheral/d1"})
    other = QmpEvent("DEVICE_DELETED", {"device": "d10", "path": "/machine/peripheral/d10"})
    assert not deleted_event_matches(backend, "d1")
    assert deleted_event_matches(own, "d1") and deleted_event_matches(path_only, "d1")
    assert not deleted_event_matches(other, "d1")
    assert not deleted_event_matches(QmpEvent("RESUME", {"device": "d1"}), "d1")
