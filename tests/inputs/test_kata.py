"""Kata configuration parsing: real fixtures, validation done right, annotation precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from podplug.errors import ConfigError
from podplug.inputs.kata import apply_annotations, load_kata_config, parse_kata_config
from podplug.model.enums import BlockDriver, Hypervisor, PortKind, VfioMode
from tests.support import KATA_FIXTURES, config

FIXTURES = sorted(KATA_FIXTURES.glob("*.toml"))
P = "io.katacontainers.config.hypervisor."


def test_fixture_directory_is_there() -> None:
    assert len(FIXTURES) >= 5, f"Kata fixtures missing under {KATA_FIXTURES}"


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_every_upstream_fixture_loads_unchanged(path: Path) -> None:
    cfg = load_kata_config(path)
    assert cfg.hypervisor.kind in (Hypervisor.QEMU, Hypervisor.CLOUD_HYPERVISOR)


def test_nvidia_gpu_fixture_values() -> None:
    cfg = load_kata_config(KATA_FIXTURES / "configuration-qemu-nvidia-gpu.toml")
    hv = cfg.hypervisor
    assert (cfg.vfio_mode, hv.cold_plug_vfio, hv.hot_plug_vfio) == (
        VfioMode.GUEST_KERNEL, PortKind.ROOT_PORT, PortKind.NO_PORT)
    assert (hv.pcie_root_port, hv.machine_type, hv.block_device_driver, hv.default_bridges) == (
        8, "q35", BlockDriver.VIRTIO_SCSI, 1)


def test_qemu_se_fixture_is_the_seed_combination() -> None:
    cfg = load_kata_config(KATA_FIXTURES / "configuration-qemu-se.toml")
    assert cfg.vfio_mode is VfioMode.VFIO
    assert cfg.hypervisor.cold_plug_vfio is PortKind.BRIDGE_PORT
    assert cfg.hypervisor.machine_type == "s390-ccw-virtio"


def test_clh_fixture() -> None:
    cfg = load_kata_config(KATA_FIXTURES / "configuration-clh.toml")
    assert cfg.hypervisor.kind is Hypervisor.CLOUD_HYPERVISOR
    assert cfg.hypervisor.block_device_driver is BlockDriver.VIRTIO_BLK


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
@pytest.mark.parametrize("machine", ["q35", "s390-ccw-virtio", "pc"])
def test_port_strings_are_validated_for_every_machine(key: str, machine: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_kata_config({"hypervisor": {"qemu": {"machine_type": machine, key: "rootport"}}})
    assert err.value.key == f"hypervisor.qemu.{key}"
    assert "root-port" in err.value.allowed and "rootport" in str(err.value)


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
        parse_kata_config({"hypervisor": {"qemu": {"block_device_driver": "nvdimm"}}})
    assert "unsupported" in str(err.value) and "virtio-scsi" in str(err.value)


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
    with pytest.raises(ConfigError, match="cannot read"):
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
    cfg = load_kata_config(KATA_FIXTURES / "configuration-qemu-nvidia-gpu.toml")
    with pytest.raises(ConfigError) as err:
        apply_annotations(cfg, {P + "hot_plug_vfio": "root-port"})
    assert "enable_annotations" in str(err.value)
    assert apply_annotations(cfg, {"unrelated": "x"}) == cfg


def test_cloud_hypervisor_has_no_virtio_scsi() -> None:
    with pytest.raises(ConfigError) as err:
        config(hypervisor="clh", driver="virtio-scsi", machine="")
    assert err.value.allowed == ("virtio-blk",)
