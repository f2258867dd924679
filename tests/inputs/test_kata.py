"""Kata configuration parsing: Kata's own files of every release, validation done right,
annotation precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from podplug.errors import ConfigError, InputError, UnsupportedPlatform
from podplug.inputs.kata import apply_annotations, parse_kata_config
from podplug.inputs.load import load_kata_config
from podplug.model.enums import BlockDriver, Hypervisor, KataRuntime, PortKind, VfioMode
from tests.support import KATA_MAIN, config

P = "io.katacontainers.config.hypervisor."


def test_nvidia_gpu_fixture_values() -> None:
    cfg = load_kata_config(KATA_MAIN / "go" / "configuration-qemu-nvidia-gpu.toml")
    hv = cfg.hypervisor
    assert cfg.runtime is KataRuntime.GO
    assert (cfg.vfio_mode, hv.cold_plug_vfio, hv.hot_plug_vfio) == (
        VfioMode.GUEST_KERNEL, PortKind.ROOT_PORT, PortKind.NO_PORT)
    assert (hv.pcie_root_port, hv.machine_type, hv.block_device_driver, hv.default_bridges) == (
        8, "q35", BlockDriver.VIRTIO_SCSI, 1)


def test_qemu_se_fixture_is_the_seed_combination() -> None:
    """Rendered for x86_64, qemu-se keeps vfio_mode=vfio with a bridge-port cold plug: the
    combination of Kata #11288."""
    cfg = load_kata_config(KATA_MAIN / "go" / "configuration-qemu-se.toml")
    assert cfg.vfio_mode is VfioMode.VFIO
    assert cfg.hypervisor.cold_plug_vfio is PortKind.BRIDGE_PORT


def test_s390x_machine_type_is_refused_before_any_key() -> None:
    with pytest.raises(UnsupportedPlatform) as err:
        parse_kata_config({"hypervisor": {"qemu": {"machine_type": "s390-ccw-virtio",
                                                   "block_device_driver": "virtio-blk-ccw"}}})
    assert "machine_type = 's390-ccw-virtio': podplug plans only \"q35\"" in str(err.value)


def test_clh_fixtures_of_both_runtimes() -> None:
    go = load_kata_config(KATA_MAIN / "go" / "configuration-clh.toml")
    rs = load_kata_config(KATA_MAIN / "rs" / "configuration-clh-runtime-rs.toml")
    for cfg in (go, rs):
        assert cfg.hypervisor.kind is Hypervisor.CLOUD_HYPERVISOR
        assert cfg.hypervisor.block_device_driver is BlockDriver.VIRTIO_BLK
    assert (go.runtime, rs.runtime) == (KataRuntime.GO, KataRuntime.RUST)


def test_runtime_rs_spellings() -> None:
    """kata-types 3.13-3.29 named the table ``cloud-hypervisor``; runtime-rs spells the PCI
    block driver ``virtio-blk-pci`` and defaults to it."""
    rs = {"runtime": {"name": "virt_container", "hypervisor_name": "cloud-hypervisor"}}
    cfg = parse_kata_config({"hypervisor": {"cloud-hypervisor": {
        "block_device_driver": "virtio-blk-pci"}}, **rs})
    assert cfg.hypervisor.kind is Hypervisor.CLOUD_HYPERVISOR
    assert cfg.hypervisor.section == "hypervisor.cloud-hypervisor"
    assert cfg.hypervisor.block_device_driver is BlockDriver.VIRTIO_BLK
    qemu_rs = parse_kata_config({"hypervisor": {"qemu": {}},
                                 "runtime": {"name": "virt_container"}})
    assert qemu_rs.hypervisor.block_device_driver is BlockDriver.VIRTIO_BLK
    assert parse_kata_config({"hypervisor": {"qemu": {}}}).hypervisor.block_device_driver \
        is BlockDriver.VIRTIO_SCSI


def test_runtime_rs_ignores_hot_plug_vfio_and_says_so() -> None:
    cfg = parse_kata_config({"hypervisor": {"qemu": {"hot_plug_vfio": "root-port"}},
                             "runtime": {"name": "virt_container"}})
    assert cfg.hypervisor.hot_plug_vfio is PortKind.NO_PORT
    assert "hot_plug_vfio" not in cfg.hypervisor.given
    assert cfg.notes and "not a runtime-rs key: ignored" in cfg.notes[0]
    with pytest.raises(ConfigError, match="runtime-rs plugs VFIO only on root ports"):
        parse_kata_config({"hypervisor": {"qemu": {"cold_plug_vfio": "switch-port"}},
                           "runtime": {"name": "virt_container"}})


@pytest.mark.parametrize("name", ["firecracker", "dragonball", "stratovirt", "remote",
                                  "openvmm"])
def test_other_hypervisors_are_named_as_unsupported(name: str) -> None:
    with pytest.raises(UnsupportedPlatform) as err:
        parse_kata_config({"hypervisor": {name: {"block_device_driver": "virtio-mmio"}}})
    assert str(err.value) == f"hypervisor = {name!r}: podplug plans only \"qemu\", \"clh\""
    assert err.value.exit_code == 4


def test_block_drivers_kata_knows_but_podplug_does_not_plan() -> None:
    for driver in ("virtio-mmio", "nvdimm", "virtio-blk-ccw", "virtio-pmem"):
        with pytest.raises(UnsupportedPlatform, match=f"block_device_driver = '{driver}'"):
            parse_kata_config({"hypervisor": {"qemu": {"block_device_driver": driver}}})
    with pytest.raises(ConfigError, match="unsupported block device driver"):
        parse_kata_config({"hypervisor": {"qemu": {"block_device_driver": "virtio-bkl"}}})


