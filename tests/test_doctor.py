"""``podplug doctor``: the seed's configuration flagged for Kata 3.16, passed for 3.17, and
host problems named with their fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from podplug.cli import EXIT_DOCTOR_ERROR, EXIT_DOCTOR_WARNING, main
from podplug.doctor import Finding, Severity, diagnose, worst
from podplug.host.fakesysfs import FakeFunction, FakeHost, demo_host, write_fake_sysfs
from podplug.host.sysfs import scan_host
from podplug.matrix.kata_models import KataEra
from podplug.model.qemu import QemuCapabilities
from tests.support import (
    QEMU,
    REPO,
    block,
    config,
    inventory,
    request,
    vfio_control,
    vfio_group,
    vhost_user,
    with_store,
)

DEMO = REPO / "podplug" / "demo"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return write_fake_sysfs(tmp_path / "sys", demo_host(str(tmp_path / "disk.img")))


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["doctor", "--config", str(DEMO / "configuration.toml"), *args])
    return code, capsys.readouterr().out


def test_seed_flagged_for_3_16_with_the_fix(capsys: pytest.CaptureFixture[str],
                                            host: Path) -> None:
    code, out = doctor(capsys, "--spec", str(DEMO / "spec.json"), "--kata-version", "3.16.0",
                       "--sysfs", str(host))
    assert code == EXIT_DOCTOR_ERROR
    assert "Kata 3.16.0 drops /dev/xda" in out
    assert "upgrade Kata to 3.17.0 or later (PR #11289)" in out
    assert 'hot_plug_vfio = "root-port" and cold_plug_vfio = "no-port"' in out


def test_seed_passes_for_3_17(capsys: pytest.CaptureFixture[str], host: Path) -> None:
    code, out = doctor(capsys, "--spec", str(DEMO / "spec.json"), "--kata-version", "3.17.0",
                       "--sysfs", str(host))
    assert code == 0, out
    assert "keeps all 3 devices" in out and "worst finding OK" in out


def test_config_only_warns_for_the_risky_release(capsys: pytest.CaptureFixture[str],
                                                 host: Path) -> None:
    code, out = doctor(capsys, "--kata-version", "3.15.1", "--sysfs", str(host))
    assert code == EXIT_DOCTOR_WARNING and "#11288" in out


def test_invalid_config_is_an_error_finding(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path, host: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text('[hypervisor.qemu]\ncold_plug_vfio = "root"\n')
    code = main(["doctor", "--config", str(bad), "--sysfs", str(host)])
    out = capsys.readouterr().out
    assert code == EXIT_DOCTOR_ERROR and "cold_plug_vfio" in out and '"root-port"' in out


def test_group_not_viable_names_the_function_and_the_fix(tmp_path: Path) -> None:
    base = demo_host(str(tmp_path / "d.img"))
    audio = base.functions[1]
    held = FakeHost(functions=(base.functions[0], FakeFunction(
        audio.bdf, audio.vendor, audio.device, audio.class_code, driver="snd_hda_intel",
        iommu_group=audio.iommu_group)), blocks=base.blocks)
    inv = scan_host(write_fake_sysfs(tmp_path / "sys", held))
    findings = diagnose(config("vfio", "root-port"), request=request(vfio_group(12), block(0)),
                        inventory=inv)
    errors = [f for f in findings if f.severity is Severity.ERROR]
    assert len(errors) == 1 and "0000:41:00.1 is bound to snd_hda_intel" in errors[0].message
    assert "driverctl set-override 0000:41:00.1 vfio-pci" in errors[0].fix


def test_no_iommu_with_vfio_requested_is_an_error() -> None:
    inv = inventory(1, 2)
    bare = type(inv)(inv.functions, {}, inv.block_nodes, inv.char_nodes)
    findings = diagnose(config("vfio", "root-port"), request=request(vfio_group(12)),
                        inventory=bare)
    assert worst(findings) is Severity.ERROR
    assert any(f.check == "iommu" and f.severity is Severity.ERROR for f in findings)


def test_hot_port_windows_cover_the_bars() -> None:
    findings = diagnose(config("vfio", hot="root-port", root_ports=2),
                        request=request(vfio_group(12)), inventory=inventory(1, 2))
    bars = [f for f in findings if f.check == "bars"]
    assert any(f.message.startswith("rp0 (root port): mem 33M, pref64 128G (reserved) fits "
                                    "/dev/vfio/12 (needs mem 33M, pref64 128G)")
               for f in bars), bars
    # the spare root port is checked by its kind, against the host's largest device
    assert any(f.message.startswith("rp1 (root port)") and "largest assignable" in f.message
               for f in bars), bars
    assert all(f.severity is Severity.OK for f in bars)


def test_switch_ports_are_checked_by_kind_not_name() -> None:
    """A hot switch-port GPU: its downstream port's prefetchable window is kept by a
    boot-time device and fits, but the 16 MiB BAR0 needs a non-prefetchable window a
    downstream port cannot have."""
    findings = diagnose(config("vfio", hot="switch-port", switch_ports=2),
                        request=request(vfio_group(12)), inventory=inventory(1, 2))
    bars = {f.message.split(" ")[0]: f for f in findings if f.check == "bars"}
    gpu, spare = bars["swdp0"], bars["swdp1"]
    assert gpu.severity is Severity.ERROR and "(switch downstream port)" in gpu.message
    assert "kept by a boot-time device" in gpu.message and "lacks mem 31M, pref64 0" in \
        gpu.message and "use a root port" in gpu.fix
    assert spare.severity is Severity.WARNING


def test_guest_kernel_mirror_flagged_until_3_32() -> None:
    cfg = config("guest-kernel", "root-port")
    req = request(vfio_group(12), block(0))
    for era, bad in ((KataEra.KATA_3_14_3_16, True), (KataEra.KATA_3_17_3_31, True),
                     (KataEra.KATA_3_32_4_0, False), (KataEra.HEAD, False)):
        findings = diagnose(cfg, request=req, inventory=inventory(1, 2), era=era, version="x")
        dropped = [f for f in findings if "drops /dev/vfio/12" in f.message]
        assert bool(dropped) == bad, era


def test_doctor_plans_for_the_hotplug_mode_it_is_given(capsys: pytest.CaptureFixture[str],
                                                      host: Path, tmp_path: Path) -> None:
    """Under native hot-plug a hot bridge-port VFIO device cannot be plugged: doctor, like
    plan and run, plans for the mode it is told and says which."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[hypervisor.qemu]\nmachine_type = "q35"\nhot_plug_vfio = "bridge-port"\n'
                   'block_device_driver = "virtio-blk"\n[runtime]\nvfio_mode = "vfio"\n')
    spec = str(DEMO / "spec.json")
    code = main(["doctor", "--config", str(cfg), "--spec", spec, "--sysfs", str(host)])
    out = capsys.readouterr().out
    assert "cold_plug_vfio=no-port (default) hot_plug_vfio=bridge-port" in out
    assert "planned for acpi hot-plug" in out
    assert "rejected" not in out
    code = main(["doctor", "--config", str(cfg), "--spec", spec, "--sysfs", str(host),
                 "--hotplug", "native"])
    out = capsys.readouterr().out
    assert code == EXIT_DOCTOR_ERROR
    assert "planned for native hot-plug" in out and "/dev/vfio/12 rejected" in out
    assert "needs ACPI PCI hot-plug" in out


