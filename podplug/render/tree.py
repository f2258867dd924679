"""A text tree of the PCIe hierarchy with every device, its plug mode and guest path."""

from __future__ import annotations

from podplug.model.enums import Bucket, Hypervisor
from podplug.plan.model import DevicePlan, Plan, QemuDevice
from podplug.plan.topology import AGENT_SLOT, CLH_BUS, ROOT_BUS, Controller, Role, Use
from podplug.plan.windows import size_text

_ROLE = {
    "pcie-root-port": "root port",
    "x3130-upstream": "switch upstream port",
    "xio3130-downstream": "switch downstream port",
    "pci-bridge": "pci-bridge",
    "virtio-scsi-pci": "virtio-scsi controller",
}


def _device_line(qemu: QemuDevice, device: DevicePlan, path: str) -> str:
    props = dict(qemu.props)
    where = f"{props['addr']}" if "addr" in props else f"scsi {device.scsi_address}"
    host = f" host {props['host']}" if "host" in props else ""
    if device.blockdev is not None:
        host = f" host {device.blockdev.filename}"
    return (f"{where} {qemu.id} [{qemu.driver}] {device.request.path} "
            f"{device.bucket.value}{f' guest {path}' if path else ''}{host}")


def _children(plan: Plan) -> dict[str, list[tuple[str, str]]]:
    """bus id -> lines of what sits on it (controllers by id, devices rendered)."""
    children: dict[str, list[tuple[str, str]]] = {}
    for controller in plan.topology.controllers:
        children.setdefault(controller.bus, []).append(("ctl", controller.id))
    for device in plan.devices:
        for qemu in device.qemu_devices:
            path = _function_path(device, qemu) if device.functions else (
                str(device.guest_paths[0]) if device.guest_paths else "")
            children.setdefault(qemu.bus, []).append(("dev", _device_line(qemu, device, path)))
    return children


def _function_path(device: DevicePlan, qemu: QemuDevice) -> str:
    return next((str(f.guest_path) for f in device.functions if f.qemu.id == qemu.id), "")


def _controller_label(controller: Controller) -> str:
    plain = controller.use in (Use.SWITCH, Use.BRIDGE, Use.SCSI)
    use = "" if plain else f", {controller.use.value}"
    window = controller.window
    if controller.keeper:
        extra = f" window kept by keep-{controller.id}: pref64 {size_text(window.pref64)}"
    elif any(k in ("mem-reserve", "pref64-reserve") for k, _ in controller.reserves) \
            and controller.role is not Role.PCI_BRIDGE:
        extra = f" window: mem {size_text(window.mem)} pref64 {size_text(window.pref64)}"
    else:
        extra = ""
    return f"{controller.addr:02x}.0 {controller.id} [{_ROLE[controller.role.value]}{use}]{extra}"


def render_tree(plan: Plan) -> str:
    hv = plan.config.hypervisor
    clh = hv.kind is Hypervisor.CLOUD_HYPERVISOR
    root = CLH_BUS if clh else ROOT_BUS
    lines = [
        f"{'cloud-hypervisor' if clh else 'q35'} {root}  vfio_mode={plan.config.vfio_mode.value} "
        f"cold_plug_vfio={hv.cold_plug_vfio.value} hot_plug_vfio={hv.hot_plug_vfio.value} "
        f"block_device_driver={hv.block_device_driver.value}"
        f"{'' if clh else f' hotplug={plan.hotplug.value}'}"
        f"{'  guest IOMMU: ' if plan.guest_iommu else ''}"
        f"{('virtio-iommu' if clh else 'intel-iommu') if plan.guest_iommu else ''}",
    ]
    children = _children(plan)
    controllers = {c.id: c for c in plan.topology.controllers}

    def walk(bus: str, prefix: str) -> None:
        entries = children.get(bus, [])
        for position, (kind, value) in enumerate(entries):
            last = position == len(entries) - 1
            lines.append(prefix + ("└── " if last else "├── ") + (
                _controller_label(controllers[value]) if kind == "ctl" else value))
            if kind == "ctl":
                inner = prefix + ("    " if last else "│   ")
                walk(value, inner)
                if controllers[value].role.value == "virtio-scsi-pci":
                    walk(value + ".0", inner)

    if not clh:
        lines.append(f"├── {AGENT_SLOT:02x}.0 agent channel [virtio-serial-pci, podplug run]")
    walk(root, "")
    others = [d for d in plan.devices if not d.qemu_devices]
    if others:
        lines.append("not on a PCI bus:")
        for device in others:
            spec = "" if device.in_spec else " (stripped from the spec: guest-kernel mode)"
            lines.append(f"  {device.request.path} {device.bucket.value}: {device.reason}{spec}")
    for note in plan.config.notes:
        lines.append(f"note: {note}")
    for device in plan.devices:
        for note in device.notes:
            lines.append(f"note: {device.request.path}: {note}")
    counts = plan.counts()
    lines.append("devices: " + ", ".join(f"{counts[b]} {b.value}" for b in Bucket)
                 + f" (of {len(plan.devices)} requested)")
    return "\n".join(lines) + "\n"
