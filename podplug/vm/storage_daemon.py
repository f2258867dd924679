"""A qemu-storage-daemon exporting raw images as vhost-user-blk sockets.

qemu-storage-daemon(1) runs QEMU's block layer without a VM (``--blockdev``, ``--export``,
``--chardev`` + ``--monitor`` for QMP) and "runs until it is stopped using the quit QMP
command or SIGINT/SIGHUP/SIGTERM". Per :class:`Export` N (:func:`daemon_argv`)::

    --blockdev driver=file,node-name=N-file,filename=IMAGE[,read-only=on]
    --blockdev driver=raw,node-name=N,file=N-file[,read-only=on]
    --export type=vhost-user-blk,id=N-export,node-name=N,addr.type=unix,addr.path=SOCKET,
             writable=on|off
    then: --chardev socket,id=qmp,path=DIR/qmp.sock,server=on,wait=off --monitor chardev=qmp

The vhost-user-blk export (QAPI ``BlockExportOptionsVhostUserBlk``, same options in 7.2
and 10.0) "takes a vhost-user socket address on which it accept[s] incoming connections":
the daemon, the vhost-user back end, is the socket's server; QEMU, the front end, connects
(``chardev-add`` socket with ``"server": false``, then ``device_add vhost-user-blk-pci``),
and its guest RAM must be shareable (``memory-backend-memfd,share=on``; QEMU's
docs/system/devices/vhost-user.rst). ``writable`` defaults to off, so it is always given; a
read-only export also opens its nodes ``read-only=on``. Options are handled in command-line
order before the main loop starts, so the monitor, last, answers only once every export
exists.

Shutdown order, for this module's users: the guest's device must be gone from QEMU
(``device_del`` and its ``DEVICE_DELETED``, then ``chardev-remove``), or QEMU ended, BEFORE
the daemon stops; a ``StorageDaemon`` context encloses the VM's. Stopping the daemon first
(measured, QEMU 7.2 and 10.0, no guest driver) leaves QEMU running with the device still
plugged and its back end gone ("Unexpected end-of-file before all data were read"): a guest
request to that disk has nothing to answer it.

Process handling follows :class:`podplug.vm.process.Vm`: a private 0700 directory ``DIR``
(QMP socket; ``qsd.log``, stdout and stderr, a file, never a pipe) removed with the export
sockets on every exit path; ``Confinement.user`` through ``subprocess``'s user, group and
extra_groups (no ``preexec_fn``), ``umask`` 077, ``DIR`` chowned to that user; ``setpriv
--pdeathsig KILL``; a session of its own; stop by QMP ``quit``, then SIGTERM, then SIGKILL,
each bounded. qemu-storage-daemon has NO ``-sandbox`` option (``--help`` lists none; 7.2 and
10.0 answer ``unrecognized option '--sandbox'``): it runs without seccomp, and a
Confinement asking for the sandbox is refused, not silently ignored.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from podplug.errors import StateError, StorageDaemonError, VmError
from podplug.interrupts import deferred
from podplug.vm.process import SETPRIV, Confinement
from podplug.vm.qmp import QmpSession

DEFAULT_STORAGE_DAEMON = "/usr/bin/qemu-storage-daemon"  # Debian: qemu-system-common
#: a QEMU id (letter, then letters, digits, ``-._``); ``N-file`` must fit a 32-byte node name
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,25}\Z")
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
_LOG_TAIL_CHARS = 4000
_QUIT_WAIT_S, _TERM_WAIT_S, _KILL_WAIT_S = 5.0, 1.0, 2.0
#: the default confinement: podplug's own user; never a sandbox (the daemon has none)
UNSANDBOXED = Confinement(sandbox=False)


@dataclass(frozen=True)
class Export:
    """One image exported as one vhost-user-blk socket (the daemon is its server)."""

    name: str  # QMP-safe id, e.g. "vub0"; nodes are NAME-file and NAME, the export NAME-export
    image: Path  # a raw image file the daemon opens by name (absolute)
    socket: Path  # where the daemon creates the unix socket (absolute)
    writable: bool = True


def storage_daemon_binary(qemu_binary: str) -> str:
    """qemu-storage-daemon beside ``qemu_binary`` if it is there, else Debian's (never $PATH)."""
    beside = os.path.join(os.path.dirname(qemu_binary), "qemu-storage-daemon")
    if os.path.isabs(beside) and os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    return DEFAULT_STORAGE_DAEMON