def test_doctor_names_a_qemu_that_cannot_run_the_plan() -> None:
    from podplug.model.qemu import QemuCapabilities, QemuFeature
    from tests.support import iommufd_dev

    qemu72 = QemuCapabilities("/usr/bin/qemu-system-x86_64", (7, 2, 22), "Debian",
                              frozenset({QemuFeature.PREF64_RESERVE, QemuFeature.MEM_RESERVE}))
    findings = diagnose(config("guest-kernel", cold="root-port"),
                        request=request(iommufd_dev(0)), inventory=inventory(0, iommufd=1),
                        qemu=qemu72)
    (bad,) = [f for f in findings if f.check == "qemu" and f.severity is Severity.ERROR]
    assert "QEMU 7.2.22 (Debian)) has no -object iommufd" in bad.message
    assert "QEMU 9.0+ for iommufd" in bad.fix
    from podplug.errors import ConfigError

    missing = ConfigError("hypervisor.qemu.path", "no such file", value="/opt/kata/bin/qemu")
    findings = diagnose(config("vfio", cold="root-port"), qemu=missing)
    assert any(f.check == "qemu" and f.severity is Severity.ERROR and "/opt/kata" in f.message
               for f in findings)


@pytest.mark.vm
def test_doctor_reports_the_configured_qemu(capsys: pytest.CaptureFixture[str],
                                            host: Path, tmp_path: Path) -> None:
    demo = (DEMO / "configuration.toml").read_text()
    assert 'path = "/usr/bin/qemu-system-x86_64"' in demo
    cfg = tmp_path / "configuration.toml"
    cfg.write_text(demo.replace('path = "/usr/bin/qemu-system-x86_64"', f'path = "{QEMU}"'))
    code = main(["doctor", "--config", str(cfg), "--sysfs", str(host)])
    out = capsys.readouterr().out
    assert code == 0 and f"qemu         {QEMU}: QEMU " in out


