"""The run report: one row per requested container device, as values; rendered as a table
or JSON. Pure.

A row is usable only when the guest proved it through its kata-agent entry (the entry sent
and what it resolved to are part of the row): a block volume's entry resolved to the
planned disk, whose node opened, read, wrote and survived a filesystem round trip; each
function of a VFIO entry resolved to its own guest function at the planned guest PCI path,
with its BARs inside the port's windows (and in ``vfio`` mode bound to vfio-pci in one guest
IOMMU group whose node opens in the container's dev directory); a plain node opened. A
rejected device is never usable, and says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceRow:
    """What happened to one requested container device."""

    path: str
    bucket: str
    qemu: str = ""  # "id@bus" of each QEMU device, comma-separated
    planned_path: str = ""
    actual_path: str = ""
    guest_node: str = ""
    container_node: str = ""
    check: str = ""
    seconds: float = 0.0
    usable: bool = False
    error: str = ""
    entry: dict[str, object] | None = None  # the kata-agent Device entry sent to the guest
    resolved: dict[str, str] | None = None  # host BDF -> guest BDF, or the volume's node
    #: host BDF -> BAR -> the first bytes the guest read there, hex ("" refused)
    peeks: dict[str, dict[str, str]] | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "path": self.path, "bucket": self.bucket, "qemu": self.qemu,
            "planned_guest_path": self.planned_path, "actual_guest_path": self.actual_path,
            "agent_entry": self.entry, "resolved": self.resolved,
            "guest_node": self.guest_node, "container_node": self.container_node,
            "peeks": self.peeks, "check": self.check, "seconds": round(self.seconds, 3),
            "usable": self.usable,
            "error": self.error,
        }


@dataclass(frozen=True)
class RunReport:
    """The whole run: how the VM was made, how long each phase took, and every row."""

    rows: tuple[DeviceRow, ...]
    accel: str
    emulated_vfio: bool
    notes: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def all_usable(self) -> bool:
        return all(row.usable for row in self.rows)

    def as_json(self) -> dict[str, object]:
        return {
            "accel": self.accel, "emulated_vfio": self.emulated_vfio, "notes": list(self.notes),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "devices": [r.as_json() for r in self.rows], "all_usable": self.all_usable,
        }


_COLUMNS = (("device", "path"), ("bucket", "bucket"), ("qemu id@bus", "qemu"),
            ("planned", "planned_path"), ("actual", "actual_path"), ("guest", "guest_node"),
            ("container node", "container_node"), ("check", "check"))


def render_table(report: RunReport) -> str:
    """A fixed-width table, a status word and time per row, then the notes."""
    rows = [[str(getattr(r, attr)) or "-" for _, attr in _COLUMNS]
            + [f"{r.seconds:.2f}s", "OK" if r.usable else "FAIL"] for r in report.rows]
    head = [title for title, _ in _COLUMNS] + ["time", "result"]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=False)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in [head, *rows]]
    for row in report.rows:
        if row.error:
            lines.append(f"FAIL {row.path}: {row.error}")
    lines += [f"note: {n}" for n in report.notes]
    usable = sum(r.usable for r in report.rows)
    lines.append(f"{usable} of {len(report.rows)} requested devices usable in the guest")
    return "\n".join(lines) + "\n"
