"""Soak: one VM through many hot-plug/unplug cycles, counting what could leak (issue 11).

Each cycle hot-plugs a two-function VFIO stand-in slot (nvme with its PMR memory backend)
and a scratch volume through the product's own sequencer and executor, has the guest
resolve both kata-agent entries (so the devices really arrived), and unplugs them. Every
``--every`` cycles it counts: podplug's open file descriptors, QEMU's open file
descriptors and resident memory, QEMU's block nodes and ``/objects``, and the PCI
functions the guest sees. A leak is growth between the first sample and the last. The
first sample is taken after one warm-up cycle: QEMU opens its ``io_uring`` ring (one
``anon_inode:[io_uring]`` descriptor, measured) at the first volume opened with Kata's
default ``aio=io_uring`` and keeps it for good, which is not a leak.

    python3 bench/soak.py --cycles 200          # by hand; figures in RELIABILITY.md

The stand-ins are EMULATED (no host IOMMU on these machines); QEMU, the guest and its
hot-plug are real.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from podplug.guest.agent_client import AgentClient
from podplug.guest.protocol import parse_lspci
from podplug.host.fakesysfs import demo_host, write_fake_sysfs
from podplug.host.sysfs import scan_host
from podplug.image.build import build_image
from podplug.inputs.kata import parse_kata_text
from podplug.inputs.oci import parse_oci_text
from podplug.plan.plan import plan
from podplug.plan.sequence import hot_devices, plug_steps, unplug_steps
from podplug.plan.standin import stand_ins
from podplug.run.session import guest_argv
from podplug.run.verify import GuestProver
from podplug.run.volumes import drive_for
from podplug.vm.hotplug import carry, carry_batch
from podplug.vm.process import DEFAULT_QEMU, Accel, Vm

REPO = Path(__file__).resolve().parents[1]
CONFIG = ('[hypervisor.qemu]\nmachine_type = "q35"\nhot_plug_vfio = "root-port"\n'
          'pcie_root_port = 2\ndefault_bridges = 1\nblock_device_driver = "virtio-blk"\n'
          '[runtime]\nvfio_mode = "vfio"\n')
COUNTED = ("podplug fds", "qemu fds", "qemu rss KiB", "block nodes", "objects", "guest pci")


@dataclass
class SoakResult:
    cycles: int
    seconds: float
    samples: list[tuple[int, dict[str, int]]] = field(default_factory=list)  # (cycle, counts)

    def growth(self) -> dict[str, int]:
        first, last = self.samples[0][1], self.samples[-1][1]
        return {k: last[k] - first[k] for k in COUNTED}


def _fds(pid: int | str) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def soak(cycles: int, every: int = 10, progress: bool = False,
         qemu: str = DEFAULT_QEMU) -> SoakResult:
    with tempfile.TemporaryDirectory(prefix="podplug-soak-") as tmp:
        work = Path(tmp)
        disk = work / "xda.img"
        disk.write_bytes(b"\0" * (32 << 20))
        host = scan_host(write_fake_sysfs(work / "sys", demo_host(str(disk))))
        request = parse_oci_text((REPO / "podplug/demo/spec.json").read_text())
        p = plan(parse_kata_text(CONFIG), request, host)
        hot = hot_devices(p)
        mapping = stand_ins(host.functions)
        steps = plug_steps(hot, device=mapping, drive=lambda n: replace(
            drive_for(n, host, fake_host=True, read_only=False)))
        teardown = unplug_steps(hot, device=mapping)
        sock = work / "agent.sock"
        argv = guest_argv(p, build_image(), sock, device=mapping, memory_mib=512,
                          accel=Accel.TCG)
        result = SoakResult(cycles, 0.0)
        with Vm(argv, accel=Accel.TCG, qemu_binary=qemu, tmp_parent=tmp) as vm, \
                AgentClient.connect(sock) as agent:
            agent.wait_ready(120.0)
            prover = GuestProver(agent, p, host, "/run/podplug/ctr", emulated=True)
            assert vm.pid is not None

            def sample(cycle: int) -> None:
                nodes = vm.execute("query-named-block-nodes")
                objects = vm.execute("qom-list", {"path": "/objects"})
                assert isinstance(nodes, list) and isinstance(objects, list)
                counts = {
                    "podplug fds": _fds("self"), "qemu fds": _fds(vm.pid or 0),
                    "qemu rss KiB": _rss_kib(vm.pid or 0), "block nodes": len(nodes),
                    "objects": len(objects),
                    "guest pci": len(parse_lspci(agent.call("lspci"))),
                }
                result.samples.append((cycle, counts))
                if progress:
                    print(f"cycle {cycle:4d}: {counts}", flush=True)

            def cycle_once() -> None:
                carry_batch(vm, steps)
                for device in hot:
                    assert device.agent is not None
                    prover.resolve(device.agent, 0o660)
                for step in teardown:
                    carry(vm, step)

            cycle_once()  # warm-up (module docstring)
            sample(0)
            started = time.monotonic()
            for cycle in range(1, cycles + 1):
                cycle_once()
                if cycle % every == 0 or cycle == cycles:
                    sample(cycle)
            result.seconds = time.monotonic() - started
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    args = parser.parse_args()
    result = soak(args.cycles, args.every, progress=True)
    print(f"{result.cycles} cycles in {result.seconds:.1f} s "
          f"({result.seconds / result.cycles:.2f} s a cycle); growth first -> last sample: "
          f"{result.growth()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
