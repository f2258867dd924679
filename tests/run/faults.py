"""Fault injection into a real ``podplug run`` (issue 11): the run is the product's own
(:func:`podplug.run.session.run`, real QEMU under TCG, the real guest agent); a fault is
injected at one point of it through the seams a test may patch, and what QEMU still held
is read over QMP just before podplug shuts it down.

Seams: ``Vm.execute`` and ``Vm.execute_many`` (before a chosen QMP command: kill QEMU,
pause the guest, make QEMU refuse the command by handing it an argument it rejects; a
pipelined burst is split there), ``AgentClient.wait_ready`` (the boot), the run's progress
lines (between phases) and ``Vm.shutdown``. The faults are
real: QEMU is really killed, really refuses, the guest is really paused (a paused guest
answers no agent request and no eject: it is a guest that ignores both).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from podplug.guest.agent_client import AgentClient
from podplug.host.fakesysfs import demo_host, write_fake_sysfs
from podplug.inputs.load import Inputs, load_inputs
from podplug.plan.plan import plan as make_plan
from podplug.plan.sequence import hot_devices, plug_steps
from podplug.plan.standin import stand_ins
from podplug.run.report import RunReport
from podplug.run.session import RunOptions, run
from podplug.vm.process import Accel, Vm
from tests.support import QEMU, REPO, live_qemu, podplug_temp_entries

SPEC = REPO / "podplug" / "demo" / "spec.json"
COLD = "cold"  # the GPU cold-plugged on a root port, the volume hot-plugged
HOT = "hot"  # both hot-plugged: the GPU a two-function slot (function 1, then 0)


def write_config(tmp: Path, kind: str) -> Path:
    cold, hot = ("root-port", "no-port") if kind == COLD else ("no-port", "root-port")
    path = tmp / "configuration.toml"
    path.write_text(f'[hypervisor.qemu]\npath = "{QEMU}"\nmachine_type = "q35"\n'
                    f'cold_plug_vfio = "{cold}"\n'
                    f'hot_plug_vfio = "{hot}"\npcie_root_port = 2\ndefault_bridges = 1\n'
                    'block_device_driver = "virtio-blk"\n[runtime]\nvfio_mode = "vfio"\n')
    return path


def qemu_state(vm: Vm) -> dict[str, set[str]]:
    """What QEMU holds: PCI device ids, block nodes and devices, fd sets, objects; and its
    run state."""
    def pci_ids(buses: list[dict[str, Any]]) -> set[str]:
        found: set[str] = set()
        for bus in buses:
            for device in bus.get("devices", []):
                found.add(device.get("qdev_id", ""))
                if "pci_bridge" in device:
                    found |= pci_ids([device["pci_bridge"]["bus"]])
        return found - {""}

    call = Vm.execute.__wrapped__  # type: ignore[attr-defined]
    pci = call(vm, "query-pci")
    nodes = call(vm, "query-named-block-nodes")
    blocks = call(vm, "query-block")
    fdsets = call(vm, "query-fdsets")
    objects = call(vm, "qom-list", {"path": "/objects"})
    status = call(vm, "query-status")
    return {
        "status": {status["status"]},
        "pci": pci_ids(pci),
        "nodes": {n["node-name"] for n in nodes},
        "block": {b.get("qdev", "") for b in blocks} - {""},
        "fdsets": {str(f["fdset-id"]) for f in fdsets},
        "objects": {o["name"] for o in objects if o["type"].startswith("child<")},
    }


@dataclass
class Injected:
    """One fault: when it fires and what it does (given the live Vm)."""

    before_command: str | None = None  # fire just before this QMP command...
    nth: int = 1  # ...the nth time it is sent
    at_boot: bool = False  # fire as the run starts waiting for the agent
    on_line: str | None = None  # fire at the progress line starting with this
    at_shutdown: bool = False  # fire as podplug starts shutting QEMU down
    action: Callable[[Vm | None], None] = lambda vm: None  # None: before QEMU started
    corrupt: dict[str, object] | None = None  # arguments that make QEMU refuse the command


@dataclass
class Seen:
    report: RunReport | None = None
    error: BaseException | None = None
    left: dict[str, set[str]] | None = None  # QEMU's state just before shutdown; None: dead
    fired: int = 0
    lines: list[str] = field(default_factory=list)
    hot_subjects: set[str] = field(default_factory=set)  # what the plan plugs
    qemu_after: set[int] = field(default_factory=set)
    temp_after: set[str] = field(default_factory=set)


def kill_qemu(vm: Vm | None) -> None:
    assert vm is not None and vm.pid is not None
    os.kill(vm.pid, signal.SIGKILL)
    os.waitid(os.P_PID, vm.pid, os.WEXITED | os.WNOWAIT)  # dead before podplug goes on


def qemu_resets(vm: Vm | None) -> None:
    """QEMU ends on its own: a reset under ``-no-reboot`` is an exit (the path a guest
    panic takes with ``panic=-1``, as when the agent, PID 1, dies)."""
    assert vm is not None and vm.pid is not None
    Vm.execute.__wrapped__(vm, "system_reset")  # type: ignore[attr-defined]
    os.waitid(os.P_PID, vm.pid, os.WEXITED | os.WNOWAIT)


def pause_guest(vm: Vm | None) -> None:
    """The guest stops answering: its vCPUs are stopped (QMP ``stop``)."""
    assert vm is not None
    Vm.execute.__wrapped__(vm, "stop")  # type: ignore[attr-defined]


def close_qmp(vm: Vm | None) -> None:
    """The QMP socket closed under podplug (QEMU lives on): shut the connection down."""
    assert vm is not None
    client = vm.qmp._client  # the fault is in the transport itself
    assert client is not None and client._writer is not None
    fd = client._writer.transport.get_extra_info("socket").fileno()
    with socket.socket(fileno=os.dup(fd)) as dup:
        dup.shutdown(socket.SHUT_RDWR)


def run_with_fault(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str,
                   fault: Injected, *, boot_timeout: float = 60.0) -> Seen:
    """One real run with ``fault`` injected; every outcome recorded, nothing raised."""
    disk = tmp_path / "xda.img"
    disk.write_bytes(os.urandom(1 << 20) + b"\0" * (31 << 20))
    sysfs = write_fake_sysfs(tmp_path / "sys", demo_host(str(disk)))
    inputs: Inputs = load_inputs(write_config(tmp_path, kind), SPEC, cdi_dirs=(),
                                 sysfs_root=sysfs)
    seen = Seen()
    planned = make_plan(inputs.config, inputs.request, inputs.inventory)
    hot = hot_devices(planned)
    seen.hot_subjects = {s.subject for s in plug_steps(hot, device=stand_ins(
        inputs.inventory.functions), drive=lambda n: n)}
    live: list[Vm] = []
    counts: dict[str, int] = {}

    def fire(vm: Vm | None) -> None:
        seen.fired += 1
        fault.action(vm)

    original_execute = Vm.execute

    def execute(self: Vm, command: str, arguments: Any = None, *rest: Any) -> Any:
        if self.name != "podplug":  # the QEMU probe's Vm
            return original_execute(self, command, arguments, *rest)
        if self not in live:
            live.append(self)
        if command == fault.before_command:
            counts[command] = counts.get(command, 0) + 1
            if counts[command] == fault.nth:
                fire(self)
                if fault.corrupt is not None:
                    arguments = {**(arguments or {}), **fault.corrupt}
        return original_execute(self, command, arguments, *rest)

    execute.__wrapped__ = original_execute  # type: ignore[attr-defined]
    original_many = Vm.execute_many

    def execute_many(self: Vm, commands: Any, *rest: Any) -> Any:
        """A pipelined burst is split at the faulted command: the commands before it are
        sent (and answered), the fault fires, then the rest goes, as it would in QEMU."""
        if self.name != "podplug":
            return original_many(self, commands, *rest)
        commands = list(commands)
        for i, (command, arguments) in enumerate(commands):
            if command != fault.before_command:
                continue
            counts[command] = counts.get(command, 0) + 1
            if counts[command] != fault.nth:
                continue
            first = original_many(self, commands[:i], *rest) if i else []
            fire(self)
            if fault.corrupt is not None:
                commands[i] = (command, {**(arguments or {}), **fault.corrupt})
            return [*first, *original_many(self, commands[i:], *rest)]
        return original_many(self, commands, *rest)

    original_shutdown = Vm.shutdown

    def shutdown(self: Vm, timeout: float = 10.0) -> Any:
        if self in live and self.alive:
            if fault.at_shutdown:
                fire(self)
            try:
                seen.left = qemu_state(self)
            except Exception:  # QMP gone: nothing to read
                seen.left = None
        return original_shutdown(self, timeout)

    original_launch = Vm.launch

    def launch(self: Vm, *rest: Any) -> None:
        original_launch(self, *rest)
        if self.name == "podplug" and self not in live:
            live.append(self)

    original_wait = AgentClient.wait_ready

    def wait_ready(self: AgentClient, timeout: float = 60.0) -> Any:
        if fault.at_boot and live:
            fire(live[-1])
        return original_wait(self, timeout)

    def progress(line: str) -> None:
        seen.lines.append(line)
        text = line.split("] ", 1)[-1]
        if fault.on_line is not None and text.startswith(fault.on_line):
            fire(live[-1] if live else None)

    monkeypatch.setattr(Vm, "execute", execute)
    monkeypatch.setattr(Vm, "execute_many", execute_many)
    monkeypatch.setattr(Vm, "shutdown", shutdown)
    monkeypatch.setattr(Vm, "launch", launch)
    monkeypatch.setattr(AgentClient, "wait_ready", wait_ready)
    before_temp = podplug_temp_entries()
    try:
        seen.report = run(inputs, RunOptions(accel=Accel.TCG, progress=progress,
                                             boot_timeout=boot_timeout))
    except BaseException as exc:  # what the test looks at
        seen.error = exc
    seen.qemu_after = live_qemu(os.getpid())
    seen.temp_after = podplug_temp_entries() - before_temp
    return seen
