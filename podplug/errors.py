"""The whole podplug exception tree, drawn once.

Every error podplug raises on purpose derives from :class:`PodplugError`, carries the facts
that explain it as attributes, reads as one line through ``str()``, and belongs to a family
with its own CLI exit code (``exit_code``)::

    PodplugError
     ├── InputError                 exit 2   the user's files are wrong
     │    ├── ConfigError           Kata configuration.toml (file, key, value, allowed)
     │    ├── SpecError             OCI runtime spec config.json (file, field)
     │    └── CdiError              CDI spec or CDI reference (file, device)
     ├── HostError                  exit 3   sysfs could not be read or is inconsistent
     ├── PlanError                  exit 4   the request cannot be laid out
     │    ├── TopologyExhausted     a budget (bus numbers, root-bus slots, ...) is exceeded
     │    ├── UnsupportedPlatform   a hypervisor / machine type podplug does not plan
     │    └── QemuLacksFeature      the QEMU binary cannot run what the plan renders
     ├── GuestImageError            exit 5   the guest kernel/initramfs could not be built
     ├── VmError                    exit 6   QEMU, QMP or the guest agent failed
     │    ├── QemuLaunchError       QEMU exited or never offered QMP
     │    │    └── StorageDaemonError  ... qemu-storage-daemon; names the export
     │    ├── QmpCommandError       a QMP command returned an error
     │    ├── StateError            an operation was asked in the wrong lifecycle state
     │    ├── HotplugTimeout        the guest or QEMU did not confirm in time
     │    ├── PlacementMismatch     QEMU put a device somewhere other than planned
     │    ├── BatchFailed           a hot-plug batch failed and was rolled back
     │    ├── AgentError            the guest agent replied with an error or not at all
     │    │    └── AgentLost        ... not at all: the channel broke or a reply never came
     │    └── RunFailed             ``podplug run`` stopped: the phase, the device, the step
     └── (exit 7 is not an exception: ``podplug run`` found a device not usable)

Bugs are not domain errors: broken invariants are ``assert`` and API misuse is
``TypeError``/``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence

from podplug.model.text import shown


class PodplugError(Exception):
    """Root of every error podplug raises on purpose. ``str()`` is always one line: any
    control character a value brought in is escaped (:func:`podplug.model.text.shown`)."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return shown(self.message, limit=2000)


class InputError(PodplugError):
    """An input file (configuration, spec, CDI) is wrong."""

    exit_code = 2


def _allowed(allowed: Sequence[str]) -> str:
    return ", ".join(f'"{a}"' for a in allowed)


def _value(value: object) -> str:
    """A value the user wrote, as an error shows it: repr, bounded (a 5,000-digit number
    or a megabyte string is cut)."""
    return shown(repr(value), limit=240)


class ConfigError(InputError):
    """A Kata ``configuration.toml`` key (or its annotation override) is wrong.

    :ivar path: the file, when known (the pure parser leaves it ``None``; the loader adds it)
    :ivar key: the TOML key, as ``section.key`` or an annotation name
    :ivar value: the offending value, rendered
    :ivar allowed: what would have been accepted
    """

    def __init__(
        self,
        key: str,
        problem: str,
        *,
        value: object = None,
        allowed: Sequence[str] = (),
        path: str | None = None,
    ) -> None:
        self.key = key
        self.problem = problem
        self.value = value
        self.allowed = tuple(allowed)
        self.path = path
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.path}: " if self.path else ""
        shown = f" = {_value(self.value)}" if self.value is not None else ""
        tail = f" (allowed: {_allowed(self.allowed)})" if self.allowed else ""
        return f"{where}{self.key}{shown}: {self.problem}{tail}"

    def with_path(self, path: str) -> ConfigError:
        """The same error, naming the file it came from."""
        return ConfigError(
            self.key, self.problem, value=self.value, allowed=self.allowed, path=path
        )