def _path(what: str, path: Path, socket: bool = False) -> str:
    text = str(path)
    if not os.path.isabs(text):
        raise ValueError(f"{what} must be an absolute path: {text}")
    if "," in text:
        raise ValueError(f"QEMU option syntax cannot take a ',' in {what}: {text}")
    if socket and len(os.fsencode(text)) > _UNIX_PATH_MAX:
        raise ValueError(f"{what} longer than {_UNIX_PATH_MAX} bytes: {text}")
    return text


def daemon_argv(binary: str, exports: Sequence[Export], workdir: Path) -> list[str]:
    """The daemon's command line for ``exports``, its QMP socket in ``workdir`` (pure).

    :raise ValueError: no exports, a name QEMU would refuse or used twice, a socket used
        twice, a relative path, a ',' in a path, a socket path too long for ``sun_path``
    """
    if not exports:
        raise ValueError("a storage daemon needs at least one export")
    argv = [binary]
    for export in exports:
        name = export.name
        if not _NAME.match(name):
            raise ValueError(f"export name {name!r} is not a QEMU id of at most 26 characters")
        image = _path(f"the image of export {name}", export.image)
        sock = _path(f"the socket of export {name}", export.socket, socket=True)
        ro = "" if export.writable else ",read-only=on"
        argv += [
            "--blockdev", f"driver=file,node-name={name}-file,filename={image}{ro}",
            "--blockdev", f"driver=raw,node-name={name},file={name}-file{ro}",
            "--export", f"type=vhost-user-blk,id={name}-export,node-name={name},"
                        f"addr.type=unix,addr.path={sock},"
                        f"writable={'on' if export.writable else 'off'}",
        ]  # fmt: skip
    for field in ("name", "socket"):
        values = [str(getattr(e, field)) for e in exports]
        if len(set(values)) < len(values):
            raise ValueError(f"two exports share a {field}: {', '.join(values)}")
    qmp = _path("the daemon's directory", workdir / "qmp.sock", socket=True)
    return [*argv, "--chardev", f"socket,id=qmp,path={qmp},server=on,wait=off",
            "--monitor", "chardev=qmp"]


def is_socket(path: str | Path) -> bool:
    """Whether a unix socket is at ``path`` itself (``lstat``: a link is not one)."""
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


