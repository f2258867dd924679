"""The hot-plug sequencer: which QMP steps plug, unplug and roll back the hot devices.

Pure: it decides, :mod:`podplug.vm.hotplug` carries the steps out. Rules:

* A volume is ``blockdev-add`` then ``device_add``; a vhost-user-blk volume is
  ``chardev-add`` (the backend's socket) then ``device_add``; a VFIO slot is functions 1-7 first and
  function 0 last (QEMU announces the slot when function 0 arrives; anchors §1.5).
* Every ``device_add`` on a PCI bus names the guest PCI path the plan predicts, so the shell
  can read the real one back (QOM ``addr``/``parent_bus``) and refuse a mismatch.
* A QOM object a device needs (an iommufd, a memory backend) is ``object-add``-ed just
  before the first device naming it and ``object-del``-ed after the last one is gone.
* Unplug is the reverse: ``device_del`` of function 0 ejects the whole slot (each function
  reports its own ``DEVICE_DELETED``), then ``blockdev-del`` or ``chardev-remove``, then
  the objects. A vhost-user backend is stopped only after its ``chardev-remove``.
* Before anything is hot-plugged, the window keepers leave (``device_del``, then the
  memory backend): their ports keep the windows firmware sized for them
  (:mod:`podplug.plan.windows`).
* Rollback of a failed batch undoes exactly the steps that succeeded, newest first, so no
  device is left half-plugged and no ``blockdev`` node leaks (DESIGN rule 7).
* What a volume's drive is (the host node, or a fake host's backing file; read-only or
  not) is decided in :mod:`podplug.run.volumes`; the steps carry it as given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from podplug.model.enums import Bucket
from podplug.model.pci import GuestPciPath
from podplug.plan.model import BlockdevNode, Chardev, DevicePlan, Plan, QemuDevice
from podplug.plan.presentation import keeper_devices


class StepKind(Enum):
    OBJECT_ADD = "object-add"
    BLOCKDEV_ADD = "blockdev-add"
    CHARDEV_ADD = "chardev-add"
    DEVICE_ADD = "device_add"
    DEVICE_DEL = "device_del"
    BLOCKDEV_DEL = "blockdev-del"
    CHARDEV_REMOVE = "chardev-remove"
    OBJECT_DEL = "object-del"


@dataclass(frozen=True)
class Step:
    """One QMP command of a hot-plug sequence, with what it is about."""

    kind: StepKind
    subject: str  # QEMU device id or block node name
    container_path: str
    arguments: dict[str, object] = field(compare=False, hash=False)
    expect_path: GuestPciPath | None = None  # where the guest must find a PCI device_add
    also_removes: tuple[str, ...] = ()  # device_del of function 0: the slot's other ids


def _device_add(qemu: QemuDevice, path: GuestPciPath | None, container_path: str) -> Step:
    arguments: dict[str, object] = {"driver": qemu.driver, **dict(qemu.props)}
    expect = path if "addr" in dict(qemu.props) else None
    return Step(StepKind.DEVICE_ADD, qemu.id, container_path, arguments, expect)


def hot_devices(plan: Plan) -> tuple[DevicePlan, ...]:
    """The devices hot-plugged after boot, in the container's device order."""
    return tuple(d for d in plan.container_devices
                 if d.bucket in (Bucket.HOT_VFIO, Bucket.HOT_BLOCK))


