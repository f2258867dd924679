"""``podplug matrix``: the whole plan-only matrix, the upstream comparisons, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from podplug.cli import main
from podplug.matrix import check as matrix_check
from podplug.matrix.boot import choose
from podplug.matrix.check import (
    BlockIo,
    Combination,
    Mix,
    Outcome,
    Result,
    defects,
    matrix_host,
    request_for,
    run_matrix,
    varies_block_io,
)
from podplug.matrix.compare import failures, losses
from podplug.matrix.kata_models import KataEra
from podplug.model.enums import (
    BlockDriver,
    Bucket,
    ContainerType,
    Hypervisor,
    PortKind,
    VfioMode,
)
from podplug.model.pci import GuestPciPath
from podplug.plan.model import Chardev, Plan, QemuDevice
from podplug.plan.plan import plan

RESULTS = run_matrix()
HAS_BLOCK = {Mix.BLOCK, Mix.VFIO_BLOCK, Mix.TWO_FUNCTION_TWO_BLOCKS, Mix.IOMMUFD_BLOCK,
             Mix.BLOCK_VHOST_USER}
HAS_VFIO = {Mix.VFIO, Mix.VFIO_BLOCK, Mix.TWO_FUNCTION_TWO_BLOCKS, Mix.IOMMUFD_BLOCK}
RAW = {"/dev/xda", "/dev/xdb"}


def _result(c: Combination) -> Result:
    return next(r for r in RESULTS if r.combination == c)


def _plan_of(c: Combination) -> Plan:
    result = _result(c)
    assert result.plan is not None and result.outcome is Outcome.PLANNED, result.reason
    return result.plan


def test_every_combination_is_enumerated_and_none_is_a_defect() -> None:
    per_mix = 2 * 4 * 4 * 2 * len(ContainerType)  # vfio_mode x cold x hot x driver x type
    qemu_block_mixes = sum(varies_block_io(Hypervisor.QEMU, m) for m in Mix)
    assert qemu_block_mixes == len(HAS_BLOCK) == 5
    assert len(RESULTS) == per_mix * (2 * len(Mix) + qemu_block_mixes * (len(BlockIo) - 1))
    assert len(RESULTS) == 3712
    assert len({r.combination for r in RESULTS}) == len(RESULTS)
    assert [r for r in RESULTS if r.outcome is Outcome.DEFECT] == []


def test_block_io_axis_only_where_it_can_matter() -> None:
    for r in RESULTS:
        c = r.combination
        if c.aio is not BlockIo.IO_URING:
            assert c.hypervisor is Hypervisor.QEMU and c.mix in HAS_BLOCK, c.label
    seen = {(c.mix, c.aio) for c in (r.combination for r in RESULTS)
            if c.hypervisor is Hypervisor.QEMU}
    assert seen == {(m, a) for m in Mix for a in BlockIo
                    if a is BlockIo.IO_URING or m in HAS_BLOCK}


@pytest.mark.parametrize(("aio", "sent", "cache", "note"), [
    (BlockIo.IO_URING, "io_uring", None, False),
    (BlockIo.THREADS, "threads", None, False),
    (BlockIo.NATIVE, "threads", None, True),  # QEMU refuses native without cache.direct
    (BlockIo.NATIVE_DIRECT, "native", (True, False), False),
])
@pytest.mark.parametrize("driver", list(BlockDriver))
def test_block_io_reaches_every_raw_volume(aio: BlockIo, sent: str, cache: object, note: bool,
                                           driver: BlockDriver) -> None:
    c = Combination(VfioMode.GUEST_KERNEL, PortKind.ROOT_PORT, PortKind.NO_PORT, driver,
                    Hypervisor.QEMU, Mix.TWO_FUNCTION_TWO_BLOCKS, ContainerType.CONTAINER, aio)
    volumes = [d for d in _plan_of(c).devices if d.bucket is Bucket.HOT_BLOCK]
    assert len(volumes) == 2
    for volume in volumes:
        assert volume.blockdev is not None
        assert (volume.blockdev.aio, volume.blockdev.node_cache) == (sent, cache)
        assert any("native" in n for n in volume.notes) is note


@pytest.mark.parametrize("driver", list(BlockDriver))
@pytest.mark.parametrize("aio", list(BlockIo))
def test_vhost_user_blk_mix_on_a_bridge_slot_whatever_the_driver(driver: BlockDriver,
                                                                 aio: BlockIo) -> None:
    c = Combination(VfioMode.VFIO, PortKind.ROOT_PORT, PortKind.NO_PORT, driver,
                    Hypervisor.QEMU, Mix.BLOCK_VHOST_USER, ContainerType.CONTAINER, aio)
    result = _plan_of(c)
    raw, vhost = result.devices
    assert vhost.bucket is Bucket.HOT_BLOCK and vhost.qemu is not None
    assert vhost.qemu.driver == "vhost-user-blk-pci" and vhost.blockdev is None
    assert vhost.qemu.bus == "pci-bridge-0"  # default_bridges = 1, ACPI hot-plug
    assert vhost.chardev is not None
    assert vhost.chardev.path == "/var/run/kata-containers/vhost-user/block/sockets/vub0"
    assert result.shared_memory
    assert raw.qemu is not None and raw.qemu.driver == (
        "virtio-blk-pci" if driver is BlockDriver.VIRTIO_BLK else "scsi-hd")


def test_vhost_user_blk_refused_with_the_reason_on_cloud_hypervisor() -> None:
    c = Combination(VfioMode.GUEST_KERNEL, PortKind.NO_PORT, PortKind.NO_PORT,
                    BlockDriver.VIRTIO_BLK, Hypervisor.CLOUD_HYPERVISOR, Mix.BLOCK_VHOST_USER,
                    ContainerType.CONTAINER)
    raw, vhost = _plan_of(c).devices
    assert raw.bucket is Bucket.HOT_BLOCK
    assert vhost.bucket is Bucket.REJECTED and "only with QEMU" in vhost.reason


def test_both_ports_set_is_rejected_naming_each() -> None:
    for r in RESULTS:
        c = r.combination
        if c.cold is not PortKind.NO_PORT and c.hot is not PortKind.NO_PORT:
            assert r.outcome is Outcome.REJECTED
            assert f'cold_plug_vfio = "{c.cold.value}"' in r.reason
            assert f'hot_plug_vfio = "{c.hot.value}"' in r.reason


def test_cloud_hypervisor_rules_differ() -> None:
    for r in RESULTS:
        c = r.combination
        if c.hypervisor is not Hypervisor.CLOUD_HYPERVISOR or r.outcome is Outcome.PLANNED:
            continue
        assert ("flat root bus" in r.reason or "no virtio-scsi" in r.reason
                or "only one of them" in r.reason), r.reason
    clh_planned = [r for r in RESULTS if r.combination.hypervisor is Hypervisor.CLOUD_HYPERVISOR
                   and r.outcome is Outcome.PLANNED]
    assert clh_planned and all(r.combination.driver is BlockDriver.VIRTIO_BLK
                               for r in clh_planned)


def test_planned_counts_add_up_to_the_mix() -> None:
    for r in RESULTS:
        if r.outcome is Outcome.PLANNED:
            assert sum(r.counts.values()) == len(request_for(r.combination).devices)


def test_defects_are_detected_from_plan_output() -> None:
    c = Combination(VfioMode.VFIO, PortKind.ROOT_PORT, PortKind.NO_PORT, BlockDriver.VIRTIO_BLK,
                    Hypervisor.QEMU, Mix.VFIO_BLOCK, ContainerType.CONTAINER)
    good = next(r for r in RESULTS if r.combination == c)
    assert good.plan is not None and defects(good.plan, request_for(c)) == []
    broken = replace(good.plan, devices=good.plan.devices[:1])
    assert defects(broken, request_for(c)) == ["plan devices differ from the request"]
    no_agent = replace(good.plan, devices=(replace(good.plan.devices[0], agent=None),
                                           good.plan.devices[1]))
    assert "/dev/vfio/12: no kata-agent entry" in defects(no_agent, request_for(c))


# --- the block defect checks: each fires on a hand-broken plan, never on a real one ----------

VHOST_SEED = Combination(VfioMode.VFIO, PortKind.ROOT_PORT, PortKind.NO_PORT,
                         BlockDriver.VIRTIO_BLK, Hypervisor.QEMU, Mix.BLOCK_VHOST_USER,
                         ContainerType.CONTAINER)


def _break(c: Combination, index: int, **changes: object) -> list[str]:
    """The defects of ``c``'s plan with device ``index`` changed (dataclasses.replace)."""
    good = _plan_of(c)
    assert defects(good, request_for(c)) == []
    devices = list(good.devices)
    devices[index] = replace(devices[index], **changes)  # type: ignore[arg-type]
    return defects(replace(good, devices=tuple(devices)), request_for(c))


