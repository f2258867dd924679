"""Every hostile input named in issue 10, through the CLI as an operator would run it: a
one-line podplug error, its exit code, within a second (each run is timed in a thread
so a hang fails the test instead of stalling the suite), and nothing read or followed that
should not be."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from podplug.cli import main
from podplug.host.fakesysfs import demo_host, write_fake_sysfs
from tests.support import REPO

DEMO = REPO / "podplug" / "demo"
CONFIG = DEMO / "configuration.toml"
SPEC = DEMO / "spec.json"
BOUND_S = 5.0  # generous on a shared machine; a hang is what this catches


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """main() with a watchdog: fails the test if the run does not return in time."""
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(code=main(list(args))),
                              daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), f"podplug {' '.join(args)} did not return in {BOUND_S} s"
    err = capsys.readouterr().err
    assert time.monotonic() - started < BOUND_S
    return result["code"], err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("podplug: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return write_fake_sysfs(tmp_path / "sys", demo_host(str(tmp_path / "disk.img")))


def _plan(capsys: pytest.CaptureFixture[str], host: Path, config: Path = CONFIG,
          spec: Path = SPEC, *more: str) -> tuple[int, str]:
    return _run(capsys, "plan", "--config", str(config), "--spec", str(spec), "--sysfs",
                str(host), *more)


# ------------------------------------------------------------------ input files


@pytest.mark.parametrize("make", [
    lambda p: os.mkfifo(p),
    lambda p: p.symlink_to("/dev/zero"),
    lambda p: p.mkdir(),
], ids=["fifo", "dev-zero", "directory"])
def test_an_input_that_is_not_a_regular_file_is_refused_unread(
        capsys: pytest.CaptureFixture[str], host: Path, tmp_path: Path,
        make: Callable[[Path], None]) -> None:
    config = tmp_path / "configuration.toml"
    make(config)
    code, err = _plan(capsys, host, config)
    assert code == 2 and "not a regular file" in _one_error_line(err)


def test_invalid_utf8_toml(capsys: pytest.CaptureFixture[str], host: Path,
                           tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_bytes(b'[hypervisor.qemu]\nmachine_type = "q\xff35"\n')
    code, err = _plan(capsys, host, config)
    assert code == 2 and "not UTF-8" in _one_error_line(err)


@pytest.mark.parametrize("text", [
    "[hypervisor.qemu]\npcie_root_port = " + "9" * 5000 + "\n",
    "[hypervisor.qemu]\nx = " + "[" * 50000 + "]" * 50000 + "\n",
    "[hypervisor.qemu]\nx = " + "{a=" * 20000 + "1" + "}" * 20000 + "\n",
], ids=["5000-digits", "deep-arrays", "deep-tables"])
def test_hostile_toml(capsys: pytest.CaptureFixture[str], host: Path, tmp_path: Path,
                      text: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    code, err = _plan(capsys, host, config)
    line = _one_error_line(err)
    assert code == 2 and len(line) < 600


def test_bad_regex_in_enable_annotations(capsys: pytest.CaptureFixture[str], host: Path,
                                         tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[hypervisor.qemu]\nenable_annotations = ["hot_plug_(vfio"]\n')
    spec = tmp_path / "config.json"
    spec.write_text(json.dumps({"annotations": {
        "io.katacontainers.config.hypervisor.hot_plug_vfio": "root-port"}}))
    code, err = _plan(capsys, host, config, spec)
    line = _one_error_line(err)
    assert code == 2 and "enable_annotations" in line and "not a regular expression" in line


def test_deep_json_spec(capsys: pytest.CaptureFixture[str], host: Path, tmp_path: Path) -> None:
    spec = tmp_path / "config.json"
    spec.write_text('{"annotations": ' + "[" * 100000 + "]" * 100000 + "}")
    code, err = _plan(capsys, host, CONFIG, spec)
    assert code == 2 and "config.json" in _one_error_line(err)


# ------------------------------------------------------------------ paths and numbers


def _spec_with(tmp_path: Path, *devices: dict[str, object], **annotations: str) -> Path:
    spec = tmp_path / "config.json"
    spec.write_text(json.dumps({"annotations": annotations,
                                "linux": {"devices": list(devices)}}))
    return spec


@pytest.mark.parametrize("path", ["/dev/vfio/../12", "/dev/vfio/x/../../../tmp/12",
                                  "/dev//vfio/12", "dev/vfio/12", "/dev/xda\nERROR forged"])
def test_paths_not_in_canonical_form(capsys: pytest.CaptureFixture[str], host: Path,
                                     tmp_path: Path, path: str) -> None:
    spec = _spec_with(tmp_path, {"path": path, "type": "c", "major": 236, "minor": 12})
    code, err = _plan(capsys, host, CONFIG, spec)
    line = _one_error_line(err)
    assert code == 2 and "linux.devices[0].path" in line
    assert "\nERROR" not in err


@pytest.mark.parametrize("name", ["²", "١٢", "1_2", "12a"])
def test_vfio_nodes_with_other_digits_are_no_group(capsys: pytest.CaptureFixture[str],
                                                   host: Path, tmp_path: Path,
                                                   name: str) -> None:
    spec = _spec_with(tmp_path, {"path": f"/dev/vfio/{name}", "type": "c", "major": 236,
                                 "minor": 12})
    code, err = _plan(capsys, host, CONFIG, spec)
    assert code == 8 and "neither /dev/vfio/<group> nor" in err  # rejected, with the reason
    assert "cold-vfio" not in err


def test_a_cdi_host_path_elsewhere_is_no_group(capsys: pytest.CaptureFixture[str], host: Path,
                                               tmp_path: Path) -> None:
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "x.yaml").write_text('cdiVersion: "0.5.0"\nkind: evil.com/gpu\ndevices:\n'
                                '- name: "0"\n  containerEdits:\n    deviceNodes:\n'
                                "    - {path: /dev/vfio/12, hostPath: /etc/12, type: c, "
                                "major: 236, minor: 12}\n")
    spec = _spec_with(tmp_path, **{"cdi.k8s.io/x": "evil.com/gpu=0"})
    code, err = _plan(capsys, host, CONFIG, spec, "--cdi-dir", str(cdi))
    assert code == 8 and "/etc/12 is neither /dev/vfio/<group>" in err


@pytest.mark.parametrize("count", ["١٦", "1_6", " 4", "+4", "0x4"])
def test_annotation_counts_are_ascii_decimal(capsys: pytest.CaptureFixture[str], host: Path,
                                             tmp_path: Path, count: str) -> None:
    spec = _spec_with(tmp_path, **{"io.katacontainers.config.hypervisor.pcie_root_port": count})
    code, err = _plan(capsys, host, CONFIG, spec)
    line = _one_error_line(err)
    assert code == 2 and "pcie_root_port" in line and "ASCII digits" in line


@pytest.mark.parametrize("version", ["\u0663.\u0661\u0666.\u0660", "3.16.0\n", "3_16.0"])
def test_kata_version_is_ascii(capsys: pytest.CaptureFixture[str], host: Path,
                               version: str) -> None:
    code = main(["doctor", "--config", str(CONFIG), "--kata-version", version,
                 "--sysfs", str(host)])
    err = capsys.readouterr().err
    assert code == 2 and "--kata-version" in err and "\n" not in err.strip()


def test_the_same_container_path_twice(capsys: pytest.CaptureFixture[str], host: Path,
                                       tmp_path: Path) -> None:
    spec = _spec_with(tmp_path, {"path": "/dev/xda", "type": "b", "major": 7, "minor": 0},
                      {"path": "/dev/xda", "type": "b", "major": 7, "minor": 1})
    code, err = _plan(capsys, host, CONFIG, spec)
    line = _one_error_line(err)
    assert code == 2 and "/dev/xda is also linux.devices[0]" in line


# ------------------------------------------------------------------ sysfs


def test_a_leaf_link_out_of_sysfs_is_refused_without_its_content(
        capsys: pytest.CaptureFixture[str], host: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET-CONTENT " * 50)
    vendor = next(host.glob("devices/*/*/vendor"))
    vendor.unlink()
    vendor.symlink_to(secret)
    code, err = _plan(capsys, host)
    line = _one_error_line(err)
    assert code == 3 and "leaves the root" in line and "TOP-SECRET" not in err


def test_a_directory_link_in_the_middle_is_refused(capsys: pytest.CaptureFixture[str],
                                                   host: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    devices = host / "bus" / "pci" / "devices"
    bdf = sorted(devices.iterdir())[0].name
    (devices / bdf).unlink()
    (devices / bdf).symlink_to("../../../../outside")  # relative, but above the root
    code, err = _plan(capsys, host)
    assert code == 3 and "above the root" in _one_error_line(err)


@pytest.mark.parametrize("make", [lambda p: os.mkfifo(p), lambda p: p.symlink_to("/dev/zero"),
                                  lambda p: p.write_text("0x" + "f" * 200000)],
                         ids=["fifo", "dev-zero", "huge"])
def test_a_sysfs_attribute_that_is_not_one(capsys: pytest.CaptureFixture[str], host: Path,
                                           make: Callable[[Path], None]) -> None:
    vendor = next(host.glob("devices/*/*/vendor"))
    vendor.unlink()
    make(vendor)
    code, err = _plan(capsys, host)
    assert code == 3 and "vendor" in _one_error_line(err)


# ------------------------------------------------------------------ found by podplug.fuzz


@pytest.mark.parametrize(("text", "said"), [
    ("[" * 5000, "nested deeper than 64 levels"),  # fuzz seed 1 case 10319: 1.4 s before
    ('cdiVersion: "0.3.0"\nkind: example.com/bad\ndevices:\n  - ' + "[" * 3000,
     "nested deeper than 64 levels"),  # case 70723
    ("cdiVersion: 0.3.0\nkind: example.com/gpu\nn: " + "9" * 5001 + "\n",
     "a value podplug cannot read"),  # case 51318: a ValueError escaped from PyYAML
], ids=["deep-flow", "deep-flow-in-devices", "5001-digit-int"])
def test_hostile_cdi_yaml_is_skipped_with_one_line(capsys: pytest.CaptureFixture[str],
                                                   host: Path, tmp_path: Path, text: str,
                                                   said: str) -> None:
    """A broken CDI spec file is skipped as the reference skips it; the device it would
    have given is then unresolvable, in one line that names the file and why."""
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "hostile.yaml").write_text(text)
    spec = _spec_with(tmp_path, **{"cdi.k8s.io/x": "example.com/gpu=0"})
    started = time.monotonic()
    code, err = _plan(capsys, host, CONFIG, spec, "--cdi-dir", str(cdi))
    assert time.monotonic() - started < 1.0
    line = _one_error_line(err)
    assert code == 2 and "example.com/gpu=0: unresolvable CDI device" in line
    assert "hostile.yaml: $: invalid YAML" in line and said in line
