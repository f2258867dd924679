"""The PCIe hierarchy as a Graphviz digraph (``podplug plan --format dot``)."""

from __future__ import annotations

from podplug.plan.model import Plan
from podplug.plan.topology import ROOT_BUS


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_dot(plan: Plan) -> str:
    lines = ["digraph podplug {", "  rankdir=LR;", "  node [shape=box, fontname=monospace];",
             f"  {_q(ROOT_BUS)} [label={_q('q35 ' + ROOT_BUS)}, shape=box3d];"]
    for c in plan.topology.controllers:
        label = f"{c.id}\\n{c.role.value}\\n{c.use.value} @ {c.addr:02x}.0"
        lines.append(f"  {_q(c.id)} [label={_q(label)}];")
        lines.append(f"  {_q(c.bus)} -> {_q(c.id)};")
    for device in plan.devices:
        for qemu in device.qemu_devices:
            bus = qemu.bus.removesuffix(".0") if qemu.driver == "scsi-hd" else qemu.bus
            label = f"{qemu.id}\\n{device.request.path}\\n{device.bucket.value}"
            lines.append(f"  {_q(qemu.id)} [label={_q(label)}, style=filled, "
                         f"fillcolor={_q('lightblue' if 'vfio' in qemu.driver else 'khaki')}];")
            lines.append(f"  {_q(bus)} -> {_q(qemu.id)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