def plug_steps(
    devices: Sequence[DevicePlan],
    *,
    device: Callable[[QemuDevice], QemuDevice] = lambda q: q,
    drive: Callable[[BlockdevNode], BlockdevNode] = lambda n: n,
    chardev: Callable[[Chardev], Chardev] = lambda c: c,
) -> tuple[Step, ...]:
    """The steps that plug ``devices``; ``device``/``drive``/``chardev`` map what is
    plugged (stand-ins, backing files, a backend's socket) without changing where. The
    objects a mapped device names are created just before it (``object-add``)."""
    steps: list[Step] = []
    objects: set[str] = set()
    for planned in devices:
        path = planned.request.path
        if planned.blockdev is not None:
            node = drive(planned.blockdev)
            steps.append(Step(StepKind.BLOCKDEV_ADD, node.node_name, path, node.arguments()))
        if planned.chardev is not None:
            char = chardev(planned.chardev)
            steps.append(Step(StepKind.CHARDEV_ADD, char.id, path, char.arguments()))
        paths = {f.qemu.id: f.guest_path for f in planned.functions}
        for qemu in planned.plug_order:
            expect = paths.get(qemu.id) or (planned.guest_paths[0] if planned.guest_paths
                                            else None)
            plugged = device(qemu)
            for obj in plugged.objects:
                if obj.id not in objects:
                    objects.add(obj.id)
                    steps.append(Step(StepKind.OBJECT_ADD, obj.id, path, obj.arguments()))
            steps.append(_device_add(plugged, expect, path))
    return tuple(steps)


def undo(done: Sequence[Step]) -> tuple[Step, ...]:
    """Roll back the successful steps ``done``, newest first."""
    steps: list[Step] = []
    for step in reversed(done):
        if step.kind is StepKind.DEVICE_ADD:
            steps.append(Step(StepKind.DEVICE_DEL, step.subject, step.container_path,
                              {"id": step.subject}))
        elif step.kind is StepKind.BLOCKDEV_ADD:
            steps.append(Step(StepKind.BLOCKDEV_DEL, step.subject, step.container_path,
                              {"node-name": step.subject}))
        elif step.kind is StepKind.CHARDEV_ADD:
            steps.append(Step(StepKind.CHARDEV_REMOVE, step.subject, step.container_path,
                              {"id": step.subject}))
        elif step.kind is StepKind.OBJECT_ADD:
            steps.append(Step(StepKind.OBJECT_DEL, step.subject, step.container_path,
                              {"id": step.subject}))
    return tuple(steps)


def unplug_steps(
    devices: Sequence[DevicePlan],
    *,
    device: Callable[[QemuDevice], QemuDevice] = lambda q: q,
) -> tuple[Step, ...]:
    """Teardown of ``devices``, last plugged first: one ``device_del`` per slot (function
    0), then the block node, then the objects the (mapped) devices named."""
    steps: list[Step] = []
    for planned in reversed(devices):
        path = planned.request.path
        slots: dict[str, list[str]] = {}
        for qemu in planned.qemu_devices:
            addr = str(dict(qemu.props).get("addr", ""))
            slots.setdefault(f"{qemu.bus}@{addr.split('.')[0]}", []).append(qemu.id)
        for ids in slots.values():
            steps.append(Step(StepKind.DEVICE_DEL, ids[0], path, {"id": ids[0]},
                              also_removes=tuple(ids[1:])))
        if planned.blockdev is not None:
            name = planned.blockdev.node_name
            steps.append(Step(StepKind.BLOCKDEV_DEL, name, path, {"node-name": name}))
        if planned.chardev is not None:
            name = planned.chardev.id
            steps.append(Step(StepKind.CHARDEV_REMOVE, name, path, {"id": name}))
        steps += _object_dels((device(q) for q in planned.qemu_devices), path)
    return tuple(steps)


def release_steps(plan: Plan) -> tuple[Step, ...]:
    """The window keepers leave, once the guest is up and before any hot-plug."""
    steps: list[Step] = []
    for keeper in keeper_devices(plan.topology.controllers):
        steps.append(Step(StepKind.DEVICE_DEL, keeper.id, keeper.bus, {"id": keeper.id}))
        steps += _object_dels((keeper,), keeper.bus)
    return tuple(steps)


def _object_dels(devices: Iterable[QemuDevice], path: str) -> list[Step]:
    seen: dict[str, None] = {}
    for qemu in devices:
        seen.update((obj.id, None) for obj in qemu.objects)
    return [Step(StepKind.OBJECT_DEL, name, path, {"id": name}) for name in seen]