def test_defaults_when_keys_are_absent() -> None:
    cfg = parse_kata_config({"hypervisor": {"qemu": {}}})
    assert cfg.vfio_mode is VfioMode.GUEST_KERNEL
    assert cfg.hypervisor.cold_plug_vfio is PortKind.NO_PORT
    assert cfg.hypervisor.hot_plug_vfio is PortKind.NO_PORT
    assert cfg.hypervisor.machine_type == "q35"


def test_both_cold_and_hot_names_each_with_its_own_value() -> None:
    with pytest.raises(ConfigError) as err:
        config(cold="root-port", hot="switch-port")
    text = str(err.value)
    assert 'cold_plug_vfio = "root-port"' in text
    assert 'hot_plug_vfio = "switch-port"' in text


@pytest.mark.parametrize("key", ["cold_plug_vfio", "hot_plug_vfio"])
def test_port_strings_are_validated(key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_kata_config({"hypervisor": {"qemu": {"machine_type": "q35", key: "rootport"}}})
    assert err.value.key == f"hypervisor.qemu.{key}"
    assert "root-port" in err.value.allowed and "rootport" in str(err.value)


@pytest.mark.parametrize("key", ["cold_plug_vfio", "hot_plug_vfio"])
@pytest.mark.parametrize("machine", ["s390-ccw-virtio", "pc", "virt"])
def test_other_machines_are_refused_as_such_before_the_ports(key: str, machine: str) -> None:
    """Kata skips the port check off q35/virt and accepts a bad string there; podplug
    names the platform it does not plan for, before any key."""
    with pytest.raises(UnsupportedPlatform, match=f"machine_type = '{machine}'"):
        parse_kata_config({"hypervisor": {"qemu": {"machine_type": machine, key: "rootport"}}})


@pytest.mark.parametrize("port", ["switch-port", "bridge-port"])
def test_cloud_hypervisor_takes_only_root_port(port: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(hypervisor="clh", cold=port, machine="")
    assert err.value.allowed == ("no-port", "root-port")
    config(hypervisor="clh", cold="root-port", machine="")  # accepted


@pytest.mark.parametrize(("key", "limit"), [("pcie_root_port", 16), ("pcie_switch_port", 16),
                                            ("default_bridges", 5)])
def test_count_above_limit_is_an_error_not_a_clamp(key: str, limit: int) -> None:
    parse_kata_config({"hypervisor": {"qemu": {key: limit}}})
    with pytest.raises(ConfigError) as err:
        parse_kata_config({"hypervisor": {"qemu": {key: limit + 1}}})
    assert key in str(err.value) and str(limit) in str(err.value)


def test_unsupported_block_driver() -> None:
    with pytest.raises(ConfigError) as err:
        parse_kata_config({"hypervisor": {"qemu": {"block_device_driver": "scsi"}}})
    assert "unsupported" in str(err.value) and "virtio-scsi" in str(err.value)
    assert "virtio-blk-pci" in err.value.allowed and "nvdimm" in err.value.allowed


def test_unknown_vfio_mode() -> None:
    with pytest.raises(ConfigError) as err:
        parse_kata_config({"hypervisor": {"qemu": {}}, "runtime": {"vfio_mode": "vfio-pci"}})
    assert err.value.key == "runtime.vfio_mode"


def test_loader_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "configuration.toml"
    bad.write_text('[hypervisor.qemu]\ncold_plug_vfio = "nope"\n')
    with pytest.raises(ConfigError) as err:
        load_kata_config(bad)
    assert str(err.value).startswith(str(bad))
    bad.write_text("[hypervisor.qemu\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_kata_config(bad)
    with pytest.raises(InputError, match="cannot open"):
        load_kata_config(tmp_path / "missing.toml")


def test_annotation_hot_forces_cold_off_and_cold_wins_when_both() -> None:
    base = config(cold="root-port")
    hot = apply_annotations(base, {P + "hot_plug_vfio": "switch-port"})
    assert (hot.hypervisor.hot_plug_vfio, hot.hypervisor.cold_plug_vfio) == (
        PortKind.SWITCH_PORT, PortKind.NO_PORT)
    both = apply_annotations(base, {P + "hot_plug_vfio": "root-port",
                                    P + "cold_plug_vfio": "bridge-port"})
    assert (both.hypervisor.cold_plug_vfio, both.hypervisor.hot_plug_vfio) == (
        PortKind.BRIDGE_PORT, PortKind.NO_PORT)


def test_annotation_counts_apply_only_when_positive() -> None:
    base = config(root_ports=4)
    assert apply_annotations(base, {P + "pcie_root_port": "0"}).hypervisor.pcie_root_port == 4
    assert apply_annotations(base, {P + "pcie_root_port": "9"}).hypervisor.pcie_root_port == 9
    with pytest.raises(ConfigError, match="limit of 16"):
        apply_annotations(base, {P + "pcie_root_port": "17"})


def test_annotation_invalid_port_names_the_annotation() -> None:
    with pytest.raises(ConfigError) as err:
        apply_annotations(config(), {P + "cold_plug_vfio": "bus-port"})
    assert err.value.key == P + "cold_plug_vfio"


def test_annotation_not_enabled_is_refused() -> None:
    cfg = load_kata_config(KATA_MAIN / "go" / "configuration-qemu-nvidia-gpu.toml")
    with pytest.raises(ConfigError) as err:
        apply_annotations(cfg, {P + "hot_plug_vfio": "root-port"})
    assert "enable_annotations" in str(err.value)
    assert apply_annotations(cfg, {"unrelated": "x"}) == cfg


def test_cloud_hypervisor_has_no_virtio_scsi() -> None:
    with pytest.raises(ConfigError) as err:
        config(hypervisor="clh", driver="virtio-scsi", machine="")
    assert err.value.allowed == ("virtio-blk",)
