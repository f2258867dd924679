"""The QEMU process: launch, QMP connection and shutdown.

A :class:`Vm` is one QEMU run, with explicit states and guards::

    PLANNED --launch--> LAUNCHING --QMP ready--> RUNNING --shutdown--> STOPPING --> STOPPED
        \\______________ launch failed / shutdown before launch ___________________/

Operations asked in the wrong state raise :class:`~podplug.errors.StateError`. A Vm is
single-use: STOPPED is final.

What :meth:`Vm.launch` adds to the planned argv tail (qemu-recipe.md step 3)::

    qemu-system-x86_64 -accel tcg|kvm -display none -no-reboot -nodefaults -no-user-config
        -qmp unix:DIR/qmp.sock,server=on,wait=off -serial file:DIR/serial.log  <tail>

``DIR`` is a private temporary directory (0700), removed on every exit path. QEMU's stdout
and stderr go to ``DIR/qemu.log`` (a file, so a chatty QEMU can never block on a full pipe).

Confinement (:class:`Confinement`, issue 10), set up without ``preexec_fn`` (which is unsafe
once QMP's threads run): QEMU runs under its seccomp sandbox, ``-sandbox
on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny``; as the user
given (``nobody`` when podplug runs as root, see :mod:`podplug.run.session`), switched to by
``subprocess`` itself before ``exec``, with ``umask`` 077 so what QEMU creates (sockets, the
serial log) is its own alone, ``DIR`` handed to that user; and through ``setpriv
--pdeathsig KILL`` (util-linux), so that if the Python process dies QEMU is sent SIGKILL.
The kernel ties that signal to the *thread* that forked, so launch a Vm from a thread that
outlives it; measured on this project's machines (a Firecracker guest kernel, 6.18), the
signal was never delivered, by setpriv or by ``prctl`` in a ``preexec_fn``: there only the
cleanup paths stop QEMU. QEMU also gets its own session, so a terminal Ctrl-C reaches Python
(and the ``with`` block's cleanup), not QEMU directly. Files QEMU must read at start that its
user cannot reach (the guest kernel in root's cache) are passed open: ``pass_fds`` and a
``/proc/self/fd/N`` argument.

Shutdown is QMP ``quit``, then SIGTERM, then SIGKILL. ``quit`` rather than
``system_powerdown``: powerdown asks the guest via ACPI and completes only if a guest OS
handles the power button; with ``-S``, with firmware only, or with podplug's busybox guest
(no acpid) it never completes and would cost the whole soft timeout every time. The
sandbox guest has no state worth an orderly guest shutdown (Kata's ``stopSandbox`` also
ends QEMU with ``quit``); QEMU itself still closes and flushes its block backends on quit.

The accelerator a Vm gets is chosen in :mod:`podplug.vm.accel`.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn, TypeVar

from podplug.errors import HotplugTimeout, QemuLaunchError, StateError, VmError
from podplug.interrupts import deferred
from podplug.vm.qmp import (
    DEFAULT_REPLY_TIMEOUT_S,
    Answer,
    EventMatch,
    EventWatch,
    QmpEvent,
    QmpSession,
)

DEFAULT_QEMU = "/usr/bin/qemu-system-x86_64"  # never looked up in $PATH (issue 10)
BASE_ARGS = ("-display", "none", "-no-reboot", "-nodefaults", "-no-user-config")
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
_OUTPUT_TAIL_CHARS = 4000
_TERM_WAIT_S = 1.0
_KILL_WAIT_S = 2.0

_R = TypeVar("_R")

SETPRIV = "/usr/bin/setpriv"  # util-linux (Essential on Debian): --pdeathsig before exec
SANDBOX = ("-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")


@dataclass(frozen=True)
class Confinement:
    """How a QEMU process is held in: its seccomp sandbox, and the user it runs as."""

    sandbox: bool = True
    user: tuple[int, int] | None = None  # (uid, gid); None: podplug's own
    groups: tuple[int, ...] = ()  # supplementary groups when ``user`` is set


class VmState(enum.Enum):
    PLANNED = "planned"
    LAUNCHING = "launching"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Accel(enum.Enum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class StopHow(enum.Enum):
    """How the QEMU process ended."""

    NEVER_STARTED = "never-started"
    EXITED = "exited"  # QEMU had already exited (guest poweroff, crash) before shutdown
    QUIT = "quit"  # QMP quit
    SIGTERM = "sigterm"
    SIGKILL = "sigkill"


@dataclass(frozen=True)
class StopReport:
    how: StopHow
    exitcode: int | None
    seconds: float


def build_argv(qemu_binary: str, accel: Accel, workdir: Path, tail: Sequence[str]) -> list[str]:
    """The full QEMU command line for a run in ``workdir`` (pure)."""
    if accel is Accel.AUTO:
        raise ValueError("Vm needs the accelerator actually used; resolve AUTO with choose_accel")
    qmp_sock, serial = workdir / "qmp.sock", workdir / "serial.log"
    if "," in str(workdir):
        raise ValueError(f"QEMU option syntax cannot take a ',' in the VM directory: {workdir}")
    if len(str(qmp_sock)) > _UNIX_PATH_MAX:
        raise ValueError(f"QMP socket path longer than {_UNIX_PATH_MAX} bytes: {qmp_sock}")
    return [
        qemu_binary,
        "-accel", accel.value,
        *BASE_ARGS,
        "-qmp", f"unix:{qmp_sock},server=on,wait=off",
        "-serial", f"file:{serial}",
        *tail,
    ]  # fmt: skip


def _proc_state(pid: int) -> str:
    """The kernel's word on a process (``State:`` of ``/proc/PID/status``), for errors."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            return next((line.strip() for line in status if line.startswith("State:")),
                        "no State line")
    except OSError as exc:
        return f"/proc/{pid}: {exc.strerror}"