def test_doctor_says_one_true_thing_per_runtime_and_hypervisor(
        capsys: pytest.CaptureFixture[str], host: Path) -> None:
    from tests.support import KATA_MAIN

    spec = str(DEMO / "spec.json")
    clh = main(["doctor", "--config", str(KATA_MAIN / "go" / "configuration-clh.toml"),
                "--spec", spec, "--sysfs", str(host)])
    out = capsys.readouterr().out
    assert clh == EXIT_DOCTOR_ERROR  # the GPU has no port: said once, with a hint that works
    assert '("root-port") in [hypervisor.clh]' in out and "switch-port" not in out
    assert " qemu " not in out  # podplug boots no Cloud Hypervisor: no binary to check
    rs = main(["doctor", "--config",
               str(KATA_MAIN / "rs" / "configuration-qemu-runtime-rs.toml"), "--spec", spec,
               "--sysfs", str(host), "--kata-version", "3.16.0"])
    out = capsys.readouterr().out
    assert rs == EXIT_DOCTOR_ERROR
    assert "the release models describe the Go runtime" in out
    assert 'set cold_plug_vfio ("root-port") in [hypervisor.qemu]' in out
    assert "fails to attach" not in out
    fc = main(["doctor", "--config", str(KATA_MAIN / "go" / "configuration-fc.toml"),
               "--spec", spec, "--sysfs", str(host)])
    lines = capsys.readouterr().out.splitlines()
    assert fc == EXIT_DOCTOR_ERROR and len(lines) == 2  # one finding, then the verdict
    assert lines[0].startswith("ERROR   platform") and "'firecracker'" in lines[0]


def _block(extra: dict[str, object], *, rust: bool = False,
           qemu: QemuCapabilities | None = None) -> list[Finding]:
    return [f for f in diagnose(config(extra=extra, runtime_rs=rust), qemu=qemu)
            if f.check == "block"]


def test_block_keys_kata_cannot_plug_are_named_with_the_fix() -> None:
    native = _block({"block_device_aio": "native"})
    assert [f.severity for f in native] == [Severity.WARNING]
    assert "block_device_cache_set = true and block_device_cache_direct = true" in native[0].fix
    assert [f.severity for f in _block({"block_device_aio": "native",
                                        "block_device_cache_set": True,
                                        "block_device_cache_direct": True})] == [Severity.OK]
    rust = _block({"block_device_aio": "native"}, rust=True)
    assert rust[0].severity is Severity.WARNING and "block_device_cache_set" not in rust[0].fix
    store = _block({"enable_vhost_user_store": True})
    assert [f.severity for f in store] == [Severity.ERROR] and "enable_hugepages" in store[0].fix
    assert _block({"enable_vhost_user_store": True, "enable_hugepages": True})[0].severity \
        is Severity.OK
    no_uring = QemuCapabilities("/q", (7, 2, 0), "", frozenset())
    uring = _block({}, qemu=no_uring)
    assert uring[0].severity is Severity.ERROR and "threads" in uring[0].fix
    assert _block({"block_device_aio": "threads"}, qemu=no_uring)[0].severity is Severity.OK
    ignored = _block({"block_device_cache_direct": True})
    assert [f.severity for f in ignored] == [Severity.INFO]
    assert "only with block_device_cache_set" in ignored[0].message


def test_kata_release_findings_name_the_fix_for_each_loud_failure() -> None:
    host = with_store(inventory(1, 2, blocks=1))
    spec = request(vfio_control(), vfio_group(12), block(0), vhost_user(0))
    seed = {"enable_vhost_user_store": True}
    cfg = config("vfio", cold="root-port", extra=seed)
    found = [f for f in diagnose(cfg, request=spec, inventory=host, era=KataEra.KATA_3_17_3_31,
                                 version="3.17.0") if f.check == "kata-version"]
    assert found and all(f.severity is Severity.ERROR for f in found)
    assert "never starts the VM" in found[0].message and "enable_hugepages" in found[0].fix
    native = config("vfio", cold="root-port", extra={**seed, "enable_hugepages": True,
                                                     "block_device_aio": "native"})
    at_316 = [f for f in diagnose(native, request=spec, inventory=host,
                                  era=KataEra.KATA_3_14_3_16, version="3.16.0")
              if f.check == "kata-version"]
    dropped = [f for f in at_316 if "drops" in f.message]
    assert {f.message.split()[3].rstrip(":") for f in dropped} == {
        "/dev/vfio/vfio", "/dev/xda", "/dev/vub0"}
    assert all("upgrade Kata to 3.17.0" in f.fix for f in dropped)  # losses, not failures
    at_317 = [f for f in diagnose(native, request=spec, inventory=host,
                                  era=KataEra.KATA_3_17_3_31, version="3.17.0")
              if f.check == "kata-version"]
    assert [f.message.split()[5].rstrip(":") for f in at_317] == ["/dev/xda"]
    assert "block_device_cache_direct = true" in at_317[0].fix
