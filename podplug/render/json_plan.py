"""The whole plan as JSON-ready data (``podplug plan --format json``)."""

from __future__ import annotations

from podplug.model.enums import Hypervisor
from podplug.plan.model import DevicePlan, Plan
from podplug.plan.presentation import controller_device
from podplug.render.argv import render_argv
from podplug.render.qmp import render_qmp


def _device(device: DevicePlan) -> dict[str, object]:
    request = device.request
    return {
        "path": request.path,
        "type": request.type.value,
        "major": request.major,
        "minor": request.minor,
        "source": request.source,
        "bucket": device.bucket.value,
        "reason": device.reason,
        "in_spec": device.in_spec,
        "guest_paths": [str(p) for p in device.guest_paths],
        "qemu": [{"driver": q.driver, **dict(q.props)} for q in device.qemu_devices],
        "blockdev": device.blockdev.arguments() if device.blockdev else None,
        "chardev": device.chardev.arguments() if device.chardev else None,
        "scsi_address": device.scsi_address,
        "agent": device.agent.as_json() if device.agent else None,
        "notes": list(device.notes),
    }


def plan_json(plan: Plan) -> dict[str, object]:
    hv = plan.config.hypervisor
    qemu = hv.kind is Hypervisor.QEMU
    return {
        "config": {
            "hypervisor": hv.kind.value,
            "machine_type": hv.machine_type,
            "vfio_mode": plan.config.vfio_mode.value,
            "cold_plug_vfio": hv.cold_plug_vfio.value,
            "hot_plug_vfio": hv.hot_plug_vfio.value,
            "pcie_root_port": hv.pcie_root_port,
            "pcie_switch_port": hv.pcie_switch_port,
            "block_device_driver": hv.block_device_driver.value,
            "default_bridges": hv.default_bridges,
        },
        "hotplug": plan.hotplug.value,
        "container_type": plan.container_type.value,
        "guest_iommu": plan.guest_iommu,
        "topology": {
            "controllers": [
                {"driver": q.driver, **dict(q.props), "use": c.use.value, "path": str(c.path)}
                for c in plan.topology.controllers for q in (controller_device(c),)
            ],
            "bus_numbers": plan.topology.bus_numbers,
            "root_slots_used": plan.topology.root_slots_used,
            "spare_targets": [
                {"bus": t.bus, "addr": t.addr, "path": str(t.path)}
                for t in plan.topology.spare_targets
            ],
        },
        "devices": [_device(d) for d in plan.devices],
        "container_devices": [d.request.path for d in plan.container_devices],
        "agent_devices": [a.as_json() for a in plan.agent_devices],
        "counts": {b.value: n for b, n in plan.counts().items()},
        "argv": render_argv(plan) if qemu else None,
        "qmp": render_qmp(plan) if qemu else None,
    }
