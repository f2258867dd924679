"""Size and lay out the q35 PCIe topology made at boot.

Rules (QEMU ``docs/pcie.txt``; research ``anchors.md`` §1):

* §5: nothing is hot-plugged onto the root bus ``pcie.0``; every device podplug plugs goes
  on a ``pcie-root-port``, a switch downstream port (``xio3130-downstream`` below an
  ``x3130-upstream`` on a root port) or a ``pci-bridge`` slot, all made at boot.
* The planner owns addressing: every controller gets an explicit root-bus ``addr``; slot
  0x00 (host bridge) and 0x1f (ICH9 LPC/SATA/SMBus) are q35's, 0x01 is the agent channel.
  Root-bus slots are laid out in a fixed order: agent channel, ``pci-bridge``s (Kata puts
  them from 0x02), the ``virtio-scsi`` controller, root ports for VFIO (cold- or hot-plugged
  ones first, then the configured spares: spare ports come after used ones, so guest
  addresses never shift), switch root ports, then root ports for block volumes.
* One root port per root-bus slot, function 0, no multifunction packing: Kata's guest PCI
  path (``02/00``) has no function field, so ports packed as functions of one slot could not
  be told apart by the agent. The cost is a 30-port ceiling on pcie.0; beyond it use
  ``switch-port`` (up to 32 downstream ports per switch, switches added as needed).
* Every root port, switch upstream port, downstream port and bridge takes a bus number;
  buses 1-255 are the budget (one PCI domain on x86).
* (chassis, slot) is unique across PCIe ports (QEMU refuses duplicates); ``pci-bridge``
  ``chassis_nr`` values are unique too and drawn from the same counter.
* Root ports get ``io-reserve=0``: podplug's PCIe devices need no IO window, and without it
  each port costs 4 KiB of the 64 KiB IO space (the origin of Kata's 16-port cap).
* Every port that can take a hot-plugged device gets its memory windows at boot, sized in
  :mod:`.windows`: a root port by ``mem-reserve`` / ``pref64-reserve``, a switch downstream
  port (which has no reserve properties) by a *window keeper* device that firmware sizes
  and podplug unplugs once the guest is up (:attr:`Controller.keeper`). Bridges keep Kata's
  ``io-reserve=4k,mem-reserve=1m,pref64-reserve=1m`` (raised for hot VFIO units placed on
  them) and ``shpc=off`` (never SHPC: Kata #2174).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from podplug.errors import TopologyExhausted
from podplug.model.pci import GuestPciPath
from podplug.plan.windows import (
    DOWNSTREAM_MEM,
    FIRMWARE_WINDOW,
    NO_WINDOW,
    Window,
    size_text,
)

ROOT_BUS = "pcie.0"
HOST_BRIDGE_SLOT = 0x00
LPC_SLOT = 0x1F
AGENT_SLOT = 0x01
FIRST_FREE_SLOT = 0x02
ROOT_BUS_SLOTS = tuple(range(FIRST_FREE_SLOT, LPC_SLOT))  # 0x02..0x1e: 29 slots
BUS_NUMBERS = 255  # buses 1..255 below pcie.0 (bus 0)
DOWNSTREAM_PER_SWITCH = 32
BRIDGE_SLOTS = tuple(range(1, 32))  # pci-bridge slots 1..31 (shpc=off)
MAX_BRIDGES = 5


class Role(Enum):
    """What a controller is."""

    ROOT_PORT = "pcie-root-port"
    SWITCH_UPSTREAM = "x3130-upstream"
    SWITCH_DOWNSTREAM = "xio3130-downstream"
    PCI_BRIDGE = "pci-bridge"
    SCSI_CONTROLLER = "virtio-scsi-pci"


class Use(Enum):
    """What a controller is for."""

    VFIO = "vfio"  # a port for a planned VFIO unit (cold or hot)
    SPARE = "spare"  # configured beyond what the devices need: free for later hot-plug
    BLOCK = "block"  # a root port for one virtio-blk volume (no bridges configured)
    SWITCH = "switch"  # the root port and upstream port carrying a switch
    BRIDGE = "bridge"
    SCSI = "scsi"


@dataclass(frozen=True)
class Controller:
    """One controller of the boot topology, as planned."""

    id: str
    role: Role
    use: Use
    bus: str
    addr: int  # slot on its parent bus
    path: GuestPciPath  # the controller's own guest PCI path
    chassis: int | None = None
    slot: int | None = None  # physical slot number (PCIe slot capability)
    reserves: tuple[tuple[str, str], ...] = ()
    keeper: int = 0  # a downstream port's window keeper: its PMR size (0: none)
    window: Window = FIRMWARE_WINDOW  # the windows a device hot-plugged here finds

    @property
    def takes_bus_number(self) -> bool:
        return self.role is not Role.SCSI_CONTROLLER


@dataclass(frozen=True)
class Target:
    """A place a device can go: a bus and a slot on it."""

    bus: str
    addr: int
    path: GuestPciPath  # the guest PCI path a device there will have


@dataclass(frozen=True)
class Demand:
    """What the devices and configuration ask of the topology."""

    vfio_port_units: int = 0  # PCIe VFIO units needing a root or downstream port
    vfio_on_switch: bool = False  # those units go to switch downstream ports
    bridge_units: int = 0  # units placed on pci-bridge slots (bridge-port, or legacy PCI)
    block_on_bridges: int = 0  # PCI volumes (virtio-blk, vhost-user-blk) on bridge slots
    block_on_ports: int = 0  # PCI volumes on root ports of their own
    root_ports: int = 0  # configured pcie_root_port
    switch_ports: int = 0  # configured pcie_switch_port
    bridges: int = 0  # configured default_bridges
    scsi_controller: bool = False
    vfio_windows: tuple[Window, ...] = ()  # per VFIO unit on a port, when hot-plugged
    vfio_keepers: tuple[int, ...] = ()  # per VFIO unit, its keeper size on a downstream port
    bridge_window: Window = NO_WINDOW  # what hot VFIO units on bridge slots need together
    spare_window: Window = NO_WINDOW  # a spare root port's window (when VFIO is hot-plugged)
    spare_keeper: int = 0  # a spare downstream port's keeper size (when VFIO is hot-plugged)


@dataclass(frozen=True)
class Topology:
    """The boot topology: controllers in command-line order, and where devices go."""

    controllers: tuple[Controller, ...]
    vfio_targets: tuple[Target, ...]  # one per VFIO unit, in unit order
    bridge_targets: tuple[Target, ...]  # bridge slots: VFIO bridge units first, then blocks
    block_port_targets: tuple[Target, ...]
    spare_targets: tuple[Target, ...]
    bus_numbers: int
    root_slots_used: int

    def controller(self, id_: str) -> Controller:
        for controller in self.controllers:
            if controller.id == id_:
                return controller
        raise KeyError(id_)


KATA_BRIDGE_WINDOW = Window(mem=1 << 20, pref64=1 << 20)


def _root_port_reserves(window: Window) -> tuple[tuple[str, str], ...]:
    reserves = [("io-reserve", "0")]
    if window.mem:
        reserves.append(("mem-reserve", size_text(window.mem)))
    if window.pref64:
        reserves.append(("pref64-reserve", size_text(window.pref64)))
    return tuple(reserves)


class _Layout:
    """Accumulates controllers while handing out root-bus slots and chassis numbers."""

    def __init__(self) -> None:
        self.controllers: list[Controller] = []
        self.free_slots = list(ROOT_BUS_SLOTS)
        self.needed_slots = 0
        self.next_chassis = 1
        self.root_chassis: int | None = None
        self.counts: dict[str, int] = {}

    def _slot(self) -> int:
        self.needed_slots += 1
        return self.free_slots.pop(0) if self.free_slots else -1

    def _chassis(self) -> int:
        chassis = self.next_chassis
        self.next_chassis += 1
        return chassis

    def _name(self, prefix: str) -> str:
        index = self.counts.get(prefix, 0)
        self.counts[prefix] = index + 1
        return f"{prefix}{index}"

    def bridge(self, window: Window) -> Controller:
        slot = self._slot()
        index = self.counts.get("pci-bridge-", 0)
        self.counts["pci-bridge-"] = index + 1
        window = window | KATA_BRIDGE_WINDOW
        controller = Controller(
            f"pci-bridge-{index}", Role.PCI_BRIDGE, Use.BRIDGE, ROOT_BUS, slot,
            GuestPciPath((max(slot, 0),)), chassis=self._chassis(),
            reserves=(("io-reserve", "4K"), ("mem-reserve", size_text(window.mem)),
                      ("pref64-reserve", size_text(window.pref64))),
            window=window,
        )
        self.controllers.append(controller)
        return controller

    def scsi(self) -> None:
        slot = self._slot()
        self.controllers.append(Controller("scsi0", Role.SCSI_CONTROLLER, Use.SCSI, ROOT_BUS,
                                           slot, GuestPciPath((max(slot, 0),))))

    def root_port(self, use: Use, prefix: str, window: Window = NO_WINDOW) -> Controller:
        slot = self._slot()
        if self.root_chassis is None:
            self.root_chassis = self._chassis()
        controller = Controller(
            self._name(prefix), Role.ROOT_PORT, use, ROOT_BUS, slot,
            GuestPciPath((max(slot, 0),)), chassis=self.root_chassis, slot=self.needed_slots,
            reserves=_root_port_reserves(window), window=window | FIRMWARE_WINDOW,
        )
        self.controllers.append(controller)
        return controller

    def switch(self, downstream: list[tuple[Use, int]]) -> list[Controller]:
        """A switch with one downstream port per (use, keeper size)."""
        holder = self.root_port(Use.SWITCH, "swrp")
        upstream = Controller(self._name("swup"), Role.SWITCH_UPSTREAM, Use.SWITCH, holder.id,
                              0, holder.path.child(0))
        self.controllers.append(upstream)
        chassis = self._chassis()
        ports = []
        for index, (use, keeper) in enumerate(downstream):
            port = Controller(self._name("swdp"), Role.SWITCH_DOWNSTREAM, use, upstream.id,
                              index, upstream.path.child(index), chassis=chassis, slot=index,
                              keeper=keeper,
                              window=Window(DOWNSTREAM_MEM, keeper, aligned=True)
                              if keeper else FIRMWARE_WINDOW)
            ports.append(port)
            self.controllers.append(port)
        return ports


CLH_BUS = "pci_segment0"
CLH_SLOTS = tuple(range(0x01, 0x20))  # slot 0 is the segment's host bridge


def build_flat_topology(units: int, blocks: int) -> Topology:
    """Cloud Hypervisor: a flat root bus per PCI segment, no ports or bridges, hot-plug onto
    the root bus through ACPI GED (anchors §4; Kata runtime-rs: "CLH and Dragonball support
    device attachment solely on the root bus"). podplug places everything on segment 0.

    :raises TopologyExhausted: when segment 0's 31 device slots do not suffice.
    """
    needed = units + blocks
    if needed > len(CLH_SLOTS):
        raise TopologyExhausted("Cloud Hypervisor PCI segment 0 slots", needed, len(CLH_SLOTS))
    targets = [Target(CLH_BUS, slot, GuestPciPath((slot,))) for slot in CLH_SLOTS[:needed]]
    return Topology(
        controllers=(), vfio_targets=tuple(targets[:units]), bridge_targets=(),
        block_port_targets=tuple(targets[units:]), spare_targets=(), bus_numbers=0,
        root_slots_used=needed,
    )


def build_topology(demand: Demand) -> Topology:
    """Lay out the controllers for ``demand`` and check every budget.

    :raises TopologyExhausted: naming the budget (root-bus slots, bus numbers, bridge slots).
    """
    layout = _Layout()
    bridge_needed = demand.bridge_units + demand.block_on_bridges
    bridge_count = max(demand.bridges, -(-bridge_needed // len(BRIDGE_SLOTS)))
    if bridge_count > MAX_BRIDGES:
        raise TopologyExhausted(
            "pci-bridge slots", bridge_needed, MAX_BRIDGES * len(BRIDGE_SLOTS),
            f"at most {MAX_BRIDGES} bridges of {len(BRIDGE_SLOTS)} slots")
    bridges = [layout.bridge(demand.bridge_window) for _ in range(bridge_count)]
    if demand.scsi_controller:
        layout.scsi()

    vfio_targets: list[Target] = []
    spare: list[Target] = []
    windows, keepers = demand.vfio_windows, demand.vfio_keepers
    on_root = 0 if demand.vfio_on_switch else demand.vfio_port_units
    for index in range(max(on_root, demand.root_ports)):
        used = index < on_root
        window = (windows[index] if index < len(windows) else NO_WINDOW) if used \
            else demand.spare_window
        port = layout.root_port(Use.VFIO if used else Use.SPARE, "rp", window)
        (vfio_targets if used else spare).append(Target(port.id, 0, port.path.child(0)))
    on_switch = demand.vfio_port_units if demand.vfio_on_switch else 0
    downstream = max(on_switch, demand.switch_ports)
    uses = [(Use.VFIO, keepers[i] if i < len(keepers) else 0) if i < on_switch
            else (Use.SPARE, demand.spare_keeper) for i in range(downstream)]
    for start in range(0, downstream, DOWNSTREAM_PER_SWITCH):
        for port in layout.switch(uses[start:start + DOWNSTREAM_PER_SWITCH]):
            target = Target(port.id, 0, port.path.child(0))
            (vfio_targets if port.use is Use.VFIO else spare).append(target)
    block_ports = []
    for _ in range(demand.block_on_ports):
        port = layout.root_port(Use.BLOCK, "rp")
        block_ports.append(Target(port.id, 0, port.path.child(0)))

    if layout.needed_slots > len(ROOT_BUS_SLOTS):
        raise TopologyExhausted(
            "root-bus slots (pcie.0 0x02-0x1e)", layout.needed_slots, len(ROOT_BUS_SLOTS),
            'use cold_plug_vfio/hot_plug_vfio = "switch-port" to put more devices behind '
            "one root port")
    buses = sum(1 for c in layout.controllers if c.takes_bus_number)
    if buses > BUS_NUMBERS:
        raise TopologyExhausted("PCI bus numbers (1-255)", buses, BUS_NUMBERS)
    bridge_targets = [Target(b.id, s, b.path.child(s)) for b in bridges for s in BRIDGE_SLOTS]
    return Topology(
        controllers=tuple(layout.controllers),
        vfio_targets=tuple(vfio_targets),
        bridge_targets=tuple(bridge_targets[:bridge_needed]),
        block_port_targets=tuple(block_ports),
        spare_targets=tuple(spare + bridge_targets[bridge_needed:]),
        bus_numbers=buses,
        root_slots_used=layout.needed_slots,
    )
