"""QEMU confined, seen from outside while ``podplug run`` runs it (issue 10): the seccomp
sandbox on, the unprivileged user (``nobody`` when podplug is root), its files handed over
open, its runtime directory and sockets its own alone.

Real QEMU under TCG; the VFIO functions are EMULATED stand-ins (no host IOMMU here)."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from podplug.host.fakesysfs import demo_host, write_fake_sysfs
from podplug.inputs.load import load_inputs
from podplug.run.session import RunOptions, run
from podplug.vm.process import Accel
from tests.support import QEMU, REPO, live_qemu

pytestmark = pytest.mark.vm

CONFIG = (f'[hypervisor.qemu]\npath = "{QEMU}"\nmachine_type = "q35"\n'
          'cold_plug_vfio = "root-port"\n'
          'pcie_root_port = 1\ndefault_bridges = 1\n[runtime]\nvfio_mode = "vfio"\n')


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _snapshot(pid: int) -> dict[str, object]:
    """What the running QEMU is: its identity, its filter, its files and their modes."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    qmp = next(a.decode() for a in argv if a.startswith(b"unix:"))
    workdir = Path(qmp.removeprefix("unix:").split(",")[0]).parent
    agent_sock = next(a.decode().split("path=")[1].split(",")[0] for a in argv
                      if b"id=agentch" in a)
    open_files = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            open_files.add(os.readlink(fd))
        except OSError:
            continue
    modes = {name: os.stat(path) for name, path in (
        ("workdir", workdir), ("qmp.sock", workdir / "qmp.sock"),
        ("serial.log", workdir / "serial.log"), ("agent.sock", Path(agent_sock)),
        ("run dir", Path(agent_sock).parent))}
    return {"status": _status(pid), "argv": [a.decode() for a in argv], "modes": modes,
            "open": open_files}


def test_qemu_runs_sandboxed_unprivileged_with_only_its_files(tmp_path: Path) -> None:
    disk = tmp_path / "xda.img"
    disk.write_bytes(os.urandom(1 << 20) + b"\0" * (31 << 20))
    os.chmod(disk, 0o600)  # only root may open it by name
    os.chmod(tmp_path, 0o700)
    (tmp_path / "configuration.toml").write_text(CONFIG)
    sysfs = write_fake_sysfs(tmp_path / "sys", demo_host(str(disk)))
    inputs = load_inputs(tmp_path / "configuration.toml", REPO / "podplug/demo/spec.json",
                         cdi_dirs=(), sysfs_root=sysfs)
    seen: list[dict[str, object]] = []

    def progress(line: str) -> None:
        if "guest agent ready" in line or line.endswith("device(s): 2 QMP steps"):
            (pid,) = live_qemu(os.getpid())
            seen.append(_snapshot(pid))

    report = run(inputs, RunOptions(accel=Accel.TCG, progress=progress))
    assert report.all_usable, [(r.path, r.error) for r in report.rows if not r.usable]
    assert live_qemu(os.getpid()) == set()
    assert len(seen) == 2
    root = os.geteuid() == 0
    expected_uid = pwd.getpwnam("nobody").pw_uid if root else os.geteuid()
    for snap in seen:
        status = snap["status"]
        assert isinstance(status, dict)
        assert status["Seccomp"] == "2"  # a filter: QEMU's -sandbox
        assert status["NoNewPrivs"] == "1"
        assert status["Uid"].split() == [str(expected_uid)] * 4
        if root:
            assert status["Groups"] == ""  # no supplementary group (TCG: not even kvm)
        argv = snap["argv"]
        assert isinstance(argv, list)
        sandbox = argv[argv.index("-sandbox") + 1]
        assert sandbox == "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        assert argv[argv.index("-kernel") + 1].startswith("/proc/self/fd/")
        assert argv[argv.index("-initrd") + 1].startswith("/proc/self/fd/")
        assert not any(str(disk) in a for a in argv)
        modes = snap["modes"]
        assert isinstance(modes, dict)
        for name, st in modes.items():
            assert st.st_uid == expected_uid, name
            assert stat.S_IMODE(st.st_mode) & 0o077 == 0, (name, oct(st.st_mode))
        assert stat.S_IMODE(modes["workdir"].st_mode) == 0o700
        assert stat.S_IMODE(modes["serial.log"].st_mode) == 0o600
    # before the hot-plug batch the volume is already QEMU's, as an fd set, not by name
    opened = seen[0]["open"]
    assert isinstance(opened, set) and str(disk) in opened
    notes = " ".join(report.notes)
    assert ("QEMU runs as nobody" if root else "QEMU runs as podplug's own user") in notes
