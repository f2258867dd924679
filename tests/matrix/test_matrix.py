"""``podplug matrix``: the whole plan-only matrix, the upstream comparisons, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from podplug.cli import main
from podplug.matrix.boot import choose
from podplug.matrix.check import (
    Combination,
    Mix,
    Outcome,
    Result,
    defects,
    matrix_host,
    request_for,
    run_matrix,
)
from podplug.matrix.compare import losses
from podplug.matrix.kata_models import KataEra
from podplug.model.enums import (
    BlockDriver,
    Bucket,
    ContainerType,
    Hypervisor,
    PortKind,
    VfioMode,
)
from podplug.plan.plan import plan

RESULTS = run_matrix()
HAS_BLOCK = {Mix.BLOCK, Mix.VFIO_BLOCK, Mix.TWO_FUNCTION_TWO_BLOCKS, Mix.IOMMUFD_BLOCK}
HAS_VFIO = {Mix.VFIO, Mix.VFIO_BLOCK, Mix.TWO_FUNCTION_TWO_BLOCKS, Mix.IOMMUFD_BLOCK}


def test_every_combination_is_enumerated_and_none_is_a_defect() -> None:
    assert len(RESULTS) == 2 * 4 * 4 * 2 * 2 * len(Mix) * len(ContainerType)
    assert len({r.combination for r in RESULTS}) == len(RESULTS)
    assert [r for r in RESULTS if r.outcome is Outcome.DEFECT] == []


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


def _expected_3_16(c: Combination) -> bool:
    if c.cold is PortKind.NO_PORT or c.hot is not PortKind.NO_PORT:
        return False
    if c.vfio_mode is VfioMode.VFIO:  # the cold list alone, even when it is empty (#11288)
        return c.mix in HAS_BLOCK
    return c.mix in HAS_VFIO and c.container is ContainerType.CONTAINER


@pytest.mark.parametrize(("era", "expected"), [
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
        if lost and r.combination.vfio_mode is VfioMode.VFIO:
            assert "/dev/xda" in lost  # the seed: the raw block volume


def test_boot_sample_covers_seed_drivers_and_ports() -> None:
    chosen = [RESULTS[i].combination for i in choose(RESULTS, "seed")]
    seed = {(c.vfio_mode, c.cold) for c in chosen if c.hot is PortKind.NO_PORT}
    assert {(VfioMode.VFIO, PortKind.ROOT_PORT), (VfioMode.VFIO, PortKind.SWITCH_PORT),
            (VfioMode.VFIO, PortKind.BRIDGE_PORT),
            (VfioMode.GUEST_KERNEL, PortKind.ROOT_PORT)} <= seed
    assert {c.driver for c in chosen} == set(BlockDriver)
    assert {c.hot for c in chosen} - {PortKind.NO_PORT} == {
        PortKind.ROOT_PORT, PortKind.SWITCH_PORT, PortKind.BRIDGE_PORT}
    with pytest.raises(ValueError, match="not bootable"):
        choose(RESULTS, "1535")


def test_cli_matrix_formats_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "--compare", "kata-3.16"]) == 0
    out = capsys.readouterr().out
    assert "1536 combinations: 408 planned, 1128 rejected, 0 defects" in out
    assert "kata-3.14-3.16: loses devices podplug delivers in" in out
    assert main(["matrix", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["combinations"]) == 1536
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
