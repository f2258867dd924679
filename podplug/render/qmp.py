"""QMP messages for hot-plug and teardown, in a deterministic order.

Hot-plug follows the container's device list (VFIO first, then the rest; Kata's order).
A VFIO slot is plugged functions 1-7 first and function 0 last: QEMU tells the guest about
a slot when function 0 arrives. A block volume is ``blockdev-add`` then ``device_add``.

Teardown is the reverse: ``device_del`` (done at ``DEVICE_DELETED``), then ``blockdev-del``
for a volume's node. A slot is unplugged through function 0 only: ejecting the slot removes
every function in it, each with its own ``DEVICE_DELETED``.
"""

from __future__ import annotations

from podplug.errors import UnsupportedPlatform
from podplug.model.enums import Bucket, Hypervisor
from podplug.plan.model import DevicePlan, Plan, QemuDevice

Message = dict[str, object]


def device_add(device: QemuDevice) -> Message:
    return {"execute": "device_add", "arguments": {"driver": device.driver, **dict(device.props)}}


def _hot(plan: Plan) -> list[DevicePlan]:
    return [d for d in plan.container_devices if d.bucket in (Bucket.HOT_VFIO, Bucket.HOT_BLOCK)]


def hotplug_messages(device: DevicePlan, iommufd: tuple[str, ...] = ()) -> list[Message]:
    """The QMP messages that plug one device."""
    messages: list[Message] = []
    if device.blockdev is not None:
        messages.append({"execute": "blockdev-add", "arguments": device.blockdev.arguments()})
    for qemu in device.plug_order:
        name = dict(qemu.props).get("iommufd")
        if name is not None and name in iommufd:
            messages.append({"execute": "object-add",
                             "arguments": {"qom-type": "iommufd", "id": name}})
        messages.append(device_add(qemu))
    return messages


def teardown_messages(device: DevicePlan) -> list[Message]:
    """The QMP messages that unplug one device."""
    messages: list[Message] = []
    for qemu in device.qemu_devices:
        if qemu.driver == "vfio-pci" and not str(dict(qemu.props)["addr"]).endswith(".0"):
            continue  # removed with function 0 of its slot
        messages.append({"execute": "device_del", "arguments": {"id": qemu.id}})
    if device.blockdev is not None:
        messages.append({"execute": "blockdev-del",
                         "arguments": {"node-name": device.blockdev.node_name}})
    return messages


def render_qmp(plan: Plan) -> dict[str, list[Message]]:
    """``{"hotplug": [...], "teardown": [...]}`` for the plan's hot-plugged devices."""
    if plan.config.hypervisor.kind is not Hypervisor.QEMU:
        raise UnsupportedPlatform("QMP messages for hypervisor",
                                  plan.config.hypervisor.kind.value, ["qemu"])
    hot = _hot(plan)
    cold_objects = {str(dict(q.props).get("iommufd")) for d in plan.in_bucket(Bucket.COLD_VFIO)
                    for q in d.qemu_devices}
    hot_objects = tuple(n for n in plan.iommufd_objects if n not in cold_objects)
    return {
        "hotplug": [m for d in hot for m in hotplug_messages(d, hot_objects)],
        "teardown": [m for d in reversed(hot) for m in teardown_messages(d)],
    }
