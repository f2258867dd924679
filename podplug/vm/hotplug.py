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
from podplug.vm.qompath import read_placement, read_placements

BUSY_RETRY_S = 0.1  # native: the indicator blinks ~1 s after power-on; 0.5 s cost more
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

    A batch of adds (``blockdev-add``, ``object-add``, ``device_add``) is pipelined
    (:meth:`QmpSession.execute_many`): QEMU runs the commands in the order sent, each as if
    sent alone after the ones before, without a round trip between them; then every
    placement is read back at once (:func:`read_placements`). The guest sees the devices
    of one burst together (one ACPI scan, one PCI rescan). A step's ``seconds`` is from the
    previous reply to its own. QEMU answers every command, so exactly the steps that
    succeeded are known and undone, those after a refused one included. Unplug steps go to
    :func:`unplug_batch`.

    :raises BatchFailed: naming the failed step and its cause, after the rollback.
    """
    if any(step.kind is StepKind.DEVICE_DEL for step in steps):
        raise ValueError("carry_batch plugs; unplug steps go to unplug_batch")
    try:
        answers = vm.execute_many([(step.kind.value, step.arguments) for step in steps])
    except PodplugError as exc:  # no reply at all (QEMU gone, timeout): unknown what went in
        first = steps[0]
        raise BatchFailed(exc, command=first.kind.value, subject=first.subject,
                          container_path=first.container_path,
                          rollback_errors=rollback(vm, steps)) from exc
    done = [step for step, answer in zip(steps, answers, strict=True) if answer.error is None]
    for step, answer in zip(steps, answers, strict=True):
        if answer.error is not None:
            raise _failed(vm, step, answer.error, done)
    expected = {step.subject: step for step in steps
                if step.kind is StepKind.DEVICE_ADD and step.expect_path is not None}
    placed: dict[str, GuestPciPath] = {}
    for subject, where in read_placements(vm.execute_many, list(expected),
                                          vm.port_placements).items():
        step = expected[subject]
        if isinstance(where, PodplugError):
            raise _failed(vm, step, where, done)
        if where.path != step.expect_path:
            raise _failed(vm, step, PlacementMismatch(subject, str(step.expect_path),
                                                      str(where.path)), done)
        placed[subject] = where.path
    results, previous = [], 0.0
    for step, answer in zip(steps, answers, strict=True):
        results.append(StepResult(step, answer.seconds - previous, placed.get(step.subject)))
        previous = answer.seconds
    return results


def _failed(vm: Vm, step: Step, cause: PodplugError, done: Sequence[Step]) -> BatchFailed:
    """The batch's error for ``step``, after ``done`` was rolled back."""
    problems = rollback(vm, done)
    return BatchFailed(cause, command=step.kind.value, subject=step.subject,
                       container_path=step.container_path, rollback_errors=problems)


def unplug_batch(vm: Vm, steps: Sequence[Step], *,
                 unplug_timeout: float = UNPLUG_TIMEOUT_S) -> list[StepResult]:
    """Unplug steps (:func:`podplug.plan.sequence.unplug_steps`) pipelined.

    Every ``device_del`` is sent in one burst, with one listener registered before it for
    all of their ``DEVICE_DELETED`` events (rule 6), awaited under one deadline; then the
    ``blockdev-del``/``object-del`` steps go in a second burst, each after its device is
    gone. A ``device_del`` refused because the guest is busy (native hot-plug's blinking
    power indicator) is retried as :func:`carry` does. A step's ``seconds`` is from the
    start until what ends it.

    :raises QmpCommandError: QEMU refused a step (the first, in order).
    :raises HotplugTimeout: not every device was confirmed in time (naming those left).
    """
    started = time.monotonic()
    dels = [step for step in steps if step.kind is StepKind.DEVICE_DEL]
    rest = [step for step in steps if step.kind is not StepKind.DEVICE_DEL]
    owner = {i: step for step in dels for i in (step.subject, *step.also_removes)}
    pending = set(owner)
    finished: dict[str, float] = {}
    with vm.watch("DEVICE_DELETED",
                  match=lambda ev: any(deleted_event_matches(ev, i) for i in owner)) as watch:
        answers = vm.execute_many([(step.kind.value, step.arguments) for step in dels])
        for step, answer in zip(dels, answers, strict=True):
            if answer.error is None:
                continue
            if "guest is busy" not in answer.error.desc:
                raise answer.error
            _device_del(vm, step, started + unplug_timeout)
        while pending:
            remaining = max(0.0, unplug_timeout - (time.monotonic() - started))
            event = watch.wait(remaining, subject=", ".join(sorted(pending)))
            for i in [i for i in pending if deleted_event_matches(event, i)]:
                pending.discard(i)
                finished[owner[i].subject] = time.monotonic() - started
    answers = vm.execute_many([(step.kind.value, step.arguments) for step in rest]) if rest \
        else []
    for answer in answers:
        if answer.error is not None:
            raise answer.error
    tail = time.monotonic() - started
    return [StepResult(step, finished.get(step.subject, tail)) for step in (*dels, *rest)]


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
