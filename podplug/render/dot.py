"""The PCIe hierarchy as a Graphviz digraph (``podplug plan --format dot``)."""

from __future__ import annotations

from podplug.plan.model import Plan
from podplug.plan.topology import ROOT_BUS


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _q(text: str) -> str:
    """A quoted Graphviz ID."""
    return f'"{_escape(text)}"'


def _label(*lines: str) -> str:
    """A quoted label whose lines Graphviz breaks (``\\n`` between escaped lines)."""
    return '"' + "\\n".join(_escape(line) for line in lines) + '"'


def render_dot(plan: Plan) -> str:
    lines = ["digraph podplug {", "  rankdir=LR;", "  node [shape=box, fontname=monospace];",
             f"  {_q(ROOT_BUS)} [label={_q('q35 ' + ROOT_BUS)}, shape=box3d];"]
    for c in plan.topology.controllers:
        label = _label(c.id, c.role.value, f"{c.use.value} @ {c.addr:02x}.0")
        lines.append(f"  {_q(c.id)} [label={label}];")
        lines.append(f"  {_q(c.bus)} -> {_q(c.id)};")
    for device in plan.devices:
        for qemu in device.qemu_devices:
            bus = qemu.bus.removesuffix(".0") if qemu.driver == "scsi-hd" else qemu.bus
            label = _label(qemu.id, device.request.path, device.bucket.value)
            lines.append(f"  {_q(qemu.id)} [label={label}, style=filled, "
                         f"fillcolor={_q('lightblue' if 'vfio' in qemu.driver else 'khaki')}];")
            lines.append(f"  {_q(bus)} -> {_q(qemu.id)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
