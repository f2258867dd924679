"""qemu-storage-daemon exporting a raw image as vhost-user-blk, and a real QEMU using it.

Tests marked ``vm`` run the real daemon (``storage_daemon_binary(QEMU)``: beside the
QEMU under test, else Debian 12's ``/usr/bin/qemu-storage-daemon``; ``$PODPLUG_TEST_QSD``,
an absolute path, overrides it) and FAIL (never skip) without it; the one run as ``nobody``
skips when not root. The unmarked tests at the end are pure.
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podplug.errors import StorageDaemonError
from podplug.interrupts import Interrupted, handled
from podplug.vm.process import Accel, Confinement, Vm
from podplug.vm.storage_daemon import (
    DEFAULT_STORAGE_DAEMON,
    Export,
    StorageDaemon,
    daemon_argv,
    storage_daemon_binary,
)
from tests.support import QEMU

vm = pytest.mark.vm

QSD = os.environ.get("PODPLUG_TEST_QSD") or storage_daemon_binary(QEMU)
MIB = 1 << 20


def require_qsd() -> None:
    if not os.access(QSD, os.X_OK):
        pytest.fail(f"{QSD} is not installed (apt-get install qemu-system-common)")


def process_gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for a (non-reaping) init."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return status.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def image(path: Path, size: int = 16 * MIB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def assert_nothing_left(daemon: StorageDaemon, pid: int | None, *sockets: Path) -> None:
    assert pid is not None and process_gone(pid)
    assert not daemon.alive
    assert daemon.workdir is not None and not daemon.workdir.exists()
    for sock in sockets:
        assert not os.path.lexists(sock), sock


@pytest.fixture
def one(tmp_path: Path) -> Export:
    require_qsd()
    return Export("vub0", image(tmp_path / "disk.raw"), tmp_path / "vub0.sock")


@vm
def test_socket_appears_and_qmp_names_the_export(tmp_path: Path, one: Export) -> None:
    ro = Export("vub1", image(tmp_path / "ro.raw", MIB), tmp_path / "vub1.sock", writable=False)
    with StorageDaemon([one, ro], binary=QSD) as daemon:
        pid = daemon.pid
        assert daemon.alive and pid is not None
        for export in (one, ro):
            assert stat.S_ISSOCK(os.lstat(export.socket).st_mode)
            assert stat.S_IMODE(os.lstat(export.socket).st_mode) & 0o077 == 0  # umask 077
        exports = daemon.qmp.execute("query-block-exports")
        assert isinstance(exports, list)
        assert sorted((e["id"], e["node-name"], e["type"]) for e in exports) == [
            ("vub0-export", "vub0", "vhost-user-blk"),
            ("vub1-export", "vub1", "vhost-user-blk"),
        ]  # fmt: skip
        nodes = daemon.qmp.execute("query-named-block-nodes")
        assert isinstance(nodes, list)
        read_only = {n["node-name"]: n["ro"] for n in nodes}
        assert read_only == {"vub0": False, "vub0-file": False, "vub1": True, "vub1-file": True}
    assert_nothing_left(daemon, pid, one.socket, ro.socket)
    assert daemon.exit_code == 0  # QMP quit, not a signal


@vm
def test_stop_is_idempotent_and_single_use(one: Export) -> None:
    daemon = StorageDaemon([one], binary=QSD)
    with daemon:
        pid = daemon.pid
    daemon.stop()
    assert_nothing_left(daemon, pid, one.socket)
    with pytest.raises(ValueError, match="single-use"), daemon:
        pass


@vm
def test_exception_in_with_block_still_cleans_up(one: Export) -> None:
    seen: dict[str, int | None] = {}
    with pytest.raises(RuntimeError, match="boom"), \
            StorageDaemon([one], binary=QSD) as daemon:
        seen["pid"] = daemon.pid
        raise RuntimeError("boom")
    assert_nothing_left(daemon, seen["pid"], one.socket)


@vm
def test_signal_in_with_block_still_cleans_up(one: Export) -> None:
    """A real SIGTERM under :func:`handled`, as ``podplug run`` gets one."""
    seen: dict[str, int | None] = {}
    with pytest.raises(Interrupted), handled(), StorageDaemon([one], binary=QSD) as daemon:
        seen["pid"] = daemon.pid
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
        time.sleep(10)
    assert_nothing_left(daemon, seen["pid"], one.socket)


@vm
def test_missing_image_is_one_line_naming_the_export(tmp_path: Path, one: Export) -> None:
    lost = Export("vub1", tmp_path / "missing.raw", tmp_path / "vub1.sock")
    daemon = StorageDaemon([one, lost], binary=QSD)
    with pytest.raises(StorageDaemonError) as info:
        daemon.__enter__()
    err = info.value
    assert err.export == "vub1" and err.exitcode == 1
    text = str(err)
    assert "\n" not in text and text.startswith("QEMU: export vub1: ")
    assert "Could not open" in text and str(lost.image) in text
    assert "Could not open" in err.output and err.argv[0] == QSD
    assert "Could not open" in daemon.log_tail
    assert_nothing_left(daemon, daemon.pid, one.socket, lost.socket)


@vm
def test_export_failure_names_that_export(tmp_path: Path, one: Export) -> None:
    """The block nodes open, the export cannot bind: the blame is read off the log."""
    bad = Export("vub1", image(tmp_path / "b.raw"), tmp_path / "no-such-dir" / "vub1.sock")
    daemon = StorageDaemon([one, bad], binary=QSD)
    with pytest.raises(StorageDaemonError) as info:
        daemon.__enter__()
    assert info.value.export == "vub1" and "id=vub1-export" in str(info.value)
    assert_nothing_left(daemon, daemon.pid, one.socket, bad.socket)


@vm
def test_socket_already_there_is_refused_and_kept(one: Export) -> None:
    one.socket.write_text("not ours")
    with pytest.raises(StorageDaemonError, match="already exists") as info:
        StorageDaemon([one], binary=QSD).__enter__()
    assert info.value.export == "vub0" and info.value.exitcode is None
    assert one.socket.read_text() == "not ours"


@pytest.fixture
def nobody_dir() -> Iterator[tuple[Path, int, int]]:
    """A directory ``nobody`` owns (``tmp_path`` sits in root's 0700 tree)."""
    if os.geteuid() != 0:
        pytest.skip("switching the daemon to another user needs root")
    entry = pwd.getpwnam("nobody")
    path = Path(tempfile.mkdtemp(prefix="podplug-qsd-test-"))
    os.chown(path, entry.pw_uid, entry.pw_gid)
    try:
        yield path, entry.pw_uid, entry.pw_gid
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


@vm
def test_runs_as_nobody(nobody_dir: tuple[Path, int, int]) -> None:
    require_qsd()
    path, uid, gid = nobody_dir
    export = Export("vub0", image(path / "disk.raw"), path / "vub0.sock")
    os.chown(export.image, uid, gid)
    confinement = Confinement(sandbox=False, user=(uid, gid))
    with StorageDaemon([export], binary=QSD, confinement=confinement) as daemon:
        pid = daemon.pid
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()
        assert uids[1:] == [str(uid)] * 4  # real, effective, saved, filesystem
        assert os.lstat(export.socket).st_uid == uid
        assert daemon.workdir is not None and daemon.workdir.stat().st_uid == uid
        assert daemon.qmp.execute("query-block-exports")
    assert_nothing_left(daemon, pid, export.socket)


VUB_VM = [
    "-machine", "q35,memory-backend=mem0",
    "-object", "memory-backend-memfd,id=mem0,size=256M,share=on", "-m", "256",
    "-device", "pcie-root-port,id=rp0,bus=pcie.0,addr=02.0,chassis=1",
]  # fmt: skip


@vm
def test_qemu_hot_plugs_the_export(one: Export) -> None:
    """device_add realizes vhost-user-blk-pci only after the vhost-user handshake with the
    daemon (features, the disk's config): success proves the export usable. No guest OS
    would ever complete an ACPI unplug, so QEMU quits first, then the daemon stops."""
    with StorageDaemon([one], binary=QSD) as daemon:
        qsd_pid = daemon.pid
        with Vm(VUB_VM, accel=Accel.TCG, qemu_binary=QEMU, name="vub") as machine:
            qemu_pid, qemu_dir = machine.pid, machine.workdir
            machine.execute("chardev-add", {"id": "vubc0", "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": str(one.socket)}}, "server": False}}})
            machine.execute("device_add", {"driver": "vhost-user-blk-pci", "id": "vub0",
                                           "chardev": "vubc0", "bus": "rp0", "addr": "00.0"})
            assert machine.qom_get("/machine/peripheral/vub0", "addr") == 0
            assert machine.qom_get("/machine/peripheral/vub0", "chardev") == "vubc0"
            assert machine.qom_get("/machine/peripheral/vub0", "parent_bus") == \
                "/machine/peripheral/rp0/rp0"
        assert qemu_pid is not None and process_gone(qemu_pid)
        assert qemu_dir is not None and not qemu_dir.exists()
        assert daemon.alive  # the front end leaving does not end the back end
    assert_nothing_left(daemon, qsd_pid, one.socket)


