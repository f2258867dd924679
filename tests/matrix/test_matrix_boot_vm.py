"""``podplug matrix --boot seed``: the booted sample, for real under TCG (VFIO emulated)."""

from __future__ import annotations

import pytest

from podplug.cli import main
from tests.support import QEMU

pytestmark = pytest.mark.vm


def test_booted_sample_sees_every_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "--boot", "seed", "--qemu", QEMU]) == 0
    captured = capsys.readouterr()
    booted = [line for line in captured.out.splitlines() if "booted, guest saw" in line]
    assert len(booted) == 8, captured.err
    for line in booted:
        seen = line.split("booted, guest saw ")[1].split(",")[0]
        a, _, b = seen.partition(" of ")
        assert a == b, line
