"""``plan(config, request, inventory) -> Plan``: the one way placement is computed.

Pure: no files, sockets, processes, clock, environment or logging. Steps:

1. :mod:`.route` puts each device in one bucket (cold VFIO, hot VFIO, hot block, node,
   rejected with a reason);
2. :mod:`.units` splits each VFIO device into plug units (one per host slot);
3. :mod:`.topology` sizes and lays out the boot topology from the units, the block volumes
   and the configured counts, checking every budget;
4. the units and volumes are given targets in order, and :mod:`.presentation` turns each into
   its QEMU property map and kata-agent entry.

Cloud Hypervisor (``[hypervisor.clh]``) has no ports or bridges: every device goes on a slot
of its flat root bus (:func:`.topology.build_flat_topology`); such plans are for checking,
as podplug boots only QEMU.

Placement of block volumes (``block_device_driver``): ``virtio-blk`` goes on a ``pci-bridge``
slot when ``default_bridges`` > 0 (Kata's choice) and hot-plug is ACPI, else on a root port
of its own;
``virtio-scsi`` becomes a LUN on the ``scsi0`` controller made at boot. A vhost-user-blk
volume (``enable_vhost_user_store``) is ``vhost-user-blk-pci`` whatever the driver, placed
as a virtio-blk one (Kata's ``hotplugAddVhostUserBlkDevice`` uses a bridge slot on q35),
after a ``chardev-add`` of its backend's socket; its guest RAM is then shared
(:attr:`Plan.shared_memory`). The Go runtime refuses ``enable_vhost_user_store`` without
``enable_hugepages`` (its file-backed huge pages are how it shares RAM); podplug shares it
through ``memory-backend-memfd,share=on`` and says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from podplug.errors import UnsupportedPlatform
from podplug.inputs.kata import PLANNED_HYPERVISORS, PLANNED_MACHINES, RuntimeConfig
from podplug.model.enums import (
    AgentDeviceType,
    BlockDriver,
    Bucket,
    HotplugMode,
    Hypervisor,
    KataRuntime,
    PortKind,
    VfioKind,
    VfioMode,
)
from podplug.model.host import HostInventory
from podplug.model.pci import Bdf, GuestPciPath
from podplug.model.request import ContainerRequest
from podplug.plan.blockdev import BlockdevShape, blockdev_shape
from podplug.plan.model import (
    AgentDevice,
    BlockdevNode,
    Chardev,
    DevicePlan,
    Plan,
    PlannedFunction,
)
from podplug.plan.presentation import (
    disk_name,
    scsi_address,
    scsi_hd_device,
    vfio_agent_device,
    vfio_functions,
    vhost_user_blk_device,
    virtio_blk_device,
)
from podplug.plan.route import PortChoice, Routed, route
from podplug.plan.topology import (
    Controller,
    Demand,
    Target,
    build_flat_topology,
    build_topology,
)
from podplug.plan.units import PlugUnit, plug_units
from podplug.plan.windows import (
    DEFAULT_SPARE_WINDOW,
    Window,
    keeper_size,
    shortfall,
    size_text,
    spare_keeper_size,
    spare_window,
    unit_window,
)


def _check_platform(config: RuntimeConfig) -> None:
    """The parser already refuses these (:mod:`podplug.inputs.kata`); a config built
    another way is held to the same rule."""
    hv = config.hypervisor
    if hv.kind not in PLANNED_HYPERVISORS:
        raise UnsupportedPlatform("hypervisor", hv.kind.value,
                                  [h.value for h in PLANNED_HYPERVISORS])
    if hv.kind is Hypervisor.QEMU and hv.machine_type not in PLANNED_MACHINES:
        raise UnsupportedPlatform(f"[{hv.section}] machine_type", hv.machine_type,
                                  PLANNED_MACHINES)


def vhost_user_refusal(config: RuntimeConfig) -> str | None:
    """Why this configuration plans no vhost-user-blk volume, or None when it does."""
    hv = config.hypervisor
    keys = hv.block
    if hv.kind is not Hypervisor.QEMU:
        return "vhost-user-blk (major 241): Kata plugs vhost-user storage only with QEMU"
    if config.runtime is KataRuntime.RUST:
        return ("vhost-user-blk (major 241): runtime-rs has no major-241 rule for "
                "linux.devices (its SPDK volumes are direct volumes, which podplug does not "
                "read)")
    if not keys.enable_vhost_user_store:
        return (f"vhost-user-blk (major 241) needs enable_vhost_user_store = true in "
                f"[{hv.section}], with its backend socket under vhost_user_store_path "
                f"({keys.vhost_user_store_path}/block/sockets)")
    return None


def _vhost_user_notes(config: RuntimeConfig) -> tuple[str, ...]:
    keys = config.hypervisor.block
    section = config.hypervisor.section
    if keys.enable_hugepages:
        return (f"[{section}] enable_hugepages: podplug shares guest RAM with "
                "memory-backend-memfd,share=on, without huge pages",)
    return (f"[{section}] enable_vhost_user_store without enable_hugepages: Kata's Go "
            "runtime refuses to start such a VM; podplug shares guest RAM with "
            "memory-backend-memfd,share=on instead",)


def _reject_repeats(routed: tuple[Routed, ...]) -> tuple[Routed, ...]:
    """A host function can be passed once: a later node that brings a function an earlier
    one already brings (``/dev/vfio/12`` and its iommufd cdev, say) is rejected, naming it."""
    claimed: dict[Bdf, str] = {}
    out = []
    for item in routed:
        source = item.vfio
        if source is not None and item.bucket is not Bucket.REJECTED:
            taken = [f.bdf for f in source.functions if f.bdf in claimed]
            if taken:
                item = replace(item, bucket=Bucket.REJECTED, reason=(
                    f"{', '.join(map(str, taken))} already passed with "
                    f"{claimed[taken[0]]}: a host function is assigned once"))
            else:
                claimed.update((f.bdf, item.device.path) for f in source.functions)
        out.append(item)
    return tuple(out)


def plan(
    config: RuntimeConfig, request: ContainerRequest, inventory: HostInventory,
    *, hotplug: HotplugMode = HotplugMode.ACPI, spare_floor: Window = DEFAULT_SPARE_WINDOW,
    io_uring: bool = True,
) -> Plan:
    """Plan where every device of ``request`` goes.

    ``hotplug`` matters for placement: with native PCIe hot-plug a ``pci-bridge`` slot
    cannot take a hot-plugged device, so volumes get root ports of their own and
    ``hot_plug_vfio = "bridge-port"`` is rejected. ``spare_floor`` is the least window a
    spare port gets when VFIO is hot-plugged (:mod:`.windows`).

    :raises UnsupportedPlatform: for hypervisors or machine types other than QEMU q35.
    :raises TopologyExhausted: when a topology budget is exceeded.
    """
    _check_platform(config)
    hv = config.hypervisor
    if config.runtime is KataRuntime.RUST:
        choice = PortChoice((PortKind.ROOT_PORT,), hv.section, ("cold_plug_vfio",))
    elif hv.kind is Hypervisor.CLOUD_HYPERVISOR:
        choice = PortChoice((PortKind.ROOT_PORT,), hv.section)
    else:
        choice = PortChoice(section=hv.section)
    routed = _reject_repeats(route(request, inventory, vfio_mode=config.vfio_mode,
                                   cold=hv.cold_plug_vfio, hot=hv.hot_plug_vfio,
                                   hotplug=hotplug, choice=choice,
                                   vhost_refusal=vhost_user_refusal(config)))
    port = hv.vfio_port
    flat = hv.kind is Hypervisor.CLOUD_HYPERVISOR
    units: dict[int, tuple[PlugUnit, ...]] = {}
    on_ports: list[tuple[int, PlugUnit]] = []
    on_bridges: list[tuple[int, PlugUnit]] = []
    for index, item in enumerate(routed):
        if item.bucket in (Bucket.COLD_VFIO, Bucket.HOT_VFIO) and item.vfio is not None:
            units[index] = plug_units(item.vfio.functions)
            for unit in units[index]:
                wants_port = (unit.is_pcie and port is not PortKind.BRIDGE_PORT) or flat
                (on_ports if wants_port else on_bridges).append((index, unit))
    blocks = [i for i, r in enumerate(routed) if r.bucket is Bucket.HOT_BLOCK]
    virtio_blk = hv.block_device_driver is BlockDriver.VIRTIO_BLK
    pci_volumes = [i for i in blocks if virtio_blk or routed[i].vhost is not None]
    blk_on_bridges = hv.default_bridges > 0 and hotplug is HotplugMode.ACPI and not flat
    hot = hv.hot_plug_vfio is not PortKind.NO_PORT
    bridge_functions = [f for _, u in on_bridges for f in u.functions]
    demand = Demand(
        vfio_port_units=len(on_ports),
        vfio_on_switch=port is PortKind.SWITCH_PORT,
        bridge_units=len(on_bridges),
        block_on_bridges=len(pci_volumes) if blk_on_bridges else 0,
        block_on_ports=0 if blk_on_bridges else len(pci_volumes),
        root_ports=hv.pcie_root_port,
        switch_ports=hv.pcie_switch_port,
        bridges=hv.default_bridges,
        scsi_controller=not virtio_blk,
        vfio_windows=tuple(unit_window(u.functions) for _, u in on_ports) if hot else (),
        vfio_keepers=tuple(keeper_size(u.functions) for _, u in on_ports) if hot else (),
        bridge_window=unit_window(bridge_functions) if hot else Window(),
        spare_window=spare_window(inventory, spare_floor) if hot else Window(),
        spare_keeper=spare_keeper_size(inventory, spare_floor) if hot else 0,
    )
    topology = (build_flat_topology(len(on_ports), len(pci_volumes)) if flat
                else build_topology(demand))

    port_targets = iter(topology.vfio_targets)
    bridge_targets = iter(topology.bridge_targets)
    unit_targets: dict[tuple[int, int], Target] = {}
    for index, unit in on_ports:
        unit_targets[(index, id(unit))] = next(port_targets)
    for index, unit in on_bridges:
        unit_targets[(index, id(unit))] = next(bridge_targets)
    block_targets = iter(bridge_targets if blk_on_bridges else topology.block_port_targets)

    iommufd_objects: list[str] = []
    ports = {c.id: c for c in topology.controllers}
    planned: list[DevicePlan] = []
    block_index = vhost_index = 0
    shape = blockdev_shape(config, io_uring=io_uring)
    for index, item in enumerate(routed):
        if index in units:
            planned.append(_vfio_plan(item, units[index], index, unit_targets, config,
                                      request.is_sandbox, iommufd_objects, ports))
        elif item.bucket is Bucket.HOT_BLOCK and item.vhost is not None:
            planned.append(_vhost_user_plan(item, vhost_index, block_targets, config))
            vhost_index += 1
        elif item.bucket is Bucket.HOT_BLOCK:
            planned.append(_block_plan(item, block_index, virtio_blk, block_targets, shape))
            block_index += 1
        else:
            planned.append(DevicePlan(item.device, item.bucket, item.reason, item.in_spec))
    has_vfio = any(d.functions for d in planned)
    return Plan(
        config=config,
        container_type=request.container_type,
        topology=topology,
        devices=tuple(planned),
        guest_iommu=has_vfio and config.vfio_mode is VfioMode.VFIO,
        hotplug=hotplug,
    )


def _vfio_plan(
    item: Routed, units: tuple[PlugUnit, ...], index: int,
    targets: dict[tuple[int, int], Target], config: RuntimeConfig, sandbox: bool,
    iommufd_objects: list[str], ports: dict[str, Controller],
) -> DevicePlan:
    assert item.vfio is not None
    source = item.vfio
    iommufd = None
    if source.kind is VfioKind.IOMMUFD:
        iommufd = f"iommufd{len(iommufd_objects)}"
        iommufd_objects.append(iommufd)
    functions: list[PlannedFunction] = []
    paths: list[GuestPciPath] = []
    notes: list[str] = []
    for unit in units:
        target = targets[(index, id(unit))]
        functions += vfio_functions(unit, target, source, iommufd)
        paths.append(target.path)
        if item.bucket is Bucket.HOT_VFIO and target.bus in ports:
            lack = shortfall(ports[target.bus].window, unit.functions)
            if lack.mem:
                notes.append(
                    f"{unit.functions[0].bdf}: its non-prefetchable BARs need "
                    f"{size_text(lack.mem)} more window than {target.bus} has: a switch "
                    "downstream port gets SeaBIOS's 2M unless a device is there at boot, "
                    "so the hot-plug will leave a BAR unassigned (use root-port)")
            if lack.pref64:
                notes.append(f"{unit.functions[0].bdf}: its prefetchable BARs need "
                             f"{size_text(lack.pref64)} more window than {target.bus} has")
        if unit.is_pcie and target.bus.startswith("pci-bridge"):
            notes.append(f"{unit.functions[0].bdf}: PCIe function behind a PCI bridge loses "
                         "its extended config space (docs/pcie.txt)")
    if len(units) > 1 and config.vfio_mode is VfioMode.VFIO:
        notes.append(f"host group spans {len(units)} slots: {len(units)} guest IOMMU groups "
                     "(the Kata agent expects one per /dev/vfio entry)")
    for bridge in source.skipped_bridges:
        notes.append(f"{bridge}: PCI bridge in the group, not passed (class 0x0604)")
    for function in (f for u in units for f in u.functions):
        if function.driver != "vfio-pci":
            notes.append(f"{function.bdf}: bound to {function.driver or 'no driver'}, "
                         "not vfio-pci (QEMU will refuse a real assignment)")
    agent = None if sandbox else vfio_agent_device(
        source, tuple(functions), item.device.path, config.vfio_mode)
    return DevicePlan(item.device, item.bucket, item.reason, item.in_spec, tuple(paths),
                      tuple(functions), agent=agent, notes=tuple(notes))


def _vhost_user_plan(item: Routed, index: int, targets: Iterator[Target],
                     config: RuntimeConfig) -> DevicePlan:
    """A vhost-user-blk volume: its backend's socket, the PCI device, and the agent entry
    Kata sends for it (``appendVhostUserBlkDevice``: type ``blk``, id the PCI path, no
    ``vm_path``)."""
    assert item.vhost is not None
    target = next(targets)
    chardev = Chardev(f"char-vublk{index}", item.vhost.socket,
                      config.hypervisor.block.vhost_user_reconnect_timeout_sec)
    notes = list(_vhost_user_notes(config))
    if not item.vhost.socket_present:
        notes.append(f"no backend listens at {item.vhost.socket} yet: Kata fails the "
                     "container if none does when it starts")
    agent = AgentDevice(str(target.path), AgentDeviceType.BLK, "", item.device.path)
    return DevicePlan(item.device, item.bucket, item.reason, item.in_spec, (target.path,),
                      qemu=vhost_user_blk_device(index, chardev.id, target), chardev=chardev,
                      agent=agent, notes=tuple(notes))


def _block_plan(
    item: Routed, block_index: int, virtio_blk: bool, targets: Iterator[Target],
    shape: BlockdevShape,
) -> DevicePlan:
    assert item.block is not None
    node = BlockdevNode(f"drive-blk{block_index}", "raw", "host_device", item.block.dev_path,
                        aio=shape.aio.value, node_cache=shape.node_cache,
                        file_direct=shape.file_direct)
    if virtio_blk:
        target = next(targets)
        qemu = virtio_blk_device(block_index, node.node_name, target)
        agent = AgentDevice(str(target.path), AgentDeviceType.BLK,
                            "/dev/" + disk_name("vd", block_index), item.device.path)
        return DevicePlan(item.device, item.bucket, item.reason, item.in_spec, (target.path,),
                          blockdev=node, qemu=qemu, agent=agent, notes=shape.notes)
    scsi_id, lun = scsi_address(block_index)
    address = f"{scsi_id}:{lun}"
    agent = AgentDevice(address, AgentDeviceType.SCSI, "/dev/" + disk_name("sd", block_index),
                        item.device.path)
    return DevicePlan(item.device, item.bucket, item.reason, item.in_spec, (),
                      blockdev=node, qemu=scsi_hd_device(block_index, node.node_name),
                      scsi_address=address, agent=agent, notes=shape.notes)