# -- pure ---------------------------------------------------------------------------------


def test_daemon_argv() -> None:
    exports = [Export("vub0", Path("/img/a.raw"), Path("/run/a.sock")),
               Export("vub1", Path("/img/b.raw"), Path("/run/b.sock"), writable=False)]
    assert daemon_argv("/usr/bin/qemu-storage-daemon", exports, Path("/w")) == [
        "/usr/bin/qemu-storage-daemon",
        "--blockdev", "driver=file,node-name=vub0-file,filename=/img/a.raw",
        "--blockdev", "driver=raw,node-name=vub0,file=vub0-file",
        "--export", "type=vhost-user-blk,id=vub0-export,node-name=vub0,addr.type=unix,"
                    "addr.path=/run/a.sock,writable=on",
        "--blockdev", "driver=file,node-name=vub1-file,filename=/img/b.raw,read-only=on",
        "--blockdev", "driver=raw,node-name=vub1,file=vub1-file,read-only=on",
        "--export", "type=vhost-user-blk,id=vub1-export,node-name=vub1,addr.type=unix,"
                    "addr.path=/run/b.sock,writable=off",
        "--chardev", "socket,id=qmp,path=/w/qmp.sock,server=on,wait=off",
        "--monitor", "chardev=qmp",
    ]  # fmt: skip


