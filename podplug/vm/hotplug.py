"""Carry out the sequencer's steps on a running VM, check placement, roll back on failure.

The steps come from :mod:`podplug.plan.sequence` (pure); this module only sends them and
reads the answers:

* after each ``device_add`` on a PCI bus, the real location is read back from QEMU (QOM
  ``addr``/``parent_bus``, :mod:`podplug.vm.qompath`) and compared with the planned guest
  PCI path: a mismatch raises :class:`PlacementMismatch` (DESIGN rule 2);
* ``device_del`` is done only at ``DEVICE_DELETED`` (one per function of the slot), with the
  listener registered before the command (rule 6);
* when any step of a batch fails, the steps that succeeded are undone newest first, and the
  original error is raised (rule 7). Rollback keeps going past its own failures and reports
  them in the error's notes rather than masking the cause.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from podplug.errors import BatchFailed, PlacementMismatch, PodplugError, QmpCommandError
from podplug.model.pci import GuestPciPath
from podplug.plan.sequence import Step, StepKind, undo
from podplug.vm.process import Vm
from podplug.vm.qmp import deleted_event_matches
from podplug.vm.qompath import read_placement

BUSY_RETRY_S = 0.5
UNPLUG_TIMEOUT_S = 15.0  # native PCIe unplug takes 5-6 s here (qemu-recipe.md); ACPI 0.09 s


@dataclass(frozen=True)
class StepResult:
    """A step that was carried out, how long it took, and where QEMU put the device."""

    step: Step
    seconds: float
    actual_path: GuestPciPath | None = None


def carry(vm: Vm, step: Step, *, unplug_timeout: float = UNPLUG_TIMEOUT_S) -> StepResult:
    """Send one step and wait for what ends it.

    :raises QmpCommandError: QEMU refused the command.
    :raises PlacementMismatch: a device_add landed elsewhere than planned.
    :raises HotplugTimeout: an unplug was not confirmed in time.
    """
    started = time.monotonic()
    if step.kind is StepKind.DEVICE_DEL:
        ids = (step.subject, *step.also_removes)
        pending = set(ids)
        with vm.watch("DEVICE_DELETED",
                      match=lambda ev: any(deleted_event_matches(ev, i) for i in ids)) as watch:
            _device_del(vm, step, started + unplug_timeout)
            while pending:
                remaining = max(0.0, unplug_timeout - (time.monotonic() - started))
                event = watch.wait(remaining, subject=step.subject)
                pending -= {i for i in ids if deleted_event_matches(event, i)}
        return StepResult(step, time.monotonic() - started)
    vm.execute(step.kind.value, step.arguments)
    actual = None
    if step.kind is StepKind.DEVICE_ADD and step.expect_path is not None:
        actual = read_placement(vm.qmp, step.subject).path
        if actual != step.expect_path:
            raise PlacementMismatch(step.subject, str(step.expect_path), str(actual))
    return StepResult(step, time.monotonic() - started, actual)


def _device_del(vm: Vm, step: Step, deadline: float) -> None:
    """``device_del``, retried while native hot-plug says the guest is busy (the power
    indicator blinks for a while after a slot is powered on; anchors §1.5)."""
    while True:
        try:
            vm.execute("device_del", step.arguments)
            return
        except QmpCommandError as exc:
            if "guest is busy" not in exc.desc or time.monotonic() > deadline:
                raise
            time.sleep(BUSY_RETRY_S)


def carry_batch(vm: Vm, steps: Sequence[Step]) -> list[StepResult]:
    """Carry out ``steps`` in order; on failure undo the ones that succeeded.

    :raises BatchFailed: naming the failed step and its cause, after the rollback.
    """
    done: list[Step] = []
    results: list[StepResult] = []
    for step in steps:
        try:
            result = carry(vm, step)
        except PodplugError as exc:
            if isinstance(exc, PlacementMismatch):
                done.append(step)  # it was added: it must come out again
            problems = rollback(vm, done)
            raise BatchFailed(exc, command=step.kind.value, subject=step.subject,
                              container_path=step.container_path,
                              rollback_errors=problems) from exc
        done.append(step)
        results.append(result)
    return results


def rollback(vm: Vm, done: Sequence[Step]) -> list[str]:
    """Undo ``done`` newest first; returns the problems met instead of raising."""
    problems = []
    for step in undo(done):
        try:
            carry(vm, step)
        except QmpCommandError as exc:
            if exc.error_class != "DeviceNotFound":  # gone with function 0 of its slot
                problems.append(str(exc))
        except PodplugError as exc:
            problems.append(str(exc))
    return problems