class SpecError(InputError):
    """The OCI runtime spec is malformed (``field`` names the JSON path)."""

    def __init__(self, field: str, problem: str, *, path: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{field}: {problem}")

    def with_path(self, path: str) -> SpecError:
        return SpecError(self.field, self.problem, path=path)


class CdiError(InputError):
    """A CDI spec file failed validation, or a CDI device reference does not resolve."""

    def __init__(self, subject: str, problem: str, *, path: str | None = None) -> None:
        self.subject = subject
        self.problem = problem
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{subject}: {problem}")

    def with_path(self, path: str) -> CdiError:
        return CdiError(self.subject, self.problem, path=path)


class HostError(PodplugError):
    """The host's sysfs could not be read, or contradicts itself."""

    exit_code = 3

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class PlanError(PodplugError):
    """The requested devices cannot be laid out under this configuration."""

    exit_code = 4


class TopologyExhausted(PlanError):
    """A topology budget is exceeded; names the budget, what was needed and what exists."""

    def __init__(self, budget: str, needed: int, available: int, hint: str = "") -> None:
        self.budget = budget
        self.needed = needed
        self.available = available
        self.hint = hint
        extra = f"; {hint}" if hint else ""
        super().__init__(f"{budget}: needs {needed}, only {available} available{extra}")


class UnsupportedPlatform(PlanError):
    """podplug lays out PCIe topologies for QEMU q35 only; names what was asked."""

    def __init__(self, what: str, value: str, allowed: Sequence[str],
                 *, path: str | None = None) -> None:
        self.what = what
        self.value = value
        self.allowed = tuple(allowed)
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(
            f"{where}{what} = {_value(value)}: podplug plans only {_allowed(allowed)}"
        )

    def with_path(self, path: str) -> UnsupportedPlatform:
        """The same error, naming the file it came from."""
        return UnsupportedPlatform(self.what, self.value, self.allowed, path=path)


class QemuLacksFeature(PlanError):
    """The QEMU binary that would run the plan does not have a feature the plan renders.

    :ivar features: what is missing, as the plan spells it (``-object iommufd``)
    :ivar binary: the QEMU binary asked
    :ivar version: its version, as it reported it
    """

    def __init__(self, features: Sequence[str], binary: str, version: str) -> None:
        self.features = tuple(features)
        self.binary = binary
        self.version = version
        super().__init__(
            f"{binary} (QEMU {version}) has no {', '.join(self.features)}, which the plan "
            "needs; use a QEMU that has it (--qemu) or change the plan")


class GuestImageError(PodplugError):
    """The guest kernel or initramfs could not be obtained or assembled."""

    exit_code = 5


class VmError(PodplugError):
    """Something went wrong with the running VM, QMP or the guest agent."""

    exit_code = 6


class QemuLaunchError(VmError):
    """QEMU exited early or never offered its QMP socket."""

    def __init__(self, problem: str, *, exitcode: int | None, argv: Sequence[str], output: str):
        self.problem = problem
        self.exitcode = exitcode
        self.argv = tuple(argv)
        self.output = output
        last = output.strip().splitlines()[-1] if output.strip() else "no output"
        super().__init__(f"QEMU: {problem} (exit code {exitcode}): {last}")


class StorageDaemonError(QemuLaunchError):
    """qemu-storage-daemon exited, or an export's socket never appeared
    (:mod:`podplug.vm.storage_daemon`); ``export`` names the export it failed on."""

    def __init__(self, export: str, problem: str, *, exitcode: int | None,
                 argv: Sequence[str], output: str) -> None:
        self.export = export
        super().__init__(f"export {export}: {problem}", exitcode=exitcode, argv=argv,
                         output=output)


class QmpCommandError(VmError):
    """A QMP command failed; keeps what was sent and what came back."""

    def __init__(self, command: str, arguments: object, error_class: str, desc: str) -> None:
        self.command = command
        self.arguments = arguments
        self.error_class = error_class
        self.desc = desc
        super().__init__(f"QMP {command} failed: {error_class}: {desc}")


class StateError(VmError):
    """An operation needs the VM in another lifecycle state."""

    def __init__(self, operation: str, state: str, required: Sequence[str]) -> None:
        self.operation = operation
        self.state = state
        self.required = tuple(required)
        super().__init__(
            f"cannot {operation} while the VM is {state} (needs {' or '.join(required)})"
        )


class HotplugTimeout(VmError):
    """A bounded wait ran out; names the device and what was expected."""

    def __init__(self, device: str, expected: str, waited_s: float) -> None:
        self.device = device
        self.expected = expected
        self.waited_s = waited_s
        super().__init__(f"{device}: {expected} not seen within {waited_s:.1f} s")


class PlacementMismatch(VmError):
    """QEMU placed a device at another guest PCI path than the plan predicted."""

    def __init__(self, device: str, planned: str, actual: str) -> None:
        self.device = device
        self.planned = planned
        self.actual = actual
        super().__init__(f"{device}: planned at guest PCI path {planned}, QEMU put it at {actual}")


class AgentError(VmError):
    """The guest agent answered with an error, or the channel broke."""

    def __init__(self, verb: str, problem: str) -> None:
        self.verb = verb
        self.problem = problem
        super().__init__(f"guest agent {verb}: {problem}")


class AgentLost(AgentError):
    """The agent's channel broke, or a reply did not come in time: what the agent says
    next (if anything) can no longer be trusted to answer this request, so a run stops
    rather than marking one device failed and asking on."""


class BatchFailed(VmError):
    """A hot-plug batch stopped at one step; the steps before it were rolled back.

    :ivar cause: the error that stopped it
    :ivar command: the QMP command of the failed step; ``subject`` its device or node
    :ivar container_path: the requested device the step belonged to
    :ivar rollback_errors: what went wrong while undoing (empty when the undo was clean)
    """

    def __init__(self, cause: PodplugError, *, command: str, subject: str,
                 container_path: str, rollback_errors: Sequence[str]) -> None:
        self.cause = cause
        self.command = command
        self.subject = subject
        self.container_path = container_path
        self.rollback_errors = tuple(rollback_errors)
        extra = f"; rollback problems: {'; '.join(rollback_errors)}" if rollback_errors else ""
        super().__init__(f"{command} {subject} ({container_path}) failed, batch rolled back: "
                         f"{cause}{extra}")


class RunFailed(VmError):
    """``podplug run`` stopped on a VM error: in which phase, at which device and step, and
    what the teardown that followed could not undo (empty when it undid everything).

    :ivar cause: the error met
    :ivar phase: ``boot``, ``cold-plug read-back``, ``hot-plug``, ``proof``, ``unplug``...
    :ivar device: the requested device (container path) being handled, or ""
    :ivar step: what was being done to it (a QMP command and id, an agent verb), or ""
    :ivar qemu_exit: how QEMU ended when it had died by then ("" when it still ran)
    """

    def __init__(self, cause: PodplugError, *, phase: str, device: str = "", step: str = "",
                 qemu_exit: str = "", teardown_errors: Sequence[str] = ()) -> None:
        self.cause = cause
        self.phase = phase
        self.device = device
        self.step = step
        self.qemu_exit = qemu_exit
        self.teardown_errors = tuple(teardown_errors)
        where = ", ".join(w for w in (device, step) if w)
        text = f"run failed in {phase}{f' ({where})' if where else ''}: {cause}"
        if qemu_exit:
            text += f"; {qemu_exit}"
        if teardown_errors:
            text += f"; teardown left: {'; '.join(teardown_errors)}"
        super().__init__(text)
