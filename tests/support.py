"""Builders for the pure tests: configurations through the real parser, hosts in memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from podplug.inputs.kata import RuntimeConfig, parse_kata_config
from podplug.model.enums import ContainerType, NodeType
from podplug.model.host import (
    IORESOURCE_MEM,
    IORESOURCE_MEM_64,
    IORESOURCE_PREFETCH,
    Bar,
    BlockNode,
    CharNode,
    HostInventory,
    PciFunction,
    VhostUserNode,
)
from podplug.model.pci import CLASS_AUDIO, CLASS_DISPLAY_3D, CLASS_OTHER_BRIDGE, Bdf
from podplug.model.request import ContainerDevice, ContainerRequest
from podplug.plan.model import Plan
from podplug.plan.plan import plan as make_plan
from podplug.plan.sequence import Step, hot_devices, plug_steps
from podplug.vm.process import DEFAULT_QEMU

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
KATA_FIXTURES = FIXTURES / "kata"
#: Kata's configuration files at main, by runtime (``go``, ``rs``) and upstream name; the
#: files of every release are listed in ``tests/fixtures/kata/manifest.json``
KATA_MAIN = KATA_FIXTURES / "main"

#: The QEMU binary every real-VM test runs, read once: ``$PODPLUG_TEST_QEMU`` (an absolute
#: path; ``scripts/test.sh`` sets it to Debian 13's QEMU 10, ``python3 -m tests.debian13
#: qemu10``, for its second pass) or podplug's default, Debian 12's ``/usr/bin`` one. Tests
#: pass it explicitly (``Vm(qemu_binary=)``, ``RunOptions(qemu=)``, ``--qemu``, a
#: configuration's ``path``), as a user would: podplug never takes a binary from $PATH.
QEMU = os.environ.get("PODPLUG_TEST_QEMU") or DEFAULT_QEMU
if not os.path.isabs(QEMU):
    raise RuntimeError(f"PODPLUG_TEST_QEMU must be an absolute path, not {QEMU!r}")

VFIO_GROUP_MAJOR = 236
VFIO_CDEV_MAJOR = 237
PREF64 = IORESOURCE_MEM | IORESOURCE_MEM_64 | IORESOURCE_PREFETCH


def config(
    vfio_mode: str = "guest-kernel",
    cold: str = "no-port",
    hot: str = "no-port",
    driver: str = "virtio-blk",
    *,
    root_ports: int = 0,
    switch_ports: int = 0,
    bridges: int = 1,
    hypervisor: str = "qemu",
    machine: str = "q35",
    extra: Mapping[str, object] | None = None,
    runtime_rs: bool = False,
) -> RuntimeConfig:
    """A configuration, parsed by the real parser from a TOML-shaped mapping; ``extra``
    keys join the hypervisor table; ``runtime_rs`` makes it a runtime-rs file."""
    runtime: dict[str, object] = {"vfio_mode": vfio_mode}
    if runtime_rs:
        runtime["name"] = "virt_container"
    return parse_kata_config({
        "hypervisor": {hypervisor: {
            "machine_type": machine, "cold_plug_vfio": cold, "hot_plug_vfio": hot,
            "block_device_driver": driver, "pcie_root_port": root_ports,
            "pcie_switch_port": switch_ports, "default_bridges": bridges,
            "enable_annotations": ["cold_plug_vfio", "hot_plug_vfio", "pcie_root_port",
                                   "pcie_switch_port"],
            **(extra or {}),
        }},
        "runtime": runtime,
    })


def gpu(bus: int, function: int, group: int, *, klass: int = CLASS_DISPLAY_3D) -> PciFunction:
    bars = (Bar(0, 16 << 20, IORESOURCE_MEM), Bar(1, 64 << 30, PREF64)) if function == 0 else (
        Bar(0, 16 << 10, IORESOURCE_MEM),)
    return PciFunction(Bdf(0, bus, 0, function), 0x10DE, 0x2330 if function == 0 else 0x22BA,
                       klass if function == 0 else CLASS_AUDIO, True, bars, "vfio-pci", 0,
                       group)


def nvswitch(bus: int, group: int) -> PciFunction:
    return PciFunction(Bdf(0, bus, 0, 0), 0x10DE, 0x22A3, CLASS_OTHER_BRIDGE, True,
                       (Bar(0, 32 << 20, IORESOURCE_MEM),), "vfio-pci", 0, group)


def inventory(
    groups: int = 1, functions: int = 2, *, blocks: int = 1, iommufd: int = 0,
    nvswitches: int = 0,
) -> HostInventory:
    """``groups`` GPU groups of ``functions`` functions (buses 0x41..), ``blocks`` loop
    devices 7:N, ``iommufd`` single-function cdevs vfio0.. and ``nvswitches`` own groups."""
    funcs: dict[Bdf, PciFunction] = {}
    iommu: dict[int, tuple[Bdf, ...]] = {}
    chars: dict[tuple[int, int], CharNode] = {(10, 196): CharNode(10, 196, "vfio/vfio")}
    for g in range(groups):
        number = 12 + g
        members = tuple(gpu(0x41 + g, f, number) for f in range(functions))
        for m in members:
            funcs[m.bdf] = m
        iommu[number] = tuple(m.bdf for m in members)
        chars[(VFIO_GROUP_MAJOR, number)] = CharNode(VFIO_GROUP_MAJOR, number, f"vfio/{number}")
    for n in range(nvswitches):
        number = 100 + n
        switch = nvswitch(0x90 + n, number)
        funcs[switch.bdf] = switch
        iommu[number] = (switch.bdf,)
        chars[(VFIO_GROUP_MAJOR, number)] = CharNode(VFIO_GROUP_MAJOR, number, f"vfio/{number}")
    for k in range(iommufd):
        dev = gpu(0xC0 + k, 0, 200 + k)
        funcs[dev.bdf] = dev
        iommu[200 + k] = (dev.bdf,)
        chars[(VFIO_CDEV_MAJOR, k)] = CharNode(VFIO_CDEV_MAJOR, k, f"vfio/devices/vfio{k}",
                                               dev.bdf)
    block = {(7, i): BlockNode(7, i, f"loop{i}", f"/images/disk{i}.img") for i in range(blocks)}
    return HostInventory(funcs, iommu, block, chars)


def vfio_group(number: int) -> ContainerDevice:
    return ContainerDevice(f"/dev/vfio/{number}", NodeType.CHAR, VFIO_GROUP_MAJOR, number, 0o666)


def vfio_control() -> ContainerDevice:
    return ContainerDevice("/dev/vfio/vfio", NodeType.CHAR, 10, 196, 0o666)


def iommufd_dev(k: int) -> ContainerDevice:
    return ContainerDevice(f"/dev/vfio/devices/vfio{k}", NodeType.CHAR, VFIO_CDEV_MAJOR, k, 0o666)


def block(minor: int, path: str = "") -> ContainerDevice:
    return ContainerDevice(path or f"/dev/xd{chr(ord('a') + minor)}", NodeType.BLOCK, 7, minor,
                           0o660)


STORE = "/var/run/kata-containers/vhost-user"  # Kata's default vhost_user_store_path
VHOST_ON = (("enable_vhost_user_store", True), ("enable_hugepages", True))


def vhost_user(minor: int, path: str = "") -> ContainerDevice:
    """A vhost-user-blk node of the spec (major 241, Kata ``VhostUserBlkMajor``)."""
    return ContainerDevice(path or f"/dev/vub{minor}", NodeType.BLOCK, 241, minor, 0o660)


def with_store(host: HostInventory, count: int = 1, *, present: bool = True,
               store: str = STORE) -> HostInventory:
    """``host`` with Kata's vhost-user store holding ``count`` devices 241:N named vubN."""
    nodes = {(241, n): VhostUserNode(241, n, f"vub{n}", f"{store}/block/sockets/vub{n}",
                                     present) for n in range(count)}
    return replace(host, vhost_user_nodes=nodes, vhost_user_store=store)


