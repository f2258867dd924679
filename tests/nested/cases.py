"""The nested check's cases: Kata configurations podplug runs inside L1 (pure values).

Each case is one ``podplug run`` in L1, so one L2 boot: the configurations Kata users pick
for VFIO (``vfio_mode``, ``cold_plug_vfio`` / ``hot_plug_vfio`` on root or switch ports)
with the GPU-shaped group and the single function, plus a raw block volume where cold
plug once dropped it (Kata issue #11288).
"""

from __future__ import annotations

CONFIG = """\
# nested check: real VFIO inside L1 ({name})
[hypervisor.qemu]
path = "{qemu}"
machine_type = "q35"
block_device_driver = "virtio-blk"
default_bridges = 1
hot_plug_vfio = "{hot}"
cold_plug_vfio = "{cold}"
pcie_root_port = {root}
pcie_switch_port = {switch}

[runtime]
vfio_mode = "{mode}"
"""

GPU = ("gpu0", "gpu1")  # one group: both functions of the GPU-shaped slot
SINGLE = ("single",)


def case(name: str, *, mode: str = "vfio", cold: str = "no-port", hot: str = "no-port",
         functions: tuple[str, ...] = (*GPU, *SINGLE), volume: bool = True,
         qemu: str = "/usr/bin/qemu-system-x86_64", viable: bool = True) -> dict[str, object]:
    groups = {"gpu" if f in GPU else f for f in functions}
    ports = len(groups) + 1  # one per group, one spare
    root = ports if "root-port" in (cold, hot) else 0
    switch = ports if "switch-port" in (cold, hot) else 0
    return {"name": name, "functions": list(functions), "volume": volume,
            "hot": hot != "no-port", "viable": viable,
            "config": CONFIG.format(name=name, qemu=qemu, mode=mode, cold=cold, hot=hot,
                                    root=root, switch=switch)}


#: legacy VFIO groups (``/dev/vfio/<group>``), L1 on podplug's own kernel and QEMU. The
#: GPU-shaped slot is conventional PCI in L1 (ivshmem and edu have no PCIe capability, so a
#: 256-byte config space): Kata's ``IsPCIeDevice`` rule, which podplug follows, sends it to
#: the PCI bridge whatever the port keys say, where every device shares one guest IOMMU
#: group; with a volume on that bridge the group is not viable ("bridge-shared").
ALL_LEGACY = (
    case("cold-root", cold="root-port", volume=False),
    case("hot-root", hot="root-port", volume=False),
    case("bridge-shared", cold="root-port", viable=False),
    case("cold-switch", cold="switch-port", volume=False),
    case("hot-switch", hot="switch-port", volume=False),
    case("single-volume", cold="root-port", functions=SINGLE),
)

#: what the test suite runs by default: each case costs an L2 boot (TCG in TCG: 5-6 min of
#: boot and 5-10 min of proofs measured on a shared 2-core machine), so CI takes the cold and
#: the hot root-port cases; ``PODPLUG_NESTED_CASES=all`` (or a comma list of names) runs more
CI = ("cold-root", "hot-root")


def selected(choice: str) -> tuple[dict[str, object], ...]:
    """The cases named by ``PODPLUG_NESTED_CASES`` ("" = :data:`CI`, "all" = every one)."""
    names = [c["name"] for c in ALL_LEGACY] if choice == "all" else (
        choice.split(",") if choice else list(CI))
    known = {str(c["name"]): c for c in ALL_LEGACY}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"PODPLUG_NESTED_CASES: unknown case(s) {', '.join(unknown)} "
                         f"(known: {', '.join(known)}, all)")
    return tuple(known[n] for n in names)
