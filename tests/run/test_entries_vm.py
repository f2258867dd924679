"""The guest resolves kata-agent entries by the agent's rules, for real: the entries of a
two-function slot written the old way (``03/00`` for both functions) send both host
functions to guest function 0, and the comparison with the plan says so; the entries podplug
writes (``03/00`` and ``03/00.1``) resolve to two guest functions. VFIO functions are
EMULATED stand-ins (no host IOMMU here); the guest side is real."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from podplug.errors import HotplugTimeout
from podplug.guest.agent_client import AgentClient
from podplug.guest.protocol import parse_lspci
from podplug.image.build import build_image
from podplug.model.enums import AgentDeviceType
from podplug.plan.plan import plan
from podplug.plan.standin import stand_ins
from podplug.run.expect import expectations, vfio_problems
from podplug.run.session import guest_argv
from podplug.run.verify import GuestProver
from podplug.vm.process import Accel, Vm
from tests.support import QEMU, block, config, inventory, request, vfio_group

pytestmark = pytest.mark.vm


def test_entries_resolve_by_the_agents_rules(tmp_path: Path) -> None:
    host = inventory(1, 2, blocks=1)
    p = plan(config("vfio", cold="root-port"), request(vfio_group(12), block(0)), host)
    gpu = next(d for d in p.devices if d.functions)
    assert gpu.agent is not None
    assert gpu.agent.options == ("0000:41:00.0=03/00", "0000:41:00.1=03/00.1")
    old = replace(gpu.agent, type=AgentDeviceType.VFIO_PCI_GK,
                  options=tuple(o.split(".1=")[0] + ".1=03/00" if ".1=" in o else o
                                for o in gpu.agent.options))
    assert old.options == ("0000:41:00.0=03/00", "0000:41:00.1=03/00")
    with tempfile.TemporaryDirectory(prefix="podplug-t-") as tmp:
        sock = Path(tmp) / "agent.sock"
        argv = guest_argv(p, build_image(), sock, device=stand_ins(host.functions), memory_mib=512,
                          accel=Accel.TCG)
        with Vm(argv, accel=Accel.TCG, qemu_binary=QEMU, tmp_parent=tmp), \
                AgentClient.connect(sock) as agent:
            agent.wait_ready(60.0)
            prover = GuestProver(agent, p, host, "/run/podplug/ctr", emulated=True)
            stale = prover.resolve(old, 0o660)
            assert [g for _, g in stale.functions] == ["0000:02:00.0"] * 2
            listing = {d.bdf: d for d in parse_lspci(agent.call("lspci"))}
            seen = {g: prover.observe(g, listing) for _, g in stale.functions}
            problems = vfio_problems(gpu, old, stale, expectations(gpu, host, emulated=True),
                                     seen, {})
            assert any("all resolved to guest 0000:02:00.0" in x for x in problems)

            good = prover.resolve(gpu.agent, 0o660)
            assert [g for _, g in good.functions] == ["0000:02:00.0", "0000:02:00.1"]
            assert good.node == f"/run/podplug/ctr/dev/vfio/{good.group}"
            # an entry for a function that is not there times out in the guest, naming it
            ghost = replace(gpu.agent, options=("0000:41:00.2=03/00.2",))
            with pytest.raises(HotplugTimeout, match=r"03/00\.2: 0000:02:00\.2 not present"):
                GuestProver(agent, p, host, "/run/podplug/ctr", emulated=True,
                            slowness=0.1).resolve(ghost, 0o660)