@pytest.mark.parametrize(("export", "workdir", "match"), [
    (Export("v", Path("/img/a,b.raw"), Path("/s")), "/w", "cannot take a ','"),
    (Export("v", Path("/i"), Path("/run/a,b.sock")), "/w", "cannot take a ','"),
    (Export("v", Path("/i"), Path("/s")), "/w,x", "cannot take a ','"),
    (Export("v", Path("rel.raw"), Path("/s")), "/w", "absolute"),
    (Export("v", Path("/i"), Path("/" + "s" * 107)), "/w", "longer than 107"),
    (Export("0v", Path("/i"), Path("/s")), "/w", "not a QEMU id"),
    (Export("v,x", Path("/i"), Path("/s")), "/w", "not a QEMU id"),
    (Export("v" * 27, Path("/i"), Path("/s")), "/w", "not a QEMU id"),
])  # fmt: skip
def test_daemon_argv_refuses(export: Export, workdir: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        daemon_argv("qsd", [export], Path(workdir))


def test_daemon_argv_refuses_duplicates_and_nothing() -> None:
    a = Export("v", Path("/a"), Path("/s"))
    with pytest.raises(ValueError, match="share a name"):
        daemon_argv("qsd", [a, Export("v", Path("/b"), Path("/t"))], Path("/w"))
    with pytest.raises(ValueError, match="share a socket"):
        daemon_argv("qsd", [a, Export("w", Path("/b"), Path("/s"))], Path("/w"))
    with pytest.raises(ValueError, match="at least one"):
        daemon_argv("qsd", [], Path("/w"))


def test_constructor_refuses_sandbox_and_bad_exports() -> None:
    with pytest.raises(ValueError, match="no -sandbox"):
        StorageDaemon([Export("v", Path("/a"), Path("/s"))], binary="qsd",
                      confinement=Confinement())
    with pytest.raises(ValueError, match="','"):
        StorageDaemon([Export("v", Path("/a,b"), Path("/s"))], binary="qsd")


def test_storage_daemon_binary(tmp_path: Path) -> None:
    qemu = tmp_path / "qemu-system-x86_64"
    assert storage_daemon_binary(str(qemu)) == DEFAULT_STORAGE_DAEMON
    beside = tmp_path / "qemu-storage-daemon"
    beside.write_text("#!/bin/sh\n")
    assert storage_daemon_binary(str(qemu)) == DEFAULT_STORAGE_DAEMON  # not executable
    beside.chmod(0o755)
    assert storage_daemon_binary(str(qemu)) == str(beside)
    assert storage_daemon_binary("qemu-system-x86_64") == DEFAULT_STORAGE_DAEMON  # no $PATH
