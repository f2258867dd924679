"""Hot-plug windows, for real: a hot-plugged stand-in of a GPU with a 16 GiB 64-bit
prefetchable BAR gets its BARs assigned on a root port (reserved window), on a switch
downstream port (window kept by a boot-time device) and on a spare port of each kind; with
the window taken away the same plug leaves the BAR unassigned and the proof says so. VFIO
functions are EMULATED stand-ins (no host IOMMU here), shaped like the host function: its
16 GiB BAR is the stand-in's nvme PMR (BAR4)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from podplug.guest.agent_client import AgentClient
from podplug.guest.protocol import BRIDGE_PREF_WINDOW, parse_bars
from podplug.image.build import build_image
from podplug.model.host import Bar, HostInventory
from podplug.plan.model import Plan
from podplug.plan.plan import plan
from podplug.plan.sequence import hot_devices, plug_steps
from podplug.plan.standin import PMR_BAR, stand_ins
from podplug.plan.topology import Role, Use
from podplug.plan.windows import FIRMWARE_WINDOW
from podplug.run.session import guest_argv, release_window_keepers
from podplug.run.verify import GuestProver
from podplug.vm.hotplug import carry_batch
from podplug.vm.process import Accel, Vm
from tests.support import PREF64, QEMU, config, inventory, request, vfio_group

pytestmark = pytest.mark.vm

GIB = 1 << 30


def _host() -> HostInventory:
    """Two GPU groups (12, 13), each GPU with BAR0 16 MiB and BAR1 16 GiB prefetchable."""
    host = inventory(2, 2, blocks=0)
    functions = {bdf: replace(f, bars=(f.bars[0], Bar(1, 16 * GIB, PREF64)))
                 if f.bdf.function == 0 else f for bdf, f in host.functions.items()}
    return replace(host, functions=functions)


@contextmanager
def _booted(p: Plan, host: HostInventory) -> Iterator[tuple[Vm, AgentClient]]:
    with tempfile.TemporaryDirectory(prefix="podplug-t-") as tmp:
        sock = Path(tmp) / "agent.sock"
        argv = guest_argv(p, build_image(), sock, device=stand_ins(host.functions),
                          memory_mib=512, accel=Accel.TCG)
        with Vm(argv, accel=Accel.TCG, qemu_binary=QEMU, tmp_parent=tmp) as vm, \
                AgentClient.connect(sock) as agent:
            agent.wait_ready(60.0)
            # the keepers leave, their windows stay; then nvme loads (it never binds a keeper)
            release_window_keepers(vm, agent, p, stand_ins(host.functions))
            yield vm, agent


def _plug_and_prove(vm: Vm, agent: AgentClient, p: Plan, host: HostInventory) -> tuple[bool, str]:
    (gpu,) = hot_devices(p)
    results = carry_batch(vm, plug_steps([gpu], device=stand_ins(host.functions)))
    actual = {r.step.subject: str(r.actual_path) for r in results if r.actual_path}
    row = GuestProver(agent, p, host, "/run/podplug/ctr", emulated=True).prove(gpu, actual)
    return row.usable, row.error


def _spare_takes_the_other_gpu(vm: Vm, agent: AgentClient, p: Plan, host: HostInventory) -> int:
    """Plug group 13's stand-in onto the plan's first spare port; its BAR4's size when the
    guest assigned it inside the port's prefetchable window (0 when it did not)."""
    spare = next(c for c in p.topology.controllers if c.use is Use.SPARE)
    other = plan(p.config, request(vfio_group(13)), host)
    (gpu,) = hot_devices(other)
    steps = [replace(s, arguments={**s.arguments, "bus": spare.id}, expect_path=None)
             if s.kind.value == "device_add" else s
             for s in plug_steps([gpu], device=stand_ins(host.functions))]
    carry_batch(vm, steps)
    chain = agent.call("wait-pci", f"{spare.path}/00", "5000", timeout=30).words
    device, port = chain[-1], chain[-2]
    bar = {b.index: b for b in parse_bars(agent.call("bars", device))}.get(PMR_BAR)
    window = {b.index: b for b in parse_bars(agent.call("bars", port))}.get(BRIDGE_PREF_WINDOW)
    if bar is None or not bar.assigned or window is None or not window.contains(bar):
        return 0
    return bar.size


@pytest.mark.parametrize("kind", ["root-port", "switch-port"])
def test_a_16g_bar_hot_plugs_into_its_port_and_a_spare(kind: str) -> None:
    host = _host()
    counts = {"root_ports": 2} if kind == "root-port" else {"switch_ports": 2}
    p = plan(config("vfio", hot=kind, **counts), request(vfio_group(12)), host)
    ports = [c for c in p.topology.controllers if c.use in (Use.VFIO, Use.SPARE)]
    assert len(ports) == 2
    if kind == "root-port":
        assert all(dict(c.reserves)["pref64-reserve"] == "32G" for c in ports)
    else:
        assert all(c.role is Role.SWITCH_DOWNSTREAM and c.keeper == 16 * GIB for c in ports)
    with _booted(p, host) as (vm, agent):
        usable, error = _plug_and_prove(vm, agent, p, host)
        assert usable, error
        assert _spare_takes_the_other_gpu(vm, agent, p, host) == 16 * GIB


@pytest.mark.parametrize("kind", ["root-port", "switch-port"])
def test_without_the_window_the_bar_is_left_unassigned_and_said_so(kind: str) -> None:
    host = _host()
    counts = {"root_ports": 1} if kind == "root-port" else {"switch_ports": 1}
    p = plan(config("vfio", hot=kind, **counts), request(vfio_group(12)), host)
    bare = tuple(replace(c, reserves=tuple(r for r in c.reserves if r[0] == "io-reserve"),
                         keeper=0, window=FIRMWARE_WINDOW)
                 if c.use is Use.VFIO else c for c in p.topology.controllers)
    p = replace(p, topology=replace(p.topology, controllers=bare))
    with _booted(p, host) as (vm, agent):
        usable, error = _plug_and_prove(vm, agent, p, host)
    assert not usable
    assert "BAR4 (16 GiB prefetchable) not assigned: no window of the port above fits it" \
        in error
