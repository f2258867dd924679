"""scan_host against fake sysfs trees (written by podplug.host.fakesysfs) and the real /sys."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from podplug.errors import HostError
from podplug.host.fakesysfs import (
    FLAGS_IO,
    FLAGS_MEM32,
    FLAGS_MEM64_PREF,
    GIB,
    IOMMU_MINOR,
    KIB,
    MIB,
    MISC_MAJOR,
    VFIO_CDEV_MAJOR,
    VFIO_CONTAINER_MINOR,
    VFIO_GROUP_MAJOR,
    FakeBlock,
    FakeFunction,
    FakeHost,
    demo_host,
    eight_gpu_host,
    write_fake_sysfs,
)
from podplug.host.sysfs import scan_host
from podplug.model.host import CharNode, HostInventory
from podplug.model.pci import (
    CLASS_AUDIO,
    CLASS_DISPLAY_3D,
    CLASS_NVME,
    CLASS_OTHER_BRIDGE,
    CLASS_PCI_BRIDGE,
    Bdf,
)

BACKING = "/var/lib/images/rootfs.img"


def _scan(tmp_path: Path, host: FakeHost) -> HostInventory:
    return scan_host(write_fake_sysfs(tmp_path / "sys", host))


def _bdf(text: str) -> Bdf:
    return Bdf.parse(text)


# --- one function, every field -------------------------------------------------------------


def test_demo_host_gpu_fields(tmp_path: Path) -> None:
    inventory = _scan(tmp_path, demo_host(BACKING))

    assert list(inventory.functions) == [_bdf("0000:41:00.0"), _bdf("0000:41:00.1")]
    gpu = inventory.functions[_bdf("0000:41:00.0")]
    assert (gpu.vendor, gpu.device, gpu.class_code) == (0x10DE, 0x2330, CLASS_DISPLAY_3D)
    assert gpu.is_pcie is True
    assert gpu.driver == "vfio-pci"
    assert gpu.numa_node is None  # numa_node -1
    assert gpu.iommu_group == 12
    assert [(b.index, b.size) for b in gpu.bars] == [(0, 16 * MIB), (1, 64 * GIB), (3, 32 * MIB)]
    bar0, bar1, bar3 = gpu.bars
    assert (bar0.is_64bit, bar0.prefetchable, bar0.is_io) == (False, False, False)
    assert (bar1.is_64bit, bar1.prefetchable) == (True, True)
    assert (bar3.is_64bit, bar3.prefetchable) == (True, True)

    audio = inventory.functions[_bdf("0000:41:00.1")]
    assert audio.class_code == CLASS_AUDIO
    assert [(b.index, b.size) for b in audio.bars] == [(0, 16 * KIB)]

    assert inventory.iommu_groups == {12: (_bdf("0000:41:00.0"), _bdf("0000:41:00.1"))}
    assert inventory.has_iommu
    assert inventory.sysfs_root == str(tmp_path / "sys")


def test_conventional_pci_io_bar_numa_and_no_driver(tmp_path: Path) -> None:
    function = FakeFunction(
        "0001:02:1f.7", 0x1AF4, 0x1000, 0x020000, pcie=False,
        bars=((0, 256, FLAGS_IO), (5, 4 * KIB, FLAGS_MEM32)),
        driver=None, numa_node=3, iommu_group=None,
    )
    inventory = _scan(tmp_path, FakeHost(functions=(function,)))

    scanned = inventory.functions[_bdf("0001:02:1f.7")]
    assert scanned.bdf == Bdf(1, 2, 0x1F, 7)
    assert scanned.is_pcie is False
    assert scanned.driver is None
    assert scanned.numa_node == 3
    assert scanned.iommu_group is None
    assert [(b.index, b.size, b.is_io) for b in scanned.bars] == [(0, 256, True), (5, 4096, False)]
    assert inventory.iommu_groups == {}
    assert not inventory.has_iommu
    assert inventory.char_nodes == {}  # nothing bound to vfio-pci: no /dev/vfio nodes


# --- the 8-GPU host ---------------------------------------------------------------------------


def test_eight_gpu_host_groups(tmp_path: Path) -> None:
    inventory = _scan(tmp_path, eight_gpu_host(BACKING))
    functions = inventory.functions

    gpus = [f for f in functions.values() if f.class_code == CLASS_DISPLAY_3D]
    assert len(gpus) == 8
    for gpu in gpus:
        assert gpu.iommu_group is not None
        audio = Bdf(gpu.bdf.domain, gpu.bdf.bus, gpu.bdf.device, 1)
        assert inventory.iommu_groups[gpu.iommu_group] == (gpu.bdf, audio)
        assert functions[audio].class_code == CLASS_AUDIO
        assert [b.size for b in gpu.bars if b.is_64bit and b.prefetchable] == [64 * GIB, 32 * MIB]
    assert len({g.iommu_group for g in gpus}) == 8
    assert [g.numa_node for g in gpus].count(0) == 4
    assert [g.numa_node for g in gpus].count(1) == 4

    switches = [f for f in functions.values() if f.class_code == CLASS_OTHER_BRIDGE]
    assert len(switches) == 4
    for switch in switches:
        assert not switch.is_bridge
        assert switch.driver == "vfio-pci"
        assert inventory.iommu_groups[switch.iommu_group or -1] == (switch.bdf,)
        assert [(b.index, b.size, b.prefetchable) for b in switch.bars] == [(0, 32 * MIB, False)]

    bridge = functions[_bdf("0000:c0:01.0")]
    assert bridge.class_code == CLASS_PCI_BRIDGE
    assert bridge.is_bridge
    assert bridge.driver == "pcieport"
    assert inventory.iommu_groups[40] == (bridge.bdf, _bdf("0000:c1:00.0"))
    assert not functions[_bdf("0000:c1:00.0")].is_bridge

    nvme = functions[_bdf("0000:e1:00.0")]
    assert (nvme.class_code, nvme.driver, nvme.numa_node) == (CLASS_NVME, "nvme", 1)
    assert functions[_bdf("0000:00:00.0")].driver is None


def test_eight_gpu_host_char_and_block_nodes(tmp_path: Path) -> None:
    inventory = _scan(tmp_path, eight_gpu_host(BACKING))

    groups_on_vfio = {20, 21, 22, 23, 24, 25, 26, 27, 30, 31, 32, 33, 40}
    expected = {(VFIO_GROUP_MAJOR, g): CharNode(VFIO_GROUP_MAJOR, g, f"vfio/{g}")
                for g in groups_on_vfio}
    expected[(MISC_MAJOR, VFIO_CONTAINER_MINOR)] = CharNode(
        MISC_MAJOR, VFIO_CONTAINER_MINOR, "vfio/vfio")
    assert inventory.char_nodes == expected  # no group node for host-owned groups 0 and 50
    assert inventory.iommufd_cdev("vfio0") is None

    loop = inventory.block_nodes[(7, 0)]
    assert (loop.name, loop.loop_backing_file, loop.dev_path) == ("loop0", BACKING, "/dev/loop0")


# --- iommufd, char and block nodes -----------------------------------------------------------


def test_iommufd_cdevs_point_at_their_functions(tmp_path: Path) -> None:
    host = FakeHost(functions=demo_host(BACKING).functions, iommufd=True)
    inventory = _scan(tmp_path, host)

    cdev0 = inventory.iommufd_cdev("vfio0")
    cdev1 = inventory.iommufd_cdev("vfio1")
    assert cdev0 == CharNode(VFIO_CDEV_MAJOR, 0, "vfio/devices/vfio0", _bdf("0000:41:00.0"))
    assert cdev1 == CharNode(VFIO_CDEV_MAJOR, 1, "vfio/devices/vfio1", _bdf("0000:41:00.1"))
    assert inventory.char_nodes[(MISC_MAJOR, IOMMU_MINOR)] == CharNode(
        MISC_MAJOR, IOMMU_MINOR, "iommu")
    assert inventory.char_nodes[(VFIO_GROUP_MAJOR, 12)].devname == "vfio/12"
    assert inventory.char_nodes[(VFIO_GROUP_MAJOR, 12)].pci_function is None


def test_char_nodes_keep_only_vfio_and_iommu(tmp_path: Path) -> None:
    root = write_fake_sysfs(tmp_path / "sys", demo_host(BACKING))
    for rel, uevent in (
        ("devices/virtual/misc/kvm", "MAJOR=10\nMINOR=232\nDEVNAME=kvm\n"),
        ("devices/virtual/vfio/99", "MAJOR=236\nMINOR=99\n"),  # no DEVNAME: skipped
    ):
        (root / rel).mkdir(parents=True)
        (root / rel / "uevent").write_text(uevent)
    os.symlink("../../devices/virtual/misc/kvm", root / "dev/char/10:232")
    os.symlink("../../devices/virtual/vfio/99", root / "dev/char/236:99")

    nodes = scan_host(root).char_nodes
    assert sorted(nodes) == [(MISC_MAJOR, VFIO_CONTAINER_MINOR), (VFIO_GROUP_MAJOR, 12)]


def test_blocks_with_and_without_backing_file(tmp_path: Path) -> None:
    host = FakeHost(blocks=(
        FakeBlock(7, 0, "loop0", "/srv/a b.img"),
        FakeBlock(7, 1, "loop1"),
        FakeBlock(259, 3, "nvme0n1"),
    ))
    root = write_fake_sysfs(tmp_path / "sys", host)
    (root / "devices/virtual/block/loop1/loop").mkdir()
    (root / "devices/virtual/block/loop1/loop/backing_file").write_text("\n")  # detached

    nodes = scan_host(root).block_nodes
    assert {k: (n.name, n.loop_backing_file) for k, n in nodes.items()} == {
        (7, 0): ("loop0", "/srv/a b.img"),
        (7, 1): ("loop1", None),
        (259, 3): ("nvme0n1", None),
    }


def test_tree_is_relocatable(tmp_path: Path) -> None:
    original = write_fake_sysfs(tmp_path / "a", demo_host(BACKING))
    copy = tmp_path / "elsewhere" / "b"
    shutil.copytree(original, copy, symlinks=True)
    shutil.rmtree(original)

    inventory = scan_host(copy)
    assert set(inventory.functions) == {_bdf("0000:41:00.0"), _bdf("0000:41:00.1")}
    assert inventory.block_nodes[(7, 0)].loop_backing_file == BACKING
    assert all(not os.path.isabs(os.readlink(p)) for p in copy.rglob("*") if p.is_symlink())


def test_fake_resource_file_has_kernel_shape(tmp_path: Path) -> None:
    root = write_fake_sysfs(tmp_path / "sys", eight_gpu_host(BACKING))
    gpu = root / "bus/pci/devices/0000:18:00.0"
    lines = (gpu / "resource").read_text().splitlines()
    assert len(lines) == 13
    assert lines[2] == " ".join(["0x" + "0" * 16] * 3)  # BAR2: upper half of 64-bit BAR1
    assert int(lines[1].split()[2], 16) == FLAGS_MEM64_PREF
    assert (gpu / "config").stat().st_size == 4096
    assert len((root / "bus/pci/devices/0000:c0:01.0/resource").read_text().splitlines()) == 17


# --- errors -----------------------------------------------------------------------------------


def test_missing_root_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(HostError) as info:
        scan_host(missing)
    assert info.value.path == str(missing)
    assert str(missing) in str(info.value)


def test_root_without_pci_bus_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(HostError) as info:
        scan_host(tmp_path)
    assert info.value.path == str(tmp_path / "bus" / "pci" / "devices")


def test_malformed_vendor_names_the_file(tmp_path: Path) -> None:
    root = write_fake_sysfs(tmp_path / "sys", demo_host(BACKING))
    vendor = root / "devices/pci0000:00/0000:41:00.1/vendor"
    vendor.write_text("nvidia\n")
    with pytest.raises(HostError) as info:
        scan_host(root)
    assert info.value.path == str(vendor)
    assert "nvidia" in info.value.problem


def test_missing_resource_names_the_file(tmp_path: Path) -> None:
    root = write_fake_sysfs(tmp_path / "sys", demo_host(BACKING))
    resource = root / "devices/pci0000:00/0000:41:00.0/resource"
    resource.unlink()
    with pytest.raises(HostError) as info:
        scan_host(root)
    assert info.value.path == str(resource)


def test_malformed_resource_line_names_the_file(tmp_path: Path) -> None:
    root = write_fake_sysfs(tmp_path / "sys", demo_host(BACKING))
    resource = root / "devices/pci0000:00/0000:41:00.0/resource"
    resource.write_text("0x1000 0x1fff\n")
    with pytest.raises(HostError) as info:
        scan_host(root)
    assert info.value.path == str(resource)
    assert "line 1" in info.value.problem


def test_absolute_link_out_of_root_is_refused(tmp_path: Path) -> None:
    root = write_fake_sysfs(tmp_path / "sys", FakeHost())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "uevent").write_text("MAJOR=10\nMINOR=196\nDEVNAME=vfio/vfio\n")
    link = root / "dev/char/10:196"
    os.symlink(outside / "vfio", link)  # absolute, leading out of the fake root
    with pytest.raises(HostError) as info:
        scan_host(root)
    assert info.value.path == str(link)
    assert "leaves the root" in info.value.problem


def test_group_listing_contradicting_link_is_an_error(tmp_path: Path) -> None:
    root = write_fake_sysfs(tmp_path / "sys", demo_host(BACKING))
    (root / "kernel/iommu_groups/12/devices/0000:41:00.1").unlink()
    with pytest.raises(HostError) as info:
        scan_host(root)
    assert info.value.path == str(root / "kernel/iommu_groups/12/devices")
    assert "0000:41:00.1" in info.value.problem


def test_fake_function_rejects_bad_bar() -> None:
    with pytest.raises(ValueError, match="power of two"):
        FakeFunction("0000:01:00.0", 1, 2, 3, bars=((0, 3 * MIB, FLAGS_MEM32),))
    with pytest.raises(ValueError, match="BAR6"):
        FakeFunction("0000:01:00.0", 1, 2, 3, bars=((6, MIB, FLAGS_MEM32),))
    with pytest.raises(ValueError, match="PCI address"):
        FakeFunction("0000:01:00", 1, 2, 3)


# --- the real host ----------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir("/sys/bus/pci/devices") and not os.environ.get("CI"),
                    reason="no PCI sysfs here (never skipped in CI, whose machines have it)")
def test_real_sys() -> None:
    inventory = scan_host()
    assert inventory.sysfs_root == "/sys"
    assert len(inventory.functions) >= 1
    for bdf, function in inventory.functions.items():
        assert function.bdf == bdf
        assert 0 < function.vendor <= 0xFFFF
        assert os.path.isdir(f"/sys/bus/pci/devices/{bdf}")