def request(*devices: ContainerDevice, sandbox: bool = False) -> ContainerRequest:
    kind = ContainerType.SANDBOX if sandbox else ContainerType.CONTAINER
    return ContainerRequest(tuple(devices), {}, kind)


def live_qemu(parent: int | None = None) -> set[int]:
    """PIDs of live (not zombie) ``qemu-system`` processes, optionally only children of
    ``parent``: what a run must not leave behind."""
    return live_processes("qemu-system", parent)


def live_processes(prefix: str, parent: int | None = None) -> set[int]:
    """PIDs of live (not zombie) processes whose name starts with ``prefix`` (the kernel's
    15-character ``comm``: ``qemu-storage-d`` for qemu-storage-daemon)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat.split("(", 1)[1].rsplit(")", 1)[0]
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if name.startswith(prefix) and state != "Z" and (
                parent is None or int(ppid) == parent):
            found.add(int(entry.name))
    return found


def run_cli_until(marker: str, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """``podplug run --accel tcg --qemu QEMU ARGS`` started, its output read until a line
    holds ``marker`` (or 120 s pass); the process and the lines seen."""
    proc = subprocess.Popen([sys.executable, "-m", "podplug.cli", "run", "--accel", "tcg",
                             "--qemu", QEMU, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        seen.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    return proc, seen


def podplug_temp_entries() -> set[str]:
    """Names in the temporary directory that podplug creates (``podplug-*``)."""
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).iterdir()
            if p.name.startswith("podplug-")}


def scratch_volumes(root: Path, count: int, *, bridges: int = 1) -> tuple[Plan, list[Step]]:
    """A plan of ``count`` raw volumes on pci-bridge slots (ACPI) and its plug steps, each
    volume's drive a 1 MiB sparse file in ``root`` (for real-VM batches)."""
    nodes = {}
    for i in range(count):
        disk = root / f"vol{i}.img"
        with open(disk, "wb") as handle:
            handle.truncate(1 << 20)
        nodes[(7, i)] = BlockNode(7, i, f"loop{i}", str(disk))
    host = HostInventory({}, {}, nodes, {})
    p = make_plan(config(bridges=bridges), request(*(block(i) for i in range(count))), host)
    files = {n.dev_path: str(n.loop_backing_file) for n in nodes.values()}
    steps = plug_steps(hot_devices(p), drive=lambda n: replace(
        n, file_driver="file", filename=files[n.filename]))
    return p, list(steps)