def _with_props(device: QemuDevice | None, **props: object) -> QemuDevice:
    assert device is not None
    return replace(device, props=tuple((k, props.get(k, v)) for k, v in device.props))


@pytest.mark.parametrize("driver", list(BlockDriver))
def test_defect_native_aio_without_cache_direct(driver: BlockDriver) -> None:
    c = replace(VHOST_SEED, driver=driver, aio=BlockIo.THREADS)
    node = _plan_of(c).devices[0].blockdev
    assert node is not None
    native = replace(node, aio="native")
    assert _break(c, 0, blockdev=native) == [
        "/dev/xda: blockdev-add drive-blk0 has aio=native without cache.direct=on, which QEMU "
        "refuses"]
    # cache.direct on the raw node is inherited by the protocol node; one set off there is not
    assert _break(c, 0, blockdev=replace(native, node_cache=(True, False))) == []
    assert _break(c, 0, blockdev=replace(native, file_direct=True)) == []
    assert _break(c, 0, blockdev=replace(native, node_cache=(True, False),
                                         file_direct=False)) != []
    assert _break(c, 0, blockdev=replace(native, node_cache=(False, True))) != []
    assert _break(c, 0, blockdev=None) == ["/dev/xda: raw volume without a blockdev-add node"]


def test_no_real_plan_sends_native_without_direct() -> None:
    natives = [r for r in RESULTS if r.combination.aio is BlockIo.NATIVE and r.plan is not None]
    assert natives
    for r in natives:
        assert r.plan is not None
        assert all(d.blockdev.aio == "threads" for d in r.plan.devices if d.blockdev)


