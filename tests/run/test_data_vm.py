"""Every byte comes back (issue 11): on a scratch volume hot-plugged for real, for each
block driver and each place a volume lands (a ``pci-bridge`` slot, its own root port under
ACPI and native hot-plug, a virtio-scsi target), the guest reads what the host wrote, the
host reads what the guest wrote (compared per MiB by SHA-256, after the unplug), and the
same holds across an unplug and re-plug of the same volume in one VM. The guest writes
and reads through the container node it resolved from the kata-agent entry, with
``O_DIRECT``; QEMU writes the host file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from podplug.guest.agent_client import AgentClient
from podplug.image.build import build_image
from podplug.model.enums import HotplugMode
from podplug.plan.model import Plan
from podplug.plan.plan import plan
from podplug.plan.sequence import hot_devices, plug_steps, unplug_steps
from podplug.run.session import guest_argv
from podplug.run.verify import GuestProver
from podplug.run.volumes import drive_for
from podplug.vm.hotplug import carry, carry_batch
from podplug.vm.process import Accel, Vm
from tests.support import QEMU, block, config, inventory, request

pytestmark = pytest.mark.vm

MIB = 1 << 20
SIZE_MIB = 48
HOST_AREA = (0, 4)  # (first MiB, count): the host writes, the guest reads
GUEST_AREA = (20, 8)  # the guest writes, the host reads
LAST_AREA = (SIZE_MIB - 2, 2)  # the end of the volume


def _host_sums(path: Path, first: int, count: int) -> list[str]:
    with open(path, "rb") as handle:
        handle.seek(first * MIB)
        return [hashlib.sha256(handle.read(MIB)).hexdigest() for _ in range(count)]


def _host_write(path: Path, first: int, count: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(first * MIB)
        handle.write(os.urandom(count * MIB))
        handle.flush()
        os.fsync(handle.fileno())


def _guest_sums(agent: AgentClient, node: str, first: int, count: int,
                verb: str = "blk-sums") -> list[str]:
    return agent.call(verb, node, str(first), str(count), timeout=60).fields["sums"].split(",")


CASES = {  # id -> (driver, bridges, root ports, hot-plug mode, where the volume must land)
    "virtio-blk-bridge-acpi": ("virtio-blk", 1, 0, HotplugMode.ACPI, "pci-bridge-0"),
    "virtio-blk-root-port-acpi": ("virtio-blk", 0, 0, HotplugMode.ACPI, "rp0"),
    "virtio-blk-root-port-native": ("virtio-blk", 0, 0, HotplugMode.NATIVE, "rp0"),
    "virtio-scsi-acpi": ("virtio-scsi", 1, 0, HotplugMode.ACPI, "scsi0.0"),
}


def _plan(driver: str, bridges: int, root_ports: int, mode: HotplugMode,
          disk: Path) -> tuple[Plan, object]:
    host = inventory(0, 0, blocks=1)
    host = replace(host, block_nodes={k: replace(v, loop_backing_file=str(disk))
                                      for k, v in host.block_nodes.items()})
    p = plan(config("guest-kernel", driver=driver, bridges=bridges, root_ports=root_ports),
             request(block(0)), host, hotplug=mode)
    return p, host


@pytest.mark.parametrize("case", list(CASES))
def test_bytes_round_trip_through_a_hot_plugged_volume(tmp_path: Path, case: str) -> None:
    driver, bridges, root_ports, mode, lands = CASES[case]
    disk = tmp_path / "scratch.img"
    disk.write_bytes(b"\0" * (SIZE_MIB * MIB))
    _host_write(disk, *HOST_AREA)
    _host_write(disk, *LAST_AREA)
    p, host = _plan(driver, bridges, root_ports, mode, disk)
    hot = hot_devices(p)
    (volume,) = hot
    assert volume.agent is not None and volume.blockdev is not None
    assert [q.bus for q in volume.qemu_devices] == [lands]

    def drive(node: object) -> object:
        return drive_for(node, host, fake_host=True, read_only=False)  # type: ignore[arg-type]

    with tempfile.TemporaryDirectory(prefix="podplug-t-") as tmp:
        sock = Path(tmp) / "agent.sock"
        argv = guest_argv(p, build_image(), sock, device=None, memory_mib=512, accel=Accel.TCG)
        with Vm(argv, accel=Accel.TCG, qemu_binary=QEMU, tmp_parent=tmp) as vm, \
                AgentClient.connect(sock) as agent:
            agent.wait_ready(60.0)
            prover = GuestProver(agent, p, host, "/run/podplug/ctr", emulated=True)
            written: list[str] = []
            for round_ in ("first plug", "re-plug"):
                carry_batch(vm, plug_steps(hot, drive=drive))  # type: ignore[arg-type]
                node = prover.resolve(volume.agent, 0o660).node
                # host -> guest: what the host wrote while the volume was out
                assert _guest_sums(agent, node, *HOST_AREA) == _host_sums(disk, *HOST_AREA)
                assert _guest_sums(agent, node, *LAST_AREA) == _host_sums(disk, *LAST_AREA)
                if round_ == "re-plug":  # what the guest wrote before the unplug is there
                    assert _guest_sums(agent, node, *GUEST_AREA) == written
                # guest -> host: fresh random MiBs, compared after the unplug
                written = _guest_sums(agent, node, *GUEST_AREA, verb="blk-write")
                for step in unplug_steps(hot):
                    carry(vm, step)
                nodes = vm.execute("query-named-block-nodes")
                assert isinstance(nodes, list) and not nodes, nodes  # QEMU let go of it
                assert _host_sums(disk, *GUEST_AREA) == written, round_
                _host_write(disk, *HOST_AREA)  # new host bytes for the next round
