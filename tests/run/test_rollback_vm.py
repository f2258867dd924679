"""A failed hot-plug batch is rolled back for real: no half-plugged device, no leaked
blockdev node (the executor's error path, also covered with a fake in
test_hotplug_fake.py)."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from podplug.errors import QmpCommandError
from podplug.guest.agent_client import AgentClient
from podplug.guest.protocol import parse_lspci
from podplug.image.build import build_image
from podplug.plan.plan import plan
from podplug.plan.sequence import StepKind, hot_devices, plug_steps
from podplug.plan.standin import stand_ins
from podplug.run.session import guest_argv
from podplug.run.volumes import drive_for
from podplug.vm.hotplug import BatchFailed, carry_batch
from podplug.vm.process import Accel, Vm
from tests.support import QEMU, block, config, inventory, request, vfio_group

pytestmark = pytest.mark.vm


def test_failed_batch_leaves_nothing_plugged(tmp_path: Path) -> None:
    disk = tmp_path / "disk0.img"
    disk.write_bytes(b"\0" * (8 << 20))
    host = inventory(1, 2, blocks=1)
    host = replace(host, block_nodes={k: replace(v, loop_backing_file=str(disk))
                                      for k, v in host.block_nodes.items()})
    p = plan(config("vfio", hot="root-port"), request(vfio_group(12), block(0)), host)
    steps = list(plug_steps(hot_devices(p), device=stand_ins(host.functions),
                            drive=lambda n: drive_for(n, host, fake_host=True,
                                                      read_only=False)))
    last = steps[-1]
    assert last.kind is StepKind.DEVICE_ADD and last.subject == "blk0"
    steps[-1] = replace(last, arguments={**last.arguments, "bus": "no-such-bus"})
    with tempfile.TemporaryDirectory(prefix="podplug-t-") as tmp:
        sock = Path(tmp) / "agent.sock"
        argv = guest_argv(p, build_image(), sock, device=stand_ins(host.functions),
                          memory_mib=512, accel=Accel.TCG)
        with Vm(argv, accel=Accel.TCG, qemu_binary=QEMU, tmp_parent=tmp) as vm, \
                AgentClient.connect(sock) as agent:
            agent.wait_ready(60.0)
            with pytest.raises(BatchFailed) as err:
                carry_batch(vm, steps)
            assert "Bus 'no-such-bus' not found" in str(err.value)
            assert err.value.rollback_errors == ()
            nodes = vm.execute("query-named-block-nodes")
            assert isinstance(nodes, list)
            assert "drive-blk0" not in {n.get("node-name") for n in nodes}
            for device_id in ("vfio-0000-41-00-0", "vfio-0000-41-00-1"):
                with pytest.raises(QmpCommandError) as gone:
                    vm.qom_get(f"/machine/peripheral/{device_id}", "addr")
                assert gone.value.error_class == "DeviceNotFound"
            assert "nvme" not in {d.driver for d in parse_lspci(agent.call("lspci"))}