def test_defect_vhost_user_blk_without_its_chardev() -> None:
    problems = _break(VHOST_SEED, 1, chardev=None)
    assert "/dev/vub0: vhost-user-blk-pci vublk0 without its chardev" in problems
    # and guest RAM is then not shared: nothing left says a backend maps it
    assert "/dev/vub0: a vhost-user device but guest RAM is not shared" in problems


def test_defect_vhost_user_blk_chardev_not_named_by_its_device() -> None:
    vhost = _plan_of(VHOST_SEED).devices[1]
    assert vhost.chardev is not None
    assert _break(VHOST_SEED, 1, chardev=replace(vhost.chardev, id="char-other")) == [
        "/dev/vub0: chardev char-other is not the one vublk0 names (char-vublk0)"]
    assert _break(VHOST_SEED, 1, qemu=_with_props(vhost.qemu, chardev="char-x")) == [
        "/dev/vub0: chardev char-vublk0 is not the one vublk0 names (char-x)"]


def test_defect_vhost_user_node_planned_as_another_device() -> None:
    raw = _plan_of(VHOST_SEED).devices[0]
    problems = _break(VHOST_SEED, 1, qemu=raw.qemu)
    assert problems[0] == ("/dev/vub0: a vhost-user-blk node (major 241) planned as "
                           "virtio-blk-pci, not vhost-user-blk-pci")
    assert _break(VHOST_SEED, 1, blockdev=raw.blockdev) == [
        "/dev/vub0: a vhost-user-blk volume with a blockdev-add node"]
    assert _break(VHOST_SEED, 0, chardev=Chardev("char-vublk9", "/x")) == [
        "/dev/xda: chardev char-vublk9 on a hot-block device that names none"]


@pytest.mark.parametrize(("bus", "addr"), [
    ("scsi0.0", "02.0"),  # a virtio-scsi bus is no PCI slot
    ("pcie.0", "05.0"),  # the q35 root bus takes no hot-plug
    ("rp0", "01.0"),  # a root port has one slot, 0
    ("pci-bridge-0", "00.0"),  # a bridge's slot 0 is its SHPC's
    ("pci-bridge-0", "01.1"),  # not function 0
    ("nowhere", "01.0"),
])
def test_defect_vhost_user_volume_off_a_pci_slot(bus: str, addr: str) -> None:
    vhost = _plan_of(VHOST_SEED).devices[1]
    problems = _break(VHOST_SEED, 1, qemu=_with_props(vhost.qemu, bus=bus, addr=addr))
    assert problems == [f"/dev/vub0: vhost-user-blk-pci vublk0 is on {bus} addr {addr}, not a "
                        "PCI slot a volume can be hot-plugged to"]


