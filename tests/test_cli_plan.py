"""``podplug plan`` end to end: real files in, one-line errors with distinct exit codes out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podplug.cli import EXIT_REJECTED, main
from podplug.host.fakesysfs import demo_host, write_fake_sysfs
from tests.support import KATA_MAIN, REPO

DEMO = REPO / "podplug" / "demo"
NVIDIA = KATA_MAIN / "go" / "configuration-qemu-nvidia-gpu.toml"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return write_fake_sysfs(tmp_path / "sys", demo_host(str(tmp_path / "disk.img")))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_nvidia_config_gpu_group_and_block_volume_tree(
        capsys: pytest.CaptureFixture[str], host: Path) -> None:
    code, out, err = run(capsys, "plan", "--config", str(NVIDIA), "--spec",
                         str(DEMO / "spec.json"), "--sysfs", str(host))
    assert code == 0, err
    assert "vfio-0000-41-00-0 [vfio-pci] /dev/vfio/12 cold-vfio guest 04/00" in out
    assert "vfio-0000-41-00-1 [vfio-pci] /dev/vfio/12 cold-vfio guest 04/00.1" in out
    assert "blk0 [scsi-hd] /dev/xda hot-block" in out
    assert "0 rejected (of 3 requested)" in out


def test_plan_says_and_follows_the_hotplug_mode(capsys: pytest.CaptureFixture[str],
                                               host: Path) -> None:
    args = ("plan", "--config", str(DEMO / "configuration.toml"), "--spec",
            str(DEMO / "spec.json"), "--sysfs", str(host))
    code, acpi, _ = run(capsys, *args)
    assert code == 0 and "hotplug=acpi" in acpi.splitlines()[0]
    assert "blk0 [virtio-blk-pci] /dev/xda hot-block guest 02/01" in acpi  # a bridge slot
    code, native, _ = run(capsys, *args, "--hotplug", "native")
    assert code == 0 and "hotplug=native" in native.splitlines()[0]
    assert "[pci-bridge" not in native.split("blk0")[0].splitlines()[-1]
    assert "blk0 [virtio-blk-pci] /dev/xda hot-block guest 02/01" not in native
    code, out, _ = run(capsys, *args, "--hotplug", "native", "--format", "argv")
    assert "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off" in out


@pytest.mark.parametrize("fmt", ["tree", "json", "argv", "qmp", "dot"])
def test_every_format_renders(capsys: pytest.CaptureFixture[str], host: Path, fmt: str) -> None:
    code, out, _ = run(capsys, "plan", "--config", str(DEMO / "configuration.toml"), "--spec",
                       str(DEMO / "spec.json"), "--sysfs", str(host), "--format", fmt)
    assert code == 0
    assert ("blk0" if fmt == "qmp" else "rp0") in out
    if fmt in ("json", "qmp"):
        doc = json.loads(out)
        assert doc  # parses
    if fmt == "json":
        assert doc["counts"] == {"cold-vfio": 1, "hot-vfio": 0, "hot-block": 1, "node": 1,
                                 "rejected": 0}


def test_bad_config_one_line_exit_2(capsys: pytest.CaptureFixture[str], host: Path,
                                    tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[hypervisor.qemu]\ncold_plug_vfio = "root-port"\nhot_plug_vfio = "root-port"\n')
    code, out, err = run(capsys, "plan", "--config", str(cfg), "--spec",
                         str(DEMO / "spec.json"), "--sysfs", str(host))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and str(cfg) in err and "cold_plug_vfio" in err


def test_bad_spec_exit_2(capsys: pytest.CaptureFixture[str], host: Path, tmp_path: Path) -> None:
    spec = tmp_path / "config.json"
    spec.write_text('{"linux": {"devices": [{"path": "/dev/x", "type": "z"}]}}')
    code, _, err = run(capsys, "plan", "--config", str(NVIDIA), "--spec", str(spec),
                       "--sysfs", str(host))
    assert code == 2 and "linux.devices[0].type" in err and str(spec) in err


def test_bad_sysfs_exit_3(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "plan", "--config", str(NVIDIA), "--spec",
                       str(DEMO / "spec.json"), "--sysfs", str(tmp_path / "nothing"))
    assert code == 3 and "nothing" in err


def test_unsupported_machine_exit_4(capsys: pytest.CaptureFixture[str], host: Path,
                                   tmp_path: Path) -> None:
    se = tmp_path / "configuration-qemu-se.toml"  # as it would be rendered for s390x
    se.write_text('[hypervisor.qemu]\nmachine_type = "s390-ccw-virtio"\n'
                  'block_device_driver = "virtio-blk-ccw"\ncold_plug_vfio = "bridge-port"\n')
    code, _, err = run(capsys, "plan", "--config", str(se), "--spec", str(DEMO / "spec.json"),
                       "--sysfs", str(host))
    assert code == 4 and f"{se}: [hypervisor.qemu] machine_type = 's390-ccw-virtio'" in err
    assert "q35" in err and "virtio-blk-ccw" not in err  # the platform, not a key on the way


def test_rejected_device_is_loud_exit_8(capsys: pytest.CaptureFixture[str], host: Path) -> None:
    cfg = KATA_MAIN / "go" / "configuration-qemu.toml"  # no port for VFIO
    code, out, err = run(capsys, "plan", "--config", str(cfg), "--spec",
                         str(DEMO / "spec.json"), "--sysfs", str(host))
    assert code == EXIT_REJECTED
    assert "rejected /dev/vfio/12" in err and "cold_plug_vfio" in err
    assert "1 rejected" in out


def test_cdi_annotation_adds_the_gpu(capsys: pytest.CaptureFixture[str], host: Path,
                                     tmp_path: Path) -> None:
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "nvidia.yaml").write_text(
        'cdiVersion: "0.6.0"\nkind: nvidia.com/pgpu\ndevices:\n- name: "0"\n'
        "  containerEdits:\n    deviceNodes:\n    - path: /dev/vfio/12\n      type: c\n"
        "      major: 236\n      minor: 12\n")
    (cdi / "broken.yaml").write_text('cdiVersion: "0.6.0"\nkind: other.com/gpu\ndevices:\n'
                                     '- name: x\n  containerEdits: {}\n')
    spec = tmp_path / "config.json"
    spec.write_text(json.dumps({"annotations": {"cdi.k8s.io/vfio12": "nvidia.com/pgpu=0"},
                                "linux": {"devices": []}}))
    code, out, err = run(capsys, "plan", "--config", str(NVIDIA), "--spec", str(spec),
                         "--sysfs", str(host), "--cdi-dir", str(cdi), "--format", "json")
    assert code == 0, err
    # a broken spec file is skipped as the reference skips it, and said so
    assert f"podplug: warning: CDI spec {cdi / 'broken.yaml'} skipped" in err
    assert "empty edits" in err
    doc = json.loads(out)
    assert doc["devices"][0]["source"] == "nvidia.com/pgpu=0"
    assert doc["devices"][0]["bucket"] == "cold-vfio"


def test_spare_window_is_configurable(capsys: pytest.CaptureFixture[str], host: Path,
                                      tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[hypervisor.qemu]\nmachine_type = "q35"\nhot_plug_vfio = "root-port"\n'
                   'pcie_root_port = 2\n[runtime]\nvfio_mode = "vfio"\n')
    args = ("plan", "--config", str(cfg), "--spec", str(DEMO / "spec.json"), "--sysfs", str(host))
    code, out, _ = run(capsys, *args)
    assert code == 0 and "rp1 [root port, spare] window: mem 33M pref64 129G" in out
    code, out, _ = run(capsys, *args, "--spare-window", "mem=64M,pref64=512G")
    assert code == 0 and "rp1 [root port, spare] window: mem 64M pref64 512G" in out
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--spare-window", "mem=lots"])
    assert exit_.value.code == 2
    assert "not a size (like 8M, 16G): 'lots'" in capsys.readouterr().err
