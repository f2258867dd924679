"""The pure hot-plug sequencer: order, predicted paths, rollback and teardown."""

from __future__ import annotations

from podplug.plan.plan import plan
from podplug.plan.sequence import (
    StepKind,
    hot_devices,
    plug_steps,
    undo,
    unplug_steps,
)
from podplug.plan.standin import stand_in, stand_ins
from tests.support import block, config, inventory, request, vfio_control, vfio_group


def _hot_plan(driver: str = "virtio-blk", port: str = "root-port"):  # type: ignore[no-untyped-def]
    return plan(config("vfio", hot=port, driver=driver),
                request(vfio_control(), vfio_group(12), block(0)), inventory(1, 2, blocks=1))


def test_plug_order_functions_first_then_function_zero_then_volume() -> None:
    steps = plug_steps(hot_devices(_hot_plan()))
    assert [(s.kind, s.subject) for s in steps] == [
        (StepKind.DEVICE_ADD, "vfio-0000-41-00-1"),
        (StepKind.DEVICE_ADD, "vfio-0000-41-00-0"),
        (StepKind.BLOCKDEV_ADD, "drive-blk0"),
        (StepKind.DEVICE_ADD, "blk0"),
    ]
    assert [str(s.expect_path) for s in steps[:2]] == ["03/00.1", "03/00"]
    assert str(steps[3].expect_path) == "02/01"


def test_scsi_lun_has_no_pci_path_to_check() -> None:
    steps = plug_steps(hot_devices(_hot_plan("virtio-scsi")))
    lun = steps[-1]
    assert lun.arguments["driver"] == "scsi-hd" and lun.expect_path is None


def test_stand_in_keeps_id_bus_addr_and_multifunction() -> None:
    steps = plug_steps(hot_devices(_hot_plan()), device=stand_in)
    fn0 = steps[1].arguments
    assert fn0["driver"] == "nvme" and fn0["serial"] == "0000:41:00.0"
    assert (fn0["id"], fn0["bus"], fn0["addr"], fn0["multifunction"]) == (
        "vfio-0000-41-00-0", "rp0", "00.0", True)  # a bool: QMP true (QEMU 10 takes no "on")
    assert "host" not in fn0


def test_stand_in_has_the_host_functions_largest_prefetchable_bars() -> None:
    """The GPU function (BAR1 64 GiB prefetchable): a 64 GiB PMR, its memory backend made
    just before the function and deleted after the slot is gone."""
    host = inventory(1, 2, blocks=1)
    hot = hot_devices(_hot_plan())
    steps = plug_steps(hot, device=stand_ins(host.functions))
    assert [(s.kind, s.subject) for s in steps[:3]] == [
        (StepKind.DEVICE_ADD, "vfio-0000-41-00-1"),  # audio: 16 KiB, no PMR, no object
        (StepKind.OBJECT_ADD, "vfio-0000-41-00-0-pmr"),
        (StepKind.DEVICE_ADD, "vfio-0000-41-00-0")]
    assert steps[1].arguments == {"qom-type": "memory-backend-ram",
                                  "id": "vfio-0000-41-00-0-pmr", "size": 64 << 30,
                                  "reserve": False}
    gpu = steps[2].arguments
    assert gpu["pmrdev"] == "vfio-0000-41-00-0-pmr" and "cmb_size_mb" not in gpu
    teardown = unplug_steps(hot, device=stand_ins(host.functions))
    assert [(s.kind, s.subject) for s in teardown][-2:] == [
        (StepKind.DEVICE_DEL, "vfio-0000-41-00-0"), (StepKind.OBJECT_DEL, "vfio-0000-41-00-0-pmr")]


def test_undo_reverses_only_what_was_done() -> None:
    steps = plug_steps(hot_devices(_hot_plan()))
    back = undo(steps[:3])
    assert [(s.kind, s.subject) for s in back] == [
        (StepKind.BLOCKDEV_DEL, "drive-blk0"),
        (StepKind.DEVICE_DEL, "vfio-0000-41-00-0"),
        (StepKind.DEVICE_DEL, "vfio-0000-41-00-1"),
    ]


def test_unplug_one_device_del_per_slot_then_node() -> None:
    steps = unplug_steps(hot_devices(_hot_plan()))
    assert [(s.kind, s.subject, s.also_removes) for s in steps] == [
        (StepKind.DEVICE_DEL, "blk0", ()),
        (StepKind.BLOCKDEV_DEL, "drive-blk0", ()),
        (StepKind.DEVICE_DEL, "vfio-0000-41-00-0", ("vfio-0000-41-00-1",)),
    ]


def test_iommufd_object_comes_before_its_device_and_goes_after() -> None:
    from tests.support import iommufd_dev

    p = plan(config("guest-kernel", hot="root-port"), request(iommufd_dev(0)),
             inventory(0, iommufd=1))
    plug = plug_steps(hot_devices(p))
    assert [(s.kind, s.subject) for s in plug] == [
        (StepKind.OBJECT_ADD, "iommufd0"), (StepKind.DEVICE_ADD, "vfio-0000-c0-00-0")]
    assert plug[1].arguments["iommufd"] == "iommufd0"
    assert [s.kind for s in unplug_steps(hot_devices(p))] == [StepKind.DEVICE_DEL,
                                                               StepKind.OBJECT_DEL]
    assert [s.kind for s in undo(plug)] == [StepKind.DEVICE_DEL, StepKind.OBJECT_DEL]
    assert not any(s.kind is StepKind.OBJECT_ADD
                   for s in plug_steps(hot_devices(p), device=stand_in))  # stand-in: no fd


def test_a_second_prefetchable_bar_becomes_the_controller_memory_buffer() -> None:
    from podplug.model.host import Bar, PciFunction
    from podplug.model.pci import Bdf
    from podplug.plan.standin import standin_bars
    from tests.support import PREF64

    h100 = PciFunction(Bdf(0, 0x41, 0, 0), 0x10DE, 0x2330, 0x030200, True,
                       (Bar(0, 16 << 20, 0x200), Bar(1, 64 << 30, PREF64),
                        Bar(3, 32 << 20, PREF64)), "vfio-pci", 0, 12)
    assert [(b.index, b.size) for b in standin_bars(h100)] == [
        (0, 16 << 10), (2, 32 << 20), (4, 64 << 30)]
    props = dict(stand_in(plan_device(), h100).props)
    assert props["cmb_size_mb"] == 32 and props["pmrdev"] == "vfio-0000-41-00-0-pmr"
    assert [(b.index, b.size) for b in standin_bars(None)] == [(0, 16 << 10)]


def plan_device():  # type: ignore[no-untyped-def]
    return hot_devices(_hot_plan())[0].functions[0].qemu