def _tail(path: Path, limit: int) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


class Vm:
    """One QEMU process with its QMP session; ``with Vm(...) as vm`` launches and always stops.

    :param argv_tail: the planned arguments (machine, memory, kernel, devices, ...)
    :param accel: the accelerator actually used (TCG or KVM, see :func:`choose_accel`)
    """

    def __init__(
        self,
        argv_tail: Sequence[str],
        *,
        accel: Accel,
        qemu_binary: str = DEFAULT_QEMU,
        tmp_parent: str | None = None,
        name: str = "podplug",
        confinement: Confinement = Confinement(),
        pass_fds: Sequence[int] = (),
    ) -> None:
        if accel is Accel.AUTO:
            raise ValueError("Vm needs the accelerator actually used; resolve AUTO first")
        if isinstance(argv_tail, str):
            raise TypeError("argv_tail is a sequence of arguments, not one string")
        self.argv_tail = tuple(argv_tail)
        self.accel = accel
        self.qemu_binary = qemu_binary
        self.name = name
        self.confinement = confinement
        self.pass_fds = tuple(pass_fds)
        self._tmp_parent = tmp_parent
        self._state = VmState.PLANNED
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QmpSession | None = None
        self._workdir: Path | None = None
        self._argv: tuple[str, ...] = ()
        #: QOM ``addr``/``parent_bus`` of the boot topology's ports, read once
        #: (:func:`podplug.vm.qompath.read_placements`)
        self.port_placements: dict[tuple[str, str], object] = {}
        self._final_output = ""
        self._report: StopReport | None = None

    # -- state ----------------------------------------------------------------------

    @property
    def state(self) -> VmState:
        return self._state

    def _require(self, operation: str, *states: VmState) -> None:
        if self._state not in states:
            raise StateError(operation, self._state.value, [s.value for s in states])

    @property
    def argv(self) -> tuple[str, ...]:
        """The command line of the launch (empty before launch)."""
        return self._argv

    @property
    def workdir(self) -> Path | None:
        """The private directory of the run (kept as a record after it is removed)."""
        return self._workdir

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def exit_code(self) -> int | None:
        """QEMU's exit status once it has ended (negative: the signal), else ``None``."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def serial_log(self) -> Path:
        self._require("read the serial log", VmState.RUNNING)
        assert self._workdir is not None
        return self._workdir / "serial.log"

    @property
    def stop_report(self) -> StopReport | None:
        return self._report

    def output(self, limit: int = _OUTPUT_TAIL_CHARS) -> str:
        """The tail of the serial console, then QEMU's stdout/stderr (stderr last)."""
        if self._workdir is None or not self._workdir.exists():
            return self._final_output[-limit:] if limit else self._final_output
        serial = _tail(self._workdir / "serial.log", limit)
        log = _tail(self._workdir / "qemu.log", limit)
        parts = []
        if serial.strip():
            parts.append(f"--- serial (tail) ---\n{serial.rstrip()}")
        if log.strip():
            parts.append(f"--- qemu stderr ---\n{log.rstrip()}")
        return "\n".join(parts)

    # -- launch ---------------------------------------------------------------------

    def launch(self, timeout: float = 30.0) -> None:
        """Start QEMU and connect QMP within ``timeout`` seconds.

        :raise QemuLaunchError: QEMU could not start, exited, or never offered QMP; the
            process is gone and the directory removed when this is raised.
        :raise StateError: the Vm is not PLANNED
        """
        self._require("launch", VmState.PLANNED)
        self._state = VmState.LAUNCHING
        try:
            self._launch(timeout)
        except QemuLaunchError:
            raise  # _fail has cleaned up
        except BaseException:
            # KeyboardInterrupt and bugs: clean up, then let them through.
            self._release(StopHow.SIGKILL, time.monotonic())
            raise
        self._state = VmState.RUNNING

    def _launch(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._workdir = Path(tempfile.mkdtemp(prefix="podplug-vm-", dir=self._tmp_parent))
        confined = self.confinement
        try:
            tail = (*SANDBOX, *self.argv_tail) if confined.sandbox else self.argv_tail
            self._argv = tuple(build_argv(self.qemu_binary, self.accel, self._workdir, tail))
        except ValueError as exc:
            self._fail(str(exc))
        for binary in (self.qemu_binary, SETPRIV):
            if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
                self._fail(f"cannot execute {binary}: not an executable file")
        sock = self._workdir / "qmp.sock"
        user: dict[str, object] = {}
        if confined.user is not None:
            uid, gid = confined.user
            os.chown(self._workdir, uid, gid)
            user = {"user": uid, "group": gid, "extra_groups": list(confined.groups)}
        with open(self._workdir / "qemu.log", "wb") as log, deferred():
            try:  # deferred: no signal between the child's start and its record here
                self._proc = subprocess.Popen(  # type: ignore[call-overload]
                    (SETPRIV, "--pdeathsig", "KILL", *self._argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    close_fds=True,
                    pass_fds=self.pass_fds,
                    start_new_session=True,
                    umask=0o077,
                    **user,
                )
            except OSError as exc:
                self._fail(f"cannot execute {self.qemu_binary}: {exc}")
        while not sock.exists():
            if self._proc.poll() is not None:
                self._fail("QEMU exited before offering QMP")
            if time.monotonic() >= deadline:
                self._fail(f"QMP socket did not appear within {timeout:.1f} s")
            time.sleep(0.005)
        self._qmp = QmpSession(self.name)
        while True:
            # QEMU creates the socket file (bind) a moment before it listens: a refused
            # connection while QEMU lives and time remains is retried.
            try:
                self._qmp.connect(str(sock), max(0.1, deadline - time.monotonic()))
                return
            except VmError as exc:
                alive = self._proc.poll() is None and time.monotonic() < deadline
                if alive and not isinstance(exc, HotplugTimeout):
                    time.sleep(0.005)
                    continue
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(0.2)  # a dying QEMU: let its exit code be reported
                self._fail(f"QMP did not come up: {exc}")

    def _fail(self, problem: str) -> NoReturn:
        """Kill what was started, clean up, raise QemuLaunchError (never returns)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(_KILL_WAIT_S)
        exitcode = self._proc.poll() if self._proc is not None else None
        output = self.output()
        how = StopHow.NEVER_STARTED if self._proc is None else StopHow.EXITED
        if exitcode == -signal.SIGKILL:
            how = StopHow.SIGKILL
        self._release(how, time.monotonic())
        raise QemuLaunchError(problem, exitcode=exitcode, argv=self._argv, output=output)

    # -- QMP, guarded ---------------------------------------------------------------

    @property
    def qmp(self) -> QmpSession:
        self._require("use QMP", VmState.RUNNING)
        assert self._qmp is not None
        return self._qmp

    def execute(
        self,
        command: str,
        arguments: Mapping[str, object] | None = None,
        timeout: float = DEFAULT_REPLY_TIMEOUT_S,
    ) -> object:
        """A QMP command on the running VM (see :meth:`QmpSession.execute`)."""
        self._require(f"execute {command}", VmState.RUNNING)
        return self._with_exit_context(
            command, lambda: self.qmp.execute(command, arguments, timeout)
        )

    def execute_many(
        self,
        commands: Sequence[tuple[str, Mapping[str, object] | None]],
        timeout: float = DEFAULT_REPLY_TIMEOUT_S,
    ) -> list[Answer]:
        """QMP commands pipelined on the running VM (see :meth:`QmpSession.execute_many`)."""
        self._require("execute a batch", VmState.RUNNING)
        what = ", ".join(sorted({c for c, _ in commands}))
        return self._with_exit_context(what, lambda: self.qmp.execute_many(commands, timeout))

    def add_fd(self, fd: int, fdset_id: int, opaque: str) -> object:
        """Hand QEMU an open file as ``/dev/fdset/<fdset_id>`` (:meth:`QmpSession.add_fd`)."""
        self._require("add-fd", VmState.RUNNING)
        return self._with_exit_context("add-fd", lambda: self.qmp.add_fd(fd, fdset_id, opaque))

    def get_fd(self, fd: int, name: str) -> object:
        """Hand QEMU an open descriptor under ``name`` (:meth:`QmpSession.get_fd`)."""
        self._require("getfd", VmState.RUNNING)
        return self._with_exit_context("getfd", lambda: self.qmp.get_fd(fd, name))

    def qom_get(self, path: str, prop: str) -> object:
        self._require("qom-get", VmState.RUNNING)
        return self._with_exit_context("qom-get", lambda: self.qmp.qom_get(path, prop))

    def watch(self, *names: str, match: EventMatch | None = None) -> EventWatch:
        self._require("watch events", VmState.RUNNING)
        return self.qmp.watch(*names, match=match)

    def device_del_and_wait(self, device_id: str, timeout: float) -> QmpEvent:
        self._require("device_del", VmState.RUNNING)
        return self._with_exit_context(
            "device_del", lambda: self.qmp.device_del_and_wait(device_id, timeout)
        )

    def _with_exit_context(self, what: str, call: Callable[[], _R]) -> _R:
        try:
            return call()
        except VmError as exc:
            if type(exc) is VmError and self._proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(0.2)
                if self._proc.poll() is not None:
                    last = self.output().strip().splitlines()
                    raise VmError(
                        f"QEMU exited (code {self._proc.returncode}) during {what}: "
                        f"{last[-1] if last else 'no output'}"
                    ) from exc
            raise

    # -- shutdown -------------------------------------------------------------------

    def shutdown(self, timeout: float = 10.0) -> StopReport:
        """Stop QEMU: QMP ``quit`` (bounded by ``timeout``), then SIGTERM (1 s), then SIGKILL.

        Always closes QMP and removes the directory. Idempotent: a second call returns the
        first report. Safe from any state; from PLANNED it just marks the Vm STOPPED.
        """
        if self._report is not None:
            return self._report
        started = time.monotonic()
        if self._state is VmState.PLANNED:
            self._state = VmState.STOPPED
            self._report = StopReport(StopHow.NEVER_STARTED, None, 0.0)
            return self._report
        self._state = VmState.STOPPING
        how = StopHow.SIGKILL
        try:
            how = self._stop_process(started + timeout)
        finally:
            self._release(how, started)
        assert self._report is not None
        return self._report

    def _stop_process(self, deadline: float) -> StopHow:
        proc = self._proc
        if proc is None:
            return StopHow.NEVER_STARTED
        if proc.poll() is not None:
            return StopHow.EXITED
        if self._qmp is not None and self._qmp.connected:
            # QEMU may hang up before it replies to quit: both mean "quitting".
            with contextlib.suppress(VmError):
                self._qmp.execute("quit", timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
                return StopHow.QUIT
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(_TERM_WAIT_S)
            return StopHow.SIGTERM
        return StopHow.SIGKILL  # _release kills

    def _release(self, how: StopHow, started: float) -> None:
        """Make sure QEMU is dead and reaped, close QMP, keep the output, remove the dir."""
        try:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                how = StopHow.SIGKILL
                try:
                    proc.wait(_KILL_WAIT_S)
                except subprocess.TimeoutExpired as exc:
                    raise VmError(
                        f"QEMU pid {proc.pid} survived SIGKILL for {_KILL_WAIT_S} s "
                        f"({_proc_state(proc.pid)})"
                    ) from exc
        finally:
            if self._qmp is not None:
                self._qmp.close()
            self._final_output = self.output()
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            exitcode = self._proc.returncode if self._proc is not None else None
            self._report = StopReport(how, exitcode, time.monotonic() - started)
            self._state = VmState.STOPPED

    # -- context manager ------------------------------------------------------------

    def __enter__(self) -> Vm:
        if self._state is VmState.PLANNED:
            self.launch()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<Vm {self.name} {self._state.value} pid={self.pid} accel={self.accel.value}>"
