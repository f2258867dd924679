"""Where an upstream Kata era loses devices that podplug delivers (pure).

A device counts as *delivered* by podplug when the plan keeps it (not rejected) and the
container gets it: a kata-agent entry (VFIO, block) or its node in the spec. A sandbox
container's VFIO devices are in the VM but deliberately carry no agent entry, so an era that
leaves them out of the pause container loses nothing. A device counts as *lost* by Kata when
its model drops it silently or filters it (:func:`podplug.matrix.kata_models.lost_devices`);
a loud failure (attach errors, or the sandbox never starts) is not a silent loss, and is
counted on its own (:func:`failures`): podplug delivers those devices too (an ``aio=native``
volume without ``cache.direct`` as ``threads``, saying so), Kata stops with an error.
"""

from __future__ import annotations

from podplug.matrix.check import Outcome, Result, config_for, request_for
from podplug.matrix.kata_models import (
    KataEra,
    KataSelection,
    failed_devices,
    lost_devices,
    select_devices,
)
from podplug.model.enums import Bucket
from podplug.plan.model import Plan


def delivered(plan: Plan) -> set[str]:
    """Container paths podplug gets to the container."""
    return {d.request.path for d in plan.devices
            if d.bucket is not Bucket.REJECTED
            and (d.agent is not None or d.bucket is Bucket.NODE)}


def _selection(result: Result, era: KataEra) -> tuple[KataSelection, set[str]] | None:
    if result.outcome is not Outcome.PLANNED or result.plan is None:
        return None
    selection = select_devices(era, request_for(result.combination),
                               config_for(result.combination))
    return selection, delivered(result.plan)


def losses(result: Result, era: KataEra) -> tuple[str, ...]:
    """Paths ``era`` loses silently for this combination while podplug delivers them."""
    found = _selection(result, era)
    if found is None:
        return ()
    selection, ours = found
    return tuple(d.path for d in lost_devices(selection) if d.path in ours)


def failures(result: Result, era: KataEra) -> tuple[str, ...]:
    """Paths ``era`` fails loudly on for this combination while podplug delivers them."""
    found = _selection(result, era)
    if found is None:
        return ()
    selection, ours = found
    return tuple(d.path for d in failed_devices(selection) if d.path in ours)
