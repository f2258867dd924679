"""``podplug matrix --boot seed``: the booted sample, for real under TCG (VFIO emulated)."""

from __future__ import annotations

import pytest

from podplug.cli import main
from tests.support import QEMU

pytestmark = pytest.mark.vm


def test_booted_sample_sees_every_device(capsys: pytest.CaptureFixture[str]) -> None:
    # vfio mode with the group on the PCI bridge beside the virtio-blk volume: one guest
    # IOMMU group holds both, not viable, so the guest proves 1 of 2 (see test_run_vm.py)
    code = main(["matrix", "--boot", "seed", "--qemu", QEMU])
    captured = capsys.readouterr()
    booted = [line for line in captured.out.splitlines() if "booted, guest saw" in line]
    assert len(booted) == 10, captured.err  # 8 of the seed's mix, 2 with vhost-user-blk
    shared = 0
    for line in booted:
        seen = line.split("booted, guest saw ")[1].split(",")[0]
        a, _, b = seen.partition(" of ")
        words = line.split()
        if words[2] == "vfio" and "bridge-port" in words[3:5] and words[5] == "virtio-blk":
            shared += 1
            assert (a, b) == ("1", "2"), line
        else:
            assert a == b, line
    assert shared == 2 and code == 1
