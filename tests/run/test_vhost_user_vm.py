"""vhost-user-blk for real (issue 14): the seed's configuration with Kata's vhost-user store
enabled, a spec with the seed's GPU group, two raw block volumes and a vhost-user-blk
node (major 241) that Kata's store resolves. ``podplug run`` serves the vhost-user volume
with a real ``qemu-storage-daemon`` (nothing listens at the store's socket: the run names
that stand-in), hot-plugs it as ``vhost-user-blk-pci`` and proves all of them in the guest
through their agent entries, data included; afterwards no daemon, no QEMU and no file of
the run is left, and the store is as it was. The GPU is an EMULATED stand-in (no host
IOMMU here). Needs root, for the store's device node (``mknod``); CI runs as root."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest

from podplug.errors import StorageDaemonError
from podplug.host.fakesysfs import FakeBlock, FakeHost, gpu_functions, write_fake_sysfs
from podplug.inputs.load import load_inputs
from podplug.plan.plan import plan
from podplug.plan.sequence import StepKind, hot_devices, plug_steps
from podplug.run import session
from podplug.run.report import RunReport
from podplug.run.session import RunOptions, run
from podplug.run.volumes import VolumePolicy
from podplug.vm.process import Accel
from podplug.vm.storage_daemon import Export, StorageDaemon, storage_daemon_binary
from tests.support import (
    QEMU,
    REPO,
    live_processes,
    live_qemu,
    podplug_temp_entries,
    run_cli_until,
)

pytestmark = pytest.mark.vm

SEED_CONFIG = REPO / "podplug" / "demo" / "configuration.toml"
SEED_SPEC = REPO / "podplug" / "demo" / "spec.json"
DAEMON = "qemu-storage-d"  # qemu-storage-daemon's comm (15 characters)


def _inputs(tmp: Path, driver: str, aio: str) -> tuple[Path, Path, Path, Path]:
    """The seed's configuration (its block driver and aio changed as asked), the vhost-user
    store enabled at ``tmp/store``; the seed's spec plus /dev/xdb and /dev/vub0."""
    store = tmp / "store"
    (store / "block" / "devices").mkdir(parents=True)
    (store / "block" / "sockets").mkdir()
    os.mknod(store / "block" / "devices" / "vub0", 0o600 | stat.S_IFBLK, os.makedev(241, 0))
    text = SEED_CONFIG.read_text().replace('block_device_driver = "virtio-blk"',
                                           f'block_device_driver = "{driver}"')
    cache = "block_device_cache_set = true\nblock_device_cache_direct = true\n" \
        if aio == "native" else ""
    text = text.replace("[runtime]", f'enable_vhost_user_store = true\nvhost_user_store_path = '
                        f'"{store}"\nblock_device_aio = "{aio}"\n{cache}\n[runtime]')
    config = tmp / "configuration.toml"
    config.write_text(text)
    spec = json.loads(SEED_SPEC.read_text())
    spec["linux"]["devices"] += [
        {"path": "/dev/xdb", "type": "b", "major": 7, "minor": 1, "fileMode": 432},
        {"path": "/dev/vub0", "type": "b", "major": 241, "minor": 0, "fileMode": 432}]
    spec_path = tmp / "config.json"
    spec_path.write_text(json.dumps(spec))
    disks = []
    for name in ("xda", "xdb"):
        disk = tmp / f"{name}.img"
        disk.write_bytes(os.urandom(1 << 20) + bytes(30 << 20) + os.urandom(1 << 20))
        disks.append(disk)
    host = FakeHost(functions=gpu_functions("0000:41:00", group=12),
                    blocks=tuple(FakeBlock(7, n, f"loop{n}", str(d))
                                 for n, d in enumerate(disks)))
    return config, spec_path, write_fake_sysfs(tmp / "sys", host), store


def _run(tmp: Path, driver: str, aio: str = "io_uring") -> tuple[RunReport, list[str], Path]:
    config, spec, sysfs, store = _inputs(tmp, driver, aio)
    inputs = load_inputs(config, spec, cdi_dirs=(), sysfs_root=sysfs)
    said: list[str] = []
    scratch = frozenset(str(tmp / f"{n}.img") for n in ("xda", "xdb"))
    report = run(inputs, RunOptions(accel=Accel.TCG, qemu=QEMU, progress=said.append,
                                    volumes=VolumePolicy(scratch=scratch)))
    return report, said, store


