"""The guest module groups a plan needs (:mod:`podplug.plan.guest_needs`)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from podplug.model.enums import ModuleGroup
from podplug.plan.guest_needs import after_release, cmdline_word, guest_module_groups
from podplug.plan.plan import plan
from podplug.plan.standin import stand_ins
from tests.support import block, config, inventory, request, vfio_group

BLK, SCSI, NVME, VFIO = ModuleGroup.BLK, ModuleGroup.SCSI, ModuleGroup.NVME, ModuleGroup.VFIO


@pytest.mark.parametrize(("mode", "cold", "driver", "mapped", "expected"), [
    # the seed: vfio mode, a GPU group cold on a root port, a virtio-blk volume
    ("vfio", "root-port", "virtio-blk", False, (BLK, VFIO)),
    ("vfio", "root-port", "virtio-blk", True, (BLK, NVME, VFIO)),  # stand-ins are nvme
    ("vfio", "root-port", "virtio-scsi", True, (SCSI, NVME, VFIO)),
    # guest-kernel mode: the device keeps its own guest driver, nothing is bound to vfio-pci
    ("guest-kernel", "root-port", "virtio-blk", True, (BLK, NVME)),
    ("guest-kernel", "root-port", "virtio-blk", False, (BLK,)),
])
def test_groups_follow_the_devices_as_plugged(mode: str, cold: str, driver: str, mapped: bool,
                                              expected: tuple[ModuleGroup, ...]) -> None:
    host = inventory(1, 2, blocks=1)
    p = plan(config(mode, cold=cold, driver=driver, root_ports=2), request(vfio_group(12),
             block(0)), host)
    device = stand_ins(host.functions) if mapped else (lambda q: q)
    assert guest_module_groups(p, device=device) == expected


def test_a_volume_alone_needs_only_its_driver() -> None:
    for driver, group in (("virtio-blk", BLK), ("virtio-scsi", SCSI)):
        p = plan(config(driver=driver), request(block(0)), inventory(0, 0, blocks=1))
        assert guest_module_groups(p) == (group,)
        assert cmdline_word(guest_module_groups(p)) == f"podplug.load={group.value}"


def test_no_devices_preload_nothing() -> None:
    p = plan(config(), request(), inventory(0, 0, blocks=0))
    assert guest_module_groups(p) == ()
    assert cmdline_word(()) == "podplug.load="


def test_nvme_waits_for_the_window_keepers_to_leave() -> None:
    """Hot targets behind a switch get nvme window keepers: nvme must not bind them."""
    host = inventory(1, 2, blocks=1)
    p = plan(config("vfio", hot="switch-port", switch_ports=1), request(vfio_group(12),
             block(0)), host)
    assert any(c.keeper for c in p.topology.controllers)
    groups = guest_module_groups(p, device=stand_ins(host.functions))
    assert NVME in groups
    assert after_release(p, groups) == (tuple(g for g in groups if g is not NVME), (NVME,))


def test_without_keepers_everything_loads_from_boot() -> None:
    p = plan(config("vfio", cold="root-port", root_ports=1), request(vfio_group(12)),
             inventory(1, 2, blocks=0))
    assert not any(c.keeper for c in p.topology.controllers)
    assert after_release(p, (NVME, VFIO)) == ((NVME, VFIO), ())


def test_a_real_nvme_in_guest_kernel_mode_gets_the_guest_nvme_driver() -> None:
    # a passed-through NVMe controller (class 01 08 02) keeps its guest driver in
    # guest-kernel mode: the guest needs nvme even without stand-ins; in vfio mode it does not
    host = inventory(1, 1, blocks=0)
    (function,) = host.functions.values()
    nvme_host = replace(host, functions={function.bdf: replace(function, class_code=0x010802)})
    for mode, expected in (("guest-kernel", (NVME,)), ("vfio", (VFIO,))):
        p = plan(config(mode, cold="root-port", root_ports=2), request(vfio_group(12)),
                 nvme_host)
        assert guest_module_groups(p) == expected
    gpu_plan = plan(config("guest-kernel", cold="root-port", root_ports=2),
                    request(vfio_group(12)), host)
    assert guest_module_groups(gpu_plan) == ()  # no GPU driver in podplug's image
