"""Real VFIO, by nesting: podplug inside L1 (a guest with VT-d) passes real vfio-pci groups to
L2 and proves them there through the agent entries (:mod:`tests.nested.harness`).

Each selected case (:func:`tests.nested.cases.selected`) gets its own L1 boot and one L2
boot; the tests below judge what came out. What only nesting shows: a real ``vfio-pci`` bind
and ``/dev/vfio/<group>`` open in L1, the GPU-shaped slot's two functions in one real IOMMU
group, real BAR assignment of passed-through functions in L2's planned windows, the guest
group's viability, and L2 reading, through the 4 GiB BAR, the bytes L0 wrote there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nested.cases import selected
from tests.nested.harness import GPU_MARK, L1Result, podplug_kernel, run_l1
from tests.support import live_qemu

pytestmark = [pytest.mark.vm, pytest.mark.nested]
CASES = {str(c["name"]): c for c in selected(os.environ.get("PODPLUG_NESTED_CASES", ""))}


@pytest.fixture(scope="module")
def l1() -> Iterator[L1Result]:
    """One L1 boot per case (8 s each; measured: a second ``podplug run`` in the same L1,
    right after a first, exited without a report, so cases do not share an L1), merged."""
    merged: L1Result | None = None
    for case in CASES.values():
        work = Path(tempfile.mkdtemp(prefix="podplug-nested-"))
        try:
            result = run_l1(work, podplug_kernel(work), [dict(case)], progress=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        assert live_qemu(os.getpid()) == set(), "L1 left running"
        assert not work.exists()
        if merged is None:
            merged = result
        else:
            merged.cases.update(result.cases)
            merged.timeline += result.timeline
    assert merged is not None
    yield merged


def _report(result: L1Result, name: str) -> tuple[dict[str, object], dict[str, dict]]:
    case = result.cases.get(name)
    assert case is not None, (f"case {name} did not run; L1 rc {result.rc}, "
                              f"timeline {result.timeline}\n{result.output[-3000:]}")
    assert str(case["stdout"]).startswith("{"), (
        f"{name}: podplug exited {case['rc']} without a report\n{case['stderr']}")
    report = json.loads(str(case["stdout"]))
    rows = {str(r["path"]): r for r in report["devices"]}
    return report, rows


def test_l1_has_a_real_gpu_shaped_group_and_a_single_function(l1: L1Result) -> None:
    facts = l1.facts
    groups, drivers, members = facts["groups"], facts["drivers"], facts["members"]
    assert isinstance(groups, dict) and isinstance(drivers, dict) and isinstance(members, dict)
    assert groups["gpu0"] == groups["gpu1"] != groups["single"]
    assert set(drivers.values()) == {"vfio-pci"}
    assert len(members[groups["gpu0"]]) == 2 and len(members[groups["single"]]) == 1


@pytest.mark.parametrize("name", list(CASES))
def test_each_case_is_proven_in_l2_through_real_vfio(l1: L1Result, name: str) -> None:
    case, facts = CASES[name], l1.facts
    ran = l1.cases.get(name, {})
    report, rows = _report(l1, name)
    assert report["emulated_vfio"] is False and report["accel"] == "tcg"
    spec = ran["spec"]
    assert set(rows) == {d["path"] for d in spec["linux"]["devices"]}
    functions, groups = facts["functions"], facts["groups"]
    assert isinstance(functions, dict) and isinstance(groups, dict)
    hot_ids = [r for r in rows.values() if r["bucket"] == "hot-vfio"]
    assert bool(hot_ids) is bool(case["hot"]), [r["bucket"] for r in rows.values()]
    if "gpu0" in case["functions"]:
        gpu = rows[f"/dev/vfio/{groups['gpu0']}"]
        # conventional PCI in L1 (256-byte config space): Kata's IsPCIeDevice -> the bridge
        assert "pci-bridge" in str(gpu["qemu"]), gpu["qemu"]
        if case["viable"]:
            assert gpu["usable"] is True, gpu["error"]
            resolved = gpu["resolved"]
            assert set(resolved) == {functions["gpu0"], functions["gpu1"]}
            assert len(set(resolved.values())) == 2, resolved  # distinct guest functions
            assert "viable" in gpu["check"] and "BARs in their windows" in gpu["check"]
            assert bytes.fromhex(gpu["peeks"][functions["gpu0"]]["2"]) == GPU_MARK[:16]
        else:  # the volume shares the bridge, so the guest group
            assert gpu["usable"] is False
            assert "is not viable" in gpu["error"] and "virtio-pci" in gpu["error"], gpu
    if "single" in case["functions"]:
        single = rows[f"/dev/vfio/{groups['single']}"]
        assert single["usable"] is True, single["error"]
        assert "pci-bridge" not in str(single["qemu"])  # PCIe: a port, as configured
    if case["volume"]:
        assert rows["/dev/xda"]["usable"] is True and rows["/dev/xda"]["bucket"] == "hot-block"
    assert ran["rc"] == (0 if case["viable"] else 7), ran["stderr"]
    if case["hot"]:
        assert "unplug" in report["timings"]
        hot = sum(1 for r in rows.values() if r["bucket"] in ("hot-vfio", "hot-block"))
        assert f"unplugged {hot} device(s)" in str(ran["stderr"])