def test_vhost_user_volume_on_its_own_root_port_is_no_defect() -> None:
    """Quiet on another valid placement: slot 0 of a root port, with that slot's path."""
    vhost = _plan_of(VHOST_SEED).devices[1]
    assert vhost.agent is not None
    there = GuestPciPath((3, 0))  # rp0 is on root-bus slot 3
    assert _break(VHOST_SEED, 1, qemu=_with_props(vhost.qemu, bus="rp0", addr="00.0"),
                  guest_paths=(there,), agent=replace(vhost.agent, id=str(there))) == []


def test_defect_vhost_user_volume_agent_names_another_slot() -> None:
    vhost = _plan_of(VHOST_SEED).devices[1]
    assert vhost.agent is not None
    problems = _break(VHOST_SEED, 1, agent=replace(vhost.agent, id="01/09"))
    assert len(problems) == 1 and "agent entry do not name pci-bridge-0" in problems[0]


def test_defect_two_devices_on_one_slot() -> None:
    raw, vhost = _plan_of(VHOST_SEED).devices
    assert raw.qemu is not None and vhost.qemu is not None
    moved = _with_props(vhost.qemu, addr=dict(raw.qemu.props)["addr"])
    problems = _break(VHOST_SEED, 1, qemu=moved)
    assert any("vublk0 shares pci-bridge-0 slot" in p and "with blk0" in p for p in problems)


def test_defect_guest_ram_not_shared_on_the_command_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    good = _plan_of(VHOST_SEED)
    real = matrix_check.render_argv

    def unshared(plan: Plan) -> list[str]:
        return [a.replace("share=on", "share=off") for a in real(plan)]

    monkeypatch.setattr(matrix_check, "render_argv", unshared)
    assert defects(good, request_for(VHOST_SEED)) == [
        "/dev/vub0: a vhost-user device but the command line gives guest RAM no shared "
        "memory backend (share=on)"]
    monkeypatch.setattr(matrix_check, "render_argv",  # the machine does not name it
                        lambda plan: [a.replace(",memory-backend=", ",x=") for a in real(plan)])
    assert len(defects(good, request_for(VHOST_SEED))) == 1


def _expected_3_16(c: Combination) -> bool:
    if c.cold is PortKind.NO_PORT or c.hot is not PortKind.NO_PORT:
        return False
    if c.vfio_mode is VfioMode.VFIO:  # the cold list alone, even when it is empty (#11288)
        return c.mix in HAS_BLOCK
    return c.mix in HAS_VFIO and c.container is ContainerType.CONTAINER


@pytest.mark.parametrize(("era", "expected"), [
    (KataEra.PRE_3_14, lambda c: c.cold is not PortKind.NO_PORT and c.hot is PortKind.NO_PORT
     and c.mix in HAS_VFIO and c.container is ContainerType.CONTAINER),
    (KataEra.KATA_3_14_3_16, _expected_3_16),
    (KataEra.KATA_3_17_3_31, lambda c: _expected_3_16(c) and c.vfio_mode
     is VfioMode.GUEST_KERNEL),
    (KataEra.KATA_3_32_4_0, lambda c: False),
    (KataEra.HEAD, lambda c: False),
])
def test_upstream_losses_exactly_where_the_bugs_were(era: KataEra, expected: object) -> None:
    for r in RESULTS:
        if r.outcome is not Outcome.PLANNED:
            continue
        lost = losses(r, era)
        want = expected(r.combination)  # type: ignore[operator]
        assert bool(lost) == want, (era, r.combination.label, lost)
        if lost and r.combination.vfio_mode is VfioMode.VFIO and era is not KataEra.PRE_3_14:
            assert "/dev/xda" in lost  # the seed: the raw block volume
        if lost and r.combination.mix is Mix.BLOCK_VHOST_USER:
            # dropped with the hot list, like the raw volume (Cloud Hypervisor: refused)
            want_lost = ("/dev/xda", "/dev/vub0") if r.combination.hypervisor is \
                Hypervisor.QEMU else ("/dev/xda",)
            assert lost == want_lost


@pytest.mark.parametrize("era", list(KataEra))
def test_upstream_fails_loudly_on_native_without_direct_in_every_era(era: KataEra) -> None:
    """Every raw volume of a QEMU combination with aio=native (no cache.direct) that the
    era attaches fails there; the 3.14-3.16 era's dropped ones never get that far."""
    for r in RESULTS:
        if r.outcome is not Outcome.PLANNED:
            continue
        c = r.combination
        loud = failures(r, era)
        if c.aio is not BlockIo.NATIVE:
            assert loud == (), c.label
            continue
        raw = [p for p in (d.path for d in request_for(c).devices) if p in RAW]
        assert set(loud) == set(raw) - set(losses(r, era)), (era, c.label)
        assert not set(loud) & set(losses(r, era))
        assert "/dev/vub0" not in loud  # no blockdev-add: aio is not its business


