"""Prove, through the guest agent, that each planned device is there and usable.

What counts as proof, per bucket (the Kata agent's own steps, done for real in the guest):

* block volume: the node behind the planned PCI path (virtio-blk) or SCSI address
  (virtio-scsi) is found, created at the container path in the container's dev directory
  with the GUEST major:minor (as the Kata agent's ``update_spec_devices`` rewrites the
  spec), opened, read and written, then made a filesystem on, mounted, written, read back
  and unmounted (the Kubernetes block-volume check, ``k8s-block-volume.bats``);
* VFIO: every function appears at its planned guest PCI path with the expected
  vendor:device (an emulated stand-in must also carry, as its serial, the host BDF of the
  function it stands for); in ``vfio`` mode each is bound to vfio-pci, all functions of a
  slot must land in ONE guest IOMMU group, and ``/dev/vfio/<guest group>`` is created in
  the container's dev directory and opened; in ``guest-kernel`` mode the device stays on
  its guest driver;
* plain node: created with the guest's numbers and opened (a ``/dev/vfio/*`` node in
  ``guest-kernel`` mode is left out of the container, as Kata strips it: that is the plan);
* rejected: never usable; the row carries the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as _replace

from podplug.errors import PodplugError
from podplug.guest.agent_client import AgentClient
from podplug.guest.protocol import AgentReply
from podplug.model.enums import Bucket, VfioMode
from podplug.plan.model import DevicePlan, Plan
from podplug.plan.standin import STANDIN_VENDOR_DEVICE
from podplug.run.report import DeviceRow

WAIT_MS = 5000
CALL_TIMEOUT_S = 30.0


@dataclass
class GuestProver:
    """Runs the per-device checks against one guest."""

    agent: AgentClient
    plan: Plan
    container_dir: str
    emulated: bool
    slowness: float = 1.0  # how much slower than usual this guest proved to be at boot

    def _call(self, verb: str, *args: str, timeout: float = CALL_TIMEOUT_S) -> AgentReply:
        """An agent call whose bound grows with the guest's slowness (nested TCG guests run
        tens of times slower: measured 147 s to boot, 26 s for one ``mknod`` + ``rw``)."""
        return self.agent.call(verb, *args, timeout=timeout * self.slowness)

    @property
    def _wait_ms(self) -> str:
        return str(int(WAIT_MS * self.slowness))

    def prove(self, device: DevicePlan, actual: dict[str, str]) -> DeviceRow:
        base = DeviceRow(
            path=device.request.path, bucket=device.bucket.value,
            qemu=",".join(f"{q.id}@{q.bus}" for q in device.qemu_devices),
            planned_path=",".join(sorted({str(p) for p in device.guest_paths})),
            actual_path=",".join(sorted({actual[q.id] for q in device.qemu_devices
                                         if q.id in actual})),
        )
        if device.bucket is Bucket.REJECTED:
            return _replace(base, error=f"rejected: {device.reason}")
        try:
            if device.functions:
                return self._vfio(device, base)
            if device.bucket is Bucket.HOT_BLOCK:
                return self._block(device, base)
            return self._node(device, base)
        except PodplugError as exc:
            return _replace(base, error=str(exc))

    def _block(self, device: DevicePlan, row: DeviceRow) -> DeviceRow:
        if device.scsi_address is not None:
            names = self._call("blk-of-scsi", device.scsi_address, self._wait_ms).words
        else:
            path = str(device.guest_paths[0])
            names = self._call("blk-of-pci", path, self._wait_ms).words
        name = names[0]
        major, minor = self._call("devnum", name).fields["devnum"].split(":")
        node = self._mknod(device, "b", major, minor)
        rw = self._call("rw", node).fields
        fs = self._call("fs-check", node, timeout=120.0).fields
        ok = rw.get("write") == "ok" and fs.get("readback") == "ok"
        check = f"opened, read+write {rw.get('write')}; {fs.get('fs')} round trip " \
                f"{fs.get('readback')}"
        return _replace(row, guest_node=f"/dev/{name} ({major}:{minor})", container_node=node,
                        check=check, usable=ok, error="" if ok else "block check failed")

    def _vfio(self, device: DevicePlan, row: DeviceRow) -> DeviceRow:
        bdfs: list[str] = []
        for function in device.functions:
            chain = self._call("wait-pci", f"{function.guest_path}.{function.guest_function}",
                                    self._wait_ms).words
            bdfs.append(chain[-1])
        listing = {line.split()[0]: line.split() for line in self._call("lspci").lines}
        for function, bdf in zip(device.functions, bdfs, strict=True):
            expected = STANDIN_VENDOR_DEVICE if self.emulated else \
                f"{function.vendor:04x}:{function.device:04x}"
            seen = listing.get(bdf, ["", "?"])[1]
            if seen != expected:
                return _replace(row, guest_node=" ".join(bdfs),
                                error=f"{bdf}: vendor:device {seen}, expected {expected}")
        if self.emulated:  # the stand-in must be the one for THIS host function
            for function, bdf in zip(device.functions, bdfs, strict=True):
                serial = self._call("serial", bdf).fields.get("serial", "")
                if serial != str(function.host):
                    return _replace(row, guest_node=" ".join(bdfs),
                                    error=f"{bdf}: stand-in serial {serial!r}, expected the "
                                    f"host BDF {function.host}")
        guest = " ".join(bdfs)
        ident = "stand-in serial = host BDF; " if self.emulated else ""
        if self.plan.config.vfio_mode is VfioMode.GUEST_KERNEL:
            drivers = sorted({listing[b][3] for b in bdfs})
            ok = "-" not in drivers
            return _replace(row, guest_node=guest, check=f"{ident}guest driver "
                            f"{','.join(drivers)} "
                            "(vfio-pci-gk: no /dev/vfio node)", usable=ok,
                            error="" if ok else "no guest driver bound")
        groups: dict[str, str] = {}
        group_of: list[str] = []
        for bdf in bdfs:
            fields = self._call("vfio-bind", bdf).fields
            groups[fields["group"]] = fields["devnum"]
            group_of.append(f"{bdf} in group {fields['group']}")
        nodes = []
        for group, devnum in sorted(groups.items()):
            major, minor = devnum.split(":")
            node = self._mknod_at(f"/dev/vfio/{group}", "c", major, minor, device)
            self._call("rw", node)
            nodes.append(node)
        units = len(device.guest_paths)
        ok = len(groups) == units
        check = f"{ident}bound to vfio-pci, vfio group {','.join(sorted(groups))} opened"
        error = "" if ok else (f"{len(groups)} guest IOMMU groups for {units} slot(s): "
                               + ", ".join(group_of))
        return _replace(row, guest_node=guest, container_node=",".join(nodes), check=check,
                        usable=ok, error=error)

    def _node(self, device: DevicePlan, row: DeviceRow) -> DeviceRow:
        if not device.in_spec:
            return _replace(row, check="left out of the container (guest-kernel strips "
                            "/dev/vfio/*)", usable=True)
        request = device.request
        try:
            major, minor = self._call("devnum", request.path).fields["devnum"].split(":")
        except PodplugError:
            major, minor = str(request.major), str(request.minor)
        node = self._mknod(device, "c", major, minor)
        self._call("rw", node)
        return _replace(row, guest_node=f"{request.path} ({major}:{minor})", container_node=node,
                        check="opened", usable=True)

    def _mknod(self, device: DevicePlan, kind: str, major: str, minor: str) -> str:
        return self._mknod_at(device.request.path, kind, major, minor, device)

    def _mknod_at(self, path: str, kind: str, major: str, minor: str,
                  device: DevicePlan) -> str:
        mode = f"{device.request.file_mode or 0o660:o}"
        reply = self._call("mknod", self.container_dir, path, kind, major, minor, mode)
        return reply.fields["path"]
