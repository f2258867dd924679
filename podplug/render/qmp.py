"""QMP messages for hot-plug and teardown, rendered from the hot-plug sequencer.

The order is decided once, in :mod:`podplug.plan.sequence` (the window keepers leave
first; VFIO functions 1-7 before function 0; objects and ``blockdev-add`` before the device
naming them; teardown by ``device_del`` of function 0, then ``blockdev-del``, then the
objects); this module only spells the steps as QMP messages.
"""

from __future__ import annotations

from podplug.errors import UnsupportedPlatform
from podplug.model.enums import Hypervisor
from podplug.plan.model import Plan
from podplug.plan.sequence import Step, hot_devices, plug_steps, release_steps, unplug_steps

Message = dict[str, object]


def message(step: Step) -> Message:
    return {"execute": step.kind.value, "arguments": step.arguments}


def render_qmp(plan: Plan) -> dict[str, list[Message]]:
    """``{"release": [...], "hotplug": [...], "teardown": [...]}``: the window keepers'
    removal after boot, then the plan's hot-plugged devices in and out."""
    if plan.config.hypervisor.kind is not Hypervisor.QEMU:
        raise UnsupportedPlatform("QMP messages for hypervisor",
                                  plan.config.hypervisor.kind.value, ["qemu"])
    hot = hot_devices(plan)
    return {
        "release": [message(s) for s in release_steps(plan)],
        "hotplug": [message(s) for s in plug_steps(hot)],
        "teardown": [message(s) for s in unplug_steps(hot)],
    }