@pytest.mark.skipif(os.geteuid() != 0, reason="the store's device node needs mknod (root)")
@pytest.mark.parametrize("driver", ["virtio-blk", "virtio-scsi"])
def test_raw_volumes_and_a_vhost_user_blk_volume_all_proven(tmp_path: Path,
                                                             driver: str) -> None:
    before_qemu, before_daemons = live_qemu(), live_processes(DAEMON)
    before_tmp = podplug_temp_entries()
    report, said, store = _run(tmp_path, driver)
    rows = {r.path: r for r in report.rows}
    assert report.all_usable, [(r.path, r.error) for r in report.rows if not r.usable]
    assert set(rows) == {"/dev/vfio/vfio", "/dev/vfio/12", "/dev/xda", "/dev/xdb", "/dev/vub0"}
    vub = rows["/dev/vub0"]
    assert vub.entry is not None and vub.entry["type"] == "blk" and vub.entry["vm_path"] == ""
    assert vub.entry["id"] == vub.planned_path  # the PCI path, as Kata sends it
    assert vub.qemu.startswith("vublk0@")
    assert "read+write ok" in vub.check and "round trip ok" in vub.check
    assert "= host's" in vub.check  # the scratch image's random first/last 4 KiB came back
    expected_xd = "scsi" if driver == "virtio-scsi" else "blk"
    assert rows["/dev/xda"].entry is not None and rows["/dev/xda"].entry["type"] == expected_xd
    assert any("VHOST-USER BACKEND STAND-IN" in line for line in said)
    # nothing left: no daemon, no QEMU, no temporary file; the store untouched
    assert live_processes(DAEMON) <= before_daemons
    assert live_qemu() <= before_qemu
    assert podplug_temp_entries() <= before_tmp
    assert sorted(p.name for p in (store / "block" / "sockets").iterdir()) == []
    assert sorted(p.name for p in (store / "block" / "devices").iterdir()) == ["vub0"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the store's device node needs mknod (root)")
@pytest.mark.parametrize("aio", ["io_uring", "native", "threads"])
def test_each_aio_mode_reaches_qemu_and_the_volumes_work(tmp_path: Path, aio: str) -> None:
    """The blockdev-add the run sends carries the configured aio (``native`` with the
    cache.direct it needs), QEMU takes it (a refused one fails the run), and the volumes
    pass every proof under it."""
    (tmp_path / "plan").mkdir()
    config, spec, sysfs, _ = _inputs(tmp_path / "plan", "virtio-blk", aio)
    inputs = load_inputs(config, spec, cdi_dirs=(), sysfs_root=sysfs)
    planned = plan(inputs.config, inputs.request, inputs.inventory)
    adds = [s.arguments for s in plug_steps(hot_devices(planned))
            if s.kind is StepKind.BLOCKDEV_ADD]
    assert [a["file"]["aio"] for a in adds] == [aio, aio]  # type: ignore[index]
    if aio == "native":  # the configuration sets cache.direct (Go: on the raw node)
        assert all(a["cache"] == {"direct": True, "no-flush": False} for a in adds)
    else:
        assert all("cache" not in a for a in adds)
    report, said, _ = _run(tmp_path, "virtio-blk", aio)
    assert report.all_usable, [(r.path, r.error) for r in report.rows if not r.usable]
    assert not [line for line in said if "planned with aio=threads" in line]


@pytest.mark.skipif(os.geteuid() != 0, reason="the store's device node needs mknod (root)")
def test_a_back_end_already_listening_is_used_and_proven_read_only(tmp_path: Path) -> None:
    """A back end not podplug's (here a qemu-storage-daemon the test starts at the store's
    socket, as SPDK would listen there): QEMU connects to it, nothing is served by podplug,
    the proof reads the disk and compares nothing, and the back end is left running."""
    config, spec, sysfs, store = _inputs(tmp_path, "virtio-blk", "io_uring")
    image = tmp_path / "spdk.img"
    image.write_bytes(os.urandom(4096) + bytes((16 << 20) - 8192) + os.urandom(4096))
    sock = store / "block" / "sockets" / "vub0"
    with StorageDaemon([Export("theirs", image, sock)],
                       binary=storage_daemon_binary(QEMU)) as theirs:
        inputs = load_inputs(config, spec, cdi_dirs=(), sysfs_root=sysfs)
        said: list[str] = []
        report = run(inputs, RunOptions(accel=Accel.TCG, qemu=QEMU, progress=said.append))
        assert theirs.alive  # podplug stops only what it started
    rows = {r.path: r for r in report.rows}
    assert report.all_usable, [(r.path, r.error) for r in report.rows if not r.usable]
    assert "not compared" in rows["/dev/vub0"].check
    assert "read+write" not in rows["/dev/vub0"].check
    assert not any("STAND-IN: /dev/vub0" in line for line in said)
    assert any("is not podplug's" in line for line in said)


@pytest.mark.skipif(os.geteuid() != 0, reason="the store's device node needs mknod (root)")
@pytest.mark.parametrize("marker", ["hot-plugging", "OK   /dev/vub0"])
def test_sigterm_mid_run_stops_the_daemon_too(tmp_path: Path, marker: str) -> None:
    before = (live_qemu(), live_processes(DAEMON), podplug_temp_entries())
    config, spec, sysfs, store = _inputs(tmp_path, "virtio-blk", "io_uring")
    proc, seen = run_cli_until(marker, "--config", str(config), "--spec", str(spec),
                               "--sysfs", str(sysfs), "--cdi-dir", str(sysfs))
    assert any(marker in line for line in seen), "".join(seen)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, "".join(seen) + out
    assert live_qemu() <= before[0]
    assert live_processes(DAEMON) <= before[1]
    assert podplug_temp_entries() <= before[2]
    assert list((store / "block" / "sockets").iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the store's device node needs mknod (root)")
def test_a_daemon_that_will_not_start_fails_the_run_cleanly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = (live_qemu(), live_processes(DAEMON), podplug_temp_entries())
    monkeypatch.setattr(session, "storage_daemon_binary", lambda _: "/bin/false")
    config, spec, sysfs, _ = _inputs(tmp_path, "virtio-blk", "io_uring")
    inputs = load_inputs(config, spec, cdi_dirs=(), sysfs_root=sysfs)
    with pytest.raises(StorageDaemonError) as caught:
        run(inputs, RunOptions(accel=Accel.TCG, qemu=QEMU))
    assert "vublk0" in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 6
    assert live_qemu() <= before[0]  # QEMU was never started: the back end comes first
    assert live_processes(DAEMON) <= before[1]
    assert podplug_temp_entries() <= before[2]
