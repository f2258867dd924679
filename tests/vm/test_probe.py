"""The QEMU binary podplug runs: where it comes from, what it can do (probed over QMP from the
real binary, never inferred from a version), and plans refused for what it lacks."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from podplug.errors import ConfigError, QemuLacksFeature
from podplug.model.qemu import QemuCapabilities, QemuFeature
from podplug.plan.needs import qemu_needs
from podplug.plan.plan import plan
from podplug.plan.standin import stand_ins
from podplug.vm.probe import KATA_DEFAULT_QEMU, probe_qemu, require, resolve_qemu
from podplug.vm.process import SANDBOX
from tests.support import QEMU as TEST_QEMU
from tests.support import block, config, inventory, iommufd_dev, request, vfio_group

QEMU = Path(TEST_QEMU)  # the binary the real-VM tests run
SECTION = "hypervisor.qemu"


def test_the_binary_comes_from_the_configuration_or_qemu_flag(tmp_path: Path) -> None:
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert resolve_qemu(str(fake), None, SECTION) == fake
    assert resolve_qemu("/nonexistent/qemu", str(fake), SECTION) == fake  # --qemu wins
    assert resolve_qemu("", None, SECTION) == Path(KATA_DEFAULT_QEMU)  # never $PATH


@pytest.mark.parametrize(("make", "problem"), [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "not a regular file"),
    (lambda p: p.write_text("x"), "not executable"),
])
def test_a_bad_binary_is_one_line_naming_the_key(tmp_path: Path, make, problem: str) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "qemu-system-x86_64"
    make(target)
    with pytest.raises(ConfigError) as err:
        resolve_qemu(str(target), None, SECTION)
    assert str(err.value).startswith(f"{SECTION}.path = '{target}': {problem}")
    assert "pass --qemu" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^--qemu"):
        resolve_qemu("", str(target), SECTION)
    with pytest.raises(ConfigError, match="absolute"):
        resolve_qemu("qemu-system-x86_64", None, SECTION)


def _object_types() -> str:
    return subprocess.run([str(QEMU), "-object", "help"], capture_output=True, text=True,
                          timeout=30, check=True).stdout


def _device_help(device: str) -> str:
    return subprocess.run([str(QEMU), "-device", f"{device},help"], capture_output=True,
                          text=True, timeout=30, check=True).stdout


@pytest.mark.vm
def test_probe_agrees_with_the_binarys_own_help(tmp_path: Path) -> None:
    """QMP's answers, checked against a second way of asking the same binary."""
    caps = probe_qemu(QEMU, tmp_path)
    version = subprocess.run([str(QEMU), "--version"], capture_output=True, text=True,
                             check=True).stdout
    assert f"version {'.'.join(map(str, caps.version))}" in version
    assert (QemuFeature.IOMMUFD_OBJECT in caps.features) == \
        ("iommufd" in _object_types().split())
    assert (QemuFeature.VFIO_IOMMUFD in caps.features) == \
        ("iommufd=" in _device_help("vfio-pci"))
    assert (QemuFeature.PREF64_RESERVE in caps.features) == \
        ("pref64-reserve=" in _device_help("pcie-root-port"))
    assert (QemuFeature.NVME_PMR in caps.features) == ("pmrdev=" in _device_help("nvme"))
    # a QEMU without seccomp has no -sandbox option ("invalid option"); -version exits
    # after the options before it are parsed
    sandbox = subprocess.run([str(QEMU), *SANDBOX, "-version"], capture_output=True,
                             timeout=30)
    assert (QemuFeature.SANDBOX in caps.features) == (sandbox.returncode == 0)


@pytest.mark.vm
def test_probe_is_cached_per_binary(tmp_path: Path) -> None:
    caps = probe_qemu(QEMU, tmp_path)
    (entry,) = (tmp_path / "qemu").glob("*.json")
    doc = json.loads(entry.read_text())
    doc["package"] = "from the cache"
    entry.write_text(json.dumps(doc))
    assert probe_qemu(QEMU, tmp_path) == replace(caps, package="from the cache")
    entry.write_text("{not json")  # a damaged entry is probed again
    assert probe_qemu(QEMU, tmp_path) == caps


def _iommufd_plan():  # type: ignore[no-untyped-def]
    return plan(config("guest-kernel", cold="root-port"), request(iommufd_dev(0), block(0)),
                inventory(0, iommufd=1))


def test_an_iommufd_plan_needs_iommufd_unless_stand_ins_run_it() -> None:
    p = _iommufd_plan()
    assert {QemuFeature.IOMMUFD_OBJECT, QemuFeature.VFIO_IOMMUFD} <= qemu_needs(p)
    emulated = qemu_needs(p, device=stand_ins(inventory(0, iommufd=1).functions))
    assert QemuFeature.IOMMUFD_OBJECT not in emulated
    host = inventory(1, 2)
    hot = plan(config("vfio", hot="switch-port"), request(vfio_group(12)), host)
    assert {QemuFeature.NVME_PMR, QemuFeature.MEMORY_NORESERVE} <= qemu_needs(hot)  # keeper
    root = plan(config("vfio", hot="root-port"), request(vfio_group(12)), host)
    assert QemuFeature.PREF64_RESERVE in qemu_needs(root)
    assert QemuFeature.NVME_PMR in qemu_needs(root, device=stand_ins(host.functions))


def test_refusal_names_the_feature_the_binary_and_its_version() -> None:
    qemu72 = QemuCapabilities("/usr/bin/qemu-system-x86_64", (7, 2, 22), "Debian 1:7.2",
                              frozenset({QemuFeature.PREF64_RESERVE, QemuFeature.MEM_RESERVE}))
    with pytest.raises(QemuLacksFeature) as err:
        require(qemu72, qemu_needs(_iommufd_plan()))
    assert str(err.value).startswith(
        "/usr/bin/qemu-system-x86_64 (QEMU 7.2.22 (Debian 1:7.2)) has no -object iommufd, "
        "vfio-pci,iommufd=, which the plan needs")
    assert err.value.exit_code == 4


@pytest.mark.vm
def test_this_machines_qemu_runs_an_iommufd_plan_only_if_it_has_iommufd(tmp_path: Path) -> None:
    caps = probe_qemu(QEMU, tmp_path)
    needs = qemu_needs(_iommufd_plan())
    if QemuFeature.IOMMUFD_OBJECT in caps.features:  # QEMU 9.0+ (Debian 13)
        require(caps, needs)
    else:  # QEMU 7.2 (Debian 12)
        with pytest.raises(QemuLacksFeature, match=r"\(QEMU \d+\.\d+\.\d+"):
            require(caps, needs)
