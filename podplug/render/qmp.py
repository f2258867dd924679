"""QMP messages for hot-plug and teardown, rendered from the hot-plug sequencer.

The order is decided once, in :mod:`podplug.plan.sequence` (VFIO functions 1-7 before
function 0; ``blockdev-add`` before a volume's ``device_add``; teardown by ``device_del`` of
function 0, then ``blockdev-del``); this module only spells the steps as QMP messages.
"""

from __future__ import annotations

from podplug.errors import UnsupportedPlatform
from podplug.model.enums import Hypervisor
from podplug.plan.model import Plan
from podplug.plan.sequence import Step, hot_devices, plug_steps, unplug_steps

Message = dict[str, object]


def message(step: Step) -> Message:
    return {"execute": step.kind.value, "arguments": step.arguments}


def render_qmp(plan: Plan) -> dict[str, list[Message]]:
    """``{"hotplug": [...], "teardown": [...]}`` for the plan's hot-plugged devices."""
    if plan.config.hypervisor.kind is not Hypervisor.QEMU:
        raise UnsupportedPlatform("QMP messages for hypervisor",
                                  plan.config.hypervisor.kind.value, ["qemu"])
    hot = hot_devices(plan)
    return {
        "hotplug": [message(s) for s in plug_steps(hot)],
        "teardown": [message(s) for s in unplug_steps(hot)],
    }
