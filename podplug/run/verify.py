"""Prove each planned device in the guest through the kata-agent entry podplug emits.

The guest is handed every ``Device`` entry exactly as rendered for Kata's agent (``id``,
``type``, ``vm_path``, ``container_path``, ``options``) and resolves it by the agent's rules
with nothing else from the plan (agent verb ``device``, see :mod:`podplug.guest.protocol`).
The nodes that resolution creates in the container's dev directory are what the checks
open. Then this module reads what the judgement needs and :mod:`podplug.run.expect` (pure)
compares it with the plan's predictions; any difference fails the device and names it.

Per entry type (what the guest does, then what is read):

* ``blk`` / ``scsi``: the disk below the PCI path or at the SCSI address gets a node at the
  container path with the guest numbers (the agent's ``update_spec_devices``); read: the
  disk's serial, its size and the digests of its first and last 4 KiB (compared with the
  host volume's); on a volume the run may write (:mod:`podplug.run.volumes`), also a
  read/write of the node and a filesystem round trip (the Kubernetes block-volume check,
  ``k8s-block-volume.bats``);
* ``vfio-pci``: every function waited for, bound to vfio-pci, one guest IOMMU group, node
  ``/dev/vfio/<group>`` (opened); ``vfio-pci-gk``: waited for, left on its guest driver;
  read: ``lspci`` (vendor:device, driver, sysfs ancestry), the BARs and the windows of the
  port above, and the serial of an emulated stand-in;
* no entry: a plain node is created as the spec gives it and opened (after the entries, as
  the guest's modules are loaded by then); a ``/dev/vfio/*`` node in ``guest-kernel`` mode is
  left out of the container, as Kata strips it; a sandbox container's cold-plugged VFIO
  device has no entry (Kata PR #13681) and is only looked for at its planned path.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from dataclasses import replace as _replace

from podplug.errors import AgentLost, PodplugError
from podplug.guest.agent_client import AgentClient
from podplug.guest.protocol import (
    AgentReply,
    GuestPciDevice,
    Resolution,
    parse_bars,
    parse_lspci,
    parse_resolution,
)
from podplug.host.volumes import VolumeFacts
from podplug.model.enums import AgentDeviceType, Bucket
from podplug.model.host import HostInventory
from podplug.plan.model import AgentDevice, DevicePlan, Plan
from podplug.plan.route import VFIO_DIR
from podplug.plan.standin import STANDIN_DRIVER, STANDIN_VENDOR_DEVICE
from podplug.run.expect import (
    FunctionSeen,
    VolumeSeen,
    expectations,
    vfio_problems,
    volume_problems,
)
from podplug.run.report import DeviceRow
from podplug.run.volumes import Depth

WAIT_MS = 5000
CALL_TIMEOUT_S = 30.0
DEFAULT_MODE = 0o660


def entry_args(entry: AgentDevice) -> tuple[str, ...]:
    """An entry as the ``device`` verb takes it: TYPE ID VM_PATH CPATH OPTION..."""
    return (entry.type.value, entry.id, entry.vm_path or "-", entry.container_path,
            *entry.options)


@dataclass
class GuestProver:
    """Runs the per-device proofs against one guest."""

    agent: AgentClient
    plan: Plan
    inventory: HostInventory
    container_dir: str
    emulated: bool
    slowness: float = 1.0  # how much slower than usual this guest proved to be at boot
    volumes: Mapping[str, tuple[VolumeFacts | None, Depth]] = field(default_factory=dict)
    _identities: dict[str, str] | None = None

    def identities(self) -> dict[str, str]:
        """Guest BDF -> serial of every emulated stand-in, read once, before any entry is
        resolved: in ``vfio`` mode the entry binds a function to vfio-pci, after which its
        nvme serial can no longer be read. Keyed by what the guest shows, not by the plan.
        Hot-plugged stand-ins may still be appearing or probing: waits (bounded) until the
        guest lists as many as the plan has VFIO functions, each with a driver."""
        if self._identities is None:
            expected = sum(len(d.functions) for d in self.plan.devices)
            deadline = time.monotonic() + WAIT_MS / 1000 * self.slowness
            while True:
                standins = [d for d in parse_lspci(self._call("lspci"))
                            if d.vendor_device == STANDIN_VENDOR_DEVICE]
                settled = len(standins) >= expected and all(d.driver for d in standins)
                if settled or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self._identities = {
                d.bdf: self._call("serial", d.bdf).fields.get("serial", "")
                for d in standins if d.driver == STANDIN_DRIVER}
        return self._identities

    def _call(self, verb: str, *args: str, timeout: float = CALL_TIMEOUT_S) -> AgentReply:
        """An agent call whose bound grows with the guest's slowness (nested TCG guests run
        tens of times slower: measured 147 s to boot, 26 s for one ``mknod`` + ``rw``)."""
        return self.agent.call(verb, *args, timeout=timeout * self.slowness)

    @property
    def _wait_ms(self) -> str:
        return str(int(WAIT_MS * self.slowness))

    def resolve(self, entry: AgentDevice, mode: int) -> Resolution:
        """Hand one entry to the guest; what it resolved to."""
        reply = self._call("device", self.container_dir, f"{mode:o}", self._wait_ms,
                           *entry_args(entry))
        return parse_resolution(reply)

    def prove(self, device: DevicePlan, actual: dict[str, str]) -> DeviceRow:
        base = DeviceRow(
            path=device.request.path, bucket=device.bucket.value,
            qemu=",".join(f"{q.id}@{q.bus}" for q in device.qemu_devices),
            planned_path=",".join(sorted({str(p) for p in _planned_paths(device)})),
            actual_path=",".join(sorted({actual[q.id] for q in device.qemu_devices
                                         if q.id in actual})),
            entry=device.agent.as_json() if device.agent else None,
        )
        if device.bucket is Bucket.REJECTED:
            return _replace(base, error=f"rejected: {device.reason}")
        try:
            if device.agent is None:
                return self._without_entry(device, base)
            if self.emulated and device.functions:
                self.identities()
            resolution = self.resolve(device.agent, device.request.file_mode or DEFAULT_MODE)
            row = _replace(base, resolved=_resolved(resolution), guest_node=_guest(resolution),
                           container_node=resolution.node)
            if device.agent.type in (AgentDeviceType.BLK, AgentDeviceType.SCSI):
                return self._volume(device, device.agent, resolution, row)
            return self._vfio(device, device.agent, resolution, row, actual)
        except AgentLost:
            raise  # the channel failed, not this device: the run stops
        except PodplugError as exc:
            return _replace(base, error=str(exc))

    def _volume(self, device: DevicePlan, entry: AgentDevice, resolution: Resolution,
                row: DeviceRow) -> DeviceRow:
        name = resolution.vm_path.removeprefix("/dev/")
        host, depth = self.volumes[device.request.path]
        seen = VolumeSeen(self._call("serial", name).fields.get("serial", ""),
                          self._call("ro-check", resolution.node).fields)
        if depth is Depth.DESTRUCTIVE:
            seen = replace(seen, rw=self._call("rw", resolution.node).fields,
                           fs=self._call("fs-check", resolution.node, timeout=120.0).fields)
        problems = volume_problems(device, entry, resolution, seen, host)
        same = "size and first/last 4 KiB = host's" if host is not None else \
            "first/last 4 KiB read (a back end not podplug's: not compared)"
        check = (f"{entry.type.value} {entry.id} -> {resolution.vm_path} (serial "
                 f"{seen.serial or '-'}); {same}")
        if seen.rw is not None and seen.fs is not None:
            check += (f"; read+write {seen.rw.get('write')}; {seen.fs.get('fs')} round trip "
                      f"{seen.fs.get('readback')} (scratch volume)")
        else:
            check += " (read-only proof: the volume is not podplug's)"
        return _judged(row, check, problems)

    def _vfio(self, device: DevicePlan, entry: AgentDevice, resolution: Resolution,
              row: DeviceRow, actual: dict[str, str]) -> DeviceRow:
        listing = {d.bdf: d for d in parse_lspci(self._call("lspci"))}
        seen = {guest: self.observe(guest, listing) for _, guest in resolution.functions}
        expected = expectations(device, self.inventory, emulated=self.emulated)
        problems = vfio_problems(device, entry, resolution, expected, seen, actual)
        if resolution.node:
            opened = self._call("rw", resolution.node).fields
            if opened.get("open") != "ok":
                problems.append(f"{device.request.path}: {resolution.node} does not open")
        drivers = sorted({(listing[g].driver or "-") for _, g in resolution.functions
                          if g in listing})
        if entry.type is AgentDeviceType.VFIO_PCI_GK and "-" in drivers:
            problems.append(f"{device.request.path}: no guest driver bound (vfio-pci-gk keeps "
                            "the guest's own driver)")
        row = _replace(row, peeks=_peeks(resolution) if resolution.peeks else None)
        ident = "stand-in serial = host BDF; " if self.emulated else ""
        mapping = ", ".join(f"{h}->{g}" for h, g in resolution.functions)
        bars = sum(len(s.bars) for s in seen.values())
        read = "".join(f"; {p.host} BAR{p.bar} " + (f"answers ({p.data[:8].hex()}...)"
                                                    if p.data else "not read")
                       for p in resolution.peeks)
        if entry.type is AgentDeviceType.VFIO_PCI:
            check = (f"{ident}{mapping}; bound to vfio-pci, group {resolution.group} viable, "
                     f"{resolution.node} opened; {bars} BARs in their windows{read}")
        else:
            check = (f"{ident}{mapping}; guest driver {','.join(drivers)} (vfio-pci-gk: no "
                     f"/dev/vfio node); {bars} BARs in their windows{read}")
        return _judged(row, check, problems)

    def observe(self, guest: str, listing: dict[str, GuestPciDevice]) -> FunctionSeen:
        """What the guest shows for one resolved function: its lspci line, its BARs, the
        windows of the port above it and, for a stand-in, its serial."""
        device = listing.get(guest)
        if device is None:
            return FunctionSeen(None, None, (), ())
        serial = self.identities().get(guest) if self.emulated else None
        parent = device.parents[-1] if device.parents else None
        windows = parse_bars(self._call("bars", parent)) if parent else ()
        return FunctionSeen(device, serial, parse_bars(self._call("bars", guest)), windows)

    def _without_entry(self, device: DevicePlan, row: DeviceRow) -> DeviceRow:
        if device.functions:  # a sandbox container's cold VFIO: in the VM, no entry
            for function in device.functions:
                self._call("wait-pci", str(function.guest_path), self._wait_ms)
            return _replace(row, check="in the VM for the pod, no agent entry for the sandbox "
                            "container (Kata PR #13681)", usable=True)
        if not device.in_spec:
            return _replace(row, check="left out of the container (guest-kernel strips "
                            "/dev/vfio/*)", usable=True)
        request = device.request
        if request.path.startswith(VFIO_DIR):  # Kata's guest kernels build VFIO in
            self._call("modules", "vfio")
        mode = f"{request.file_mode or DEFAULT_MODE:o}"
        kind = "b" if request.type.value == "b" else "c"
        node = self._call("mknod", self.container_dir, request.path, kind, str(request.major),
                          str(request.minor), mode).fields["path"]
        opened = self._call("rw", node).fields
        ok = opened.get("open") == "ok"
        return _replace(row, guest_node=f"{request.major}:{request.minor} as given",
                        container_node=node, check="opened" if ok else "",
                        usable=ok, error="" if ok else f"{node} does not open in the guest")


def _peeks(resolution: Resolution) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for peek in resolution.peeks:
        out.setdefault(peek.host, {})[str(peek.bar)] = peek.data.hex() if peek.data else ""
    return out


def _planned_paths(device: DevicePlan) -> list[str]:
    if device.functions:
        return [str(f.guest_path) for f in device.functions]
    return [str(p) for p in device.guest_paths]


def _resolved(resolution: Resolution) -> dict[str, str]:
    if resolution.functions:
        return dict(resolution.functions)
    return {"vm_path": resolution.vm_path, "node": resolution.node}


def _guest(resolution: Resolution) -> str:
    if resolution.functions:
        return " ".join(g for _, g in resolution.functions)
    devnum = resolution.devnum
    return f"{resolution.vm_path} ({devnum[0]}:{devnum[1]})" if devnum else resolution.vm_path


def _judged(row: DeviceRow, check: str, problems: list[str]) -> DeviceRow:
    return _replace(row, check=check, usable=not problems, error="; ".join(problems))