class StorageDaemon:
    """One qemu-storage-daemon run; ``with StorageDaemon(...) as d`` starts and always stops.

    Single-use. ``binary`` is explicit (see :func:`storage_daemon_binary`).
    """

    def __init__(self, exports: Sequence[Export], *, binary: str,
                 confinement: Confinement = UNSANDBOXED,
                 tmp_parent: str | None = None, start_timeout: float = 10.0) -> None:
        if confinement.sandbox:
            raise ValueError("qemu-storage-daemon has no -sandbox option: pass "
                             "Confinement(sandbox=False, ...)")
        self.exports = tuple(exports)
        daemon_argv(binary, self.exports, Path("/"))  # ValueError now, before any resource
        self.binary, self.confinement = binary, confinement
        self.start_timeout = start_timeout
        self._tmp_parent = tmp_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QmpSession | None = None
        #: the private directory (kept as a record after it is removed); the command line
        self.workdir: Path | None = None
        self.argv: tuple[str, ...] = ()
        self._used = self._owns_sockets = self._stopped = False
        self._final_log = ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self.exit_code is None and self._proc is not None

    @property
    def exit_code(self) -> int | None:
        """The exit status once ended (0 after a clean ``quit``; negative: the signal)."""
        return self._proc.poll() if self._proc else None

    @property
    def log_tail(self) -> str:
        """The end of the daemon's stdout and stderr (kept after the directory is gone)."""
        if self.workdir is None or self._stopped:
            return self._final_log
        try:
            data = (self.workdir / "qsd.log").read_bytes()
        except OSError:
            return self._final_log
        return data[-_LOG_TAIL_CHARS:].decode("utf-8", "replace")

    @property
    def qmp(self) -> QmpSession:
        """The daemon's QMP session (``query-block-exports``, ``block-export-add``, ...)."""
        if self._qmp is None or not self._qmp.connected or self._stopped:
            raise StateError("use the storage daemon's QMP", "not running", ["running"])
        return self._qmp

    # -- start --------------------------------------------------------------------------

    def __enter__(self) -> StorageDaemon:
        if self._used:
            raise ValueError("a StorageDaemon is single-use")
        self._used = True
        try:
            self._start(time.monotonic() + self.start_timeout)
        except StorageDaemonError:
            raise  # _fail has cleaned up
        except BaseException:  # KeyboardInterrupt, bugs: clean up, let them through
            self._release()
            raise
        return self

    def _start(self, deadline: float) -> None:
        first = self.exports[0].name
        for export in self.exports:
            if os.path.lexists(export.socket):
                self._fail(export.name, f"{export.socket} already exists")
        self._owns_sockets = True
        self.workdir = Path(tempfile.mkdtemp(prefix="podplug-qsd-", dir=self._tmp_parent))
        try:
            self.argv = tuple(daemon_argv(self.binary, self.exports, self.workdir))
        except ValueError as exc:
            self._fail(first, str(exc))
        for binary in (self.binary, SETPRIV):
            if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
                self._fail(first, f"cannot execute {binary}: not an executable file")
        user: dict[str, object] = {}
        if self.confinement.user is not None:
            uid, gid = self.confinement.user
            os.chown(self.workdir, uid, gid)
            user = {"user": uid, "group": gid, "extra_groups": list(self.confinement.groups)}
        with open(self.workdir / "qsd.log", "wb") as log, deferred():
            try:  # deferred: no signal between the child's start and its record here
                self._proc = subprocess.Popen(  # type: ignore[call-overload]
                    (SETPRIV, "--pdeathsig", "KILL", *self.argv), stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, close_fds=True,
                    start_new_session=True, umask=0o077, **user)
            except OSError as exc:
                self._fail(first, f"cannot execute {self.binary}: {exc}")
        qmp_sock = self.workdir / "qmp.sock"
        while True:
            missing = [e.name for e in self.exports if not is_socket(e.socket)]
            if not missing and is_socket(qmp_sock):
                break
            if self._proc.poll() is not None:
                self._fail(self._blamed(missing), "qemu-storage-daemon exited before its "
                           "sockets appeared")
            if time.monotonic() >= deadline:
                self._fail(missing[0] if missing else first, "socket did not appear within "
                           f"{self.start_timeout:.1f} s")
            time.sleep(0.005)
        self._qmp = QmpSession("qsd")
        while True:  # the socket file exists (bind) a moment before the daemon listens
            try:
                self._qmp.connect(str(qmp_sock), max(0.1, deadline - time.monotonic()))
                return
            except VmError as exc:
                if self._proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                self._fail(first, f"QMP did not come up: {exc}")

    def _blamed(self, missing: list[str]) -> str:
        """The export whose option the daemon's last line quotes, else the first missing."""
        lines = self.log_tail.strip().splitlines()
        for e in self.exports:
            if lines and re.search(rf"(node-name|id)={re.escape(e.name)}(-file|-export)?[,:]",
                                   lines[-1]):
                return e.name
        return missing[0] if missing else self.exports[0].name

    def _fail(self, export: str, problem: str) -> NoReturn:
        """Stop what was started, clean up, raise :class:`StorageDaemonError`."""
        self._release()
        raise StorageDaemonError(export, problem, exitcode=self.exit_code, argv=self.argv,
                                 output=self._final_log)

    # -- stop ---------------------------------------------------------------------------

    def stop(self, timeout: float = _QUIT_WAIT_S) -> None:
        """QMP ``quit`` (bounded by ``timeout``), then SIGTERM (1 s), then SIGKILL; always
        removes the directory and the sockets. Idempotent."""
        if self._stopped:
            return
        proc = self._proc
        try:
            if proc is not None and proc.poll() is None:
                deadline = time.monotonic() + timeout
                if self._qmp is not None and self._qmp.connected:
                    with contextlib.suppress(VmError):  # a hang-up before the reply is fine
                        self._qmp.execute("quit", timeout=max(0.1, deadline - time.monotonic()))
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(max(0.0, deadline - time.monotonic()))
                if proc.poll() is None:
                    proc.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(_TERM_WAIT_S)
        finally:
            self._release()

    def _release(self) -> None:
        """Make sure the daemon is dead and reaped; close QMP; remove the sockets and DIR."""
        try:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(_KILL_WAIT_S)
                except subprocess.TimeoutExpired as exc:
                    raise VmError(f"qemu-storage-daemon pid {proc.pid} survived SIGKILL for "
                                  f"{_KILL_WAIT_S} s") from exc
        finally:
            if self._qmp is not None:
                self._qmp.close()
            self._final_log = self.log_tail
            self._stopped = self._used = True
            if self._owns_sockets:
                for export in self.exports:
                    if is_socket(export.socket):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(export.socket)
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
