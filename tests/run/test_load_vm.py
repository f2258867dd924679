"""Load (issue 11): four ``podplug run`` at once on one host, each with its own VM, all
pass and share nothing (no temporary directory, socket or QEMU between them); and a short
soak (the by-hand one is ``bench/soak.py --cycles 200``) in which nothing grows."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.soak import soak
from tests.support import QEMU, live_qemu, podplug_temp_entries

pytestmark = pytest.mark.vm

RUNS = 4


def test_four_runs_at_once_share_nothing_and_all_pass() -> None:
    before_dirs, before_qemu = podplug_temp_entries(), live_qemu()
    procs = [subprocess.Popen([sys.executable, "-m", "podplug.cli", "run", "--accel", "tcg",
                               "--qemu", QEMU],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(RUNS)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out
        assert "3 of 3 requested devices usable in the guest" in out
    demo_dirs = [re.search(r"sysfs \(stand-in\) in (\S+)/sys;", out) for out in outs]
    assert all(demo_dirs) and len({m.group(1) for m in demo_dirs if m}) == RUNS
    assert live_qemu() <= before_qemu
    assert podplug_temp_entries() <= before_dirs


def test_a_short_soak_grows_nothing() -> None:
    result = soak(cycles=12, every=4, qemu=QEMU)
    growth = result.growth()
    for counted in ("podplug fds", "qemu fds", "block nodes", "objects", "guest pci"):
        assert growth[counted] == 0, (counted, result.samples)
    assert len(result.samples) == 4