def test_boot_sample_covers_seed_drivers_and_ports() -> None:
    chosen = [RESULTS[i].combination for i in choose(RESULTS, "seed")]
    seed = {(c.vfio_mode, c.cold) for c in chosen if c.hot is PortKind.NO_PORT}
    assert {(VfioMode.VFIO, PortKind.ROOT_PORT), (VfioMode.VFIO, PortKind.SWITCH_PORT),
            (VfioMode.VFIO, PortKind.BRIDGE_PORT),
            (VfioMode.GUEST_KERNEL, PortKind.ROOT_PORT)} <= seed
    assert {c.driver for c in chosen} == set(BlockDriver)
    assert {c.hot for c in chosen} - {PortKind.NO_PORT} == {
        PortKind.ROOT_PORT, PortKind.SWITCH_PORT, PortKind.BRIDGE_PORT}
    vhost = [(c.driver, c.aio) for c in chosen if c.mix is Mix.BLOCK_VHOST_USER]
    assert vhost == [(BlockDriver.VIRTIO_BLK, BlockIo.IO_URING),
                     (BlockDriver.VIRTIO_SCSI, BlockIo.NATIVE_DIRECT)]
    assert all(c.aio is BlockIo.IO_URING for c in chosen if c.mix is Mix.VFIO_BLOCK)
    assert len(chosen) == 10
    assert RESULTS[-1].combination.hypervisor is Hypervisor.CLOUD_HYPERVISOR
    with pytest.raises(ValueError, match="not bootable"):
        choose(RESULTS, str(len(RESULTS) - 1))


SUMMARY = ("3712 combinations: 1316 planned, 2396 rejected, 0 defects; devices 328 cold-vfio, "
           "164 hot-vfio, 1640 hot-block, 0 node, 296 rejected")
COMPARE = {
    KataEra.PRE_3_14: (164, 164, 280, 336),
    KataEra.KATA_3_14_3_16: (332, 430, 220, 264),
    KataEra.KATA_3_17_3_31: (82, 82, 280, 336),
    KataEra.KATA_3_32_4_0: (0, 0, 280, 336),
    KataEra.HEAD: (0, 0, 280, 336),
}


@pytest.mark.parametrize("era", list(KataEra))
def test_cli_matrix_compare_lines(era: KataEra, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "--compare", era.value]) == 0
    last = capsys.readouterr().out.splitlines()[-2:]
    lost, lost_devices, loud, loud_devices = COMPARE[era]
    assert last == [SUMMARY, (
        f"{era.value}: loses devices podplug delivers in {lost} combinations ({lost_devices} "
        f"devices); fails loudly on devices podplug delivers in {loud} combinations "
        f"({loud_devices} devices)")]


def test_cli_matrix_formats_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "--compare", "kata-3.16"]) == 0
    out = capsys.readouterr().out
    assert SUMMARY in out
    assert "kata-3.14-3.16: loses devices podplug delivers in" in out
    assert "LOSS upstream: /dev/xda, /dev/vub0" in out
    assert "FAILS upstream: /dev/xda" in out
    assert main(["matrix", "--format", "json", "--compare", "kata-head"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["combinations"]) == 3712
    assert {item["block_io"] for item in doc["combinations"]} == {a.value for a in BlockIo}
    assert any(item["upstream_failures"] for item in doc["combinations"])
    assert not any(item["upstream_losses"] for item in doc["combinations"])
    assert main(["matrix", "--format", "markdown"]) == 0
    assert capsys.readouterr().out.startswith("| # | hypervisor |")
    assert main(["matrix", "--compare", "kata-9.9"]) == 2


def test_matrix_host_plans_the_iommufd_device_alone() -> None:
    c = Combination(VfioMode.GUEST_KERNEL, PortKind.ROOT_PORT, PortKind.NO_PORT,
                    BlockDriver.VIRTIO_BLK, Hypervisor.QEMU, Mix.IOMMUFD_BLOCK,
                    ContainerType.CONTAINER)
    r: Result = next(x for x in RESULTS if x.combination == c)
    assert r.counts[Bucket.COLD_VFIO] == 1 and r.plan is not None
    assert len(r.plan.devices[0].functions) == 1
    assert plan is not None and matrix_host().has_iommu
