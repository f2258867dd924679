"""Ctrl-C during ``podplug run`` (a real VM mid-boot) leaves no QEMU process and no
temporary directory, and exits 130; ``--keep-running`` ends on Ctrl-C the same way."""

from __future__ import annotations

import signal
import time

import pytest

from tests.support import live_qemu, podplug_temp_entries, run_cli_until

pytestmark = pytest.mark.vm


@pytest.mark.parametrize(("marker", "extra"), [("booting VM", ()),
                                               ("keeping the VM running", ("--keep-running",))])
def test_ctrl_c_cleans_up(marker: str, extra: tuple[str, ...]) -> None:
    before_dirs, before_qemu = podplug_temp_entries(), live_qemu()
    proc, seen = run_cli_until(marker, *extra)
    assert any(marker in line for line in seen), "".join(seen)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    text = "".join(seen) + out
    if extra:
        assert proc.returncode == 0, text  # kept running, then unplugged and reported
        assert "3 of 3 requested devices usable" in text
    else:
        assert proc.returncode == 130, text
        assert "interrupted" in text
    assert live_qemu() <= before_qemu
    assert podplug_temp_entries() <= before_dirs


PHASE_MARKERS = {  # the progress line after which the signal is sent -> the phase it hits
    "boot": "booting VM",
    "read-back and hot-plug": "guest agent ready",
    "hot-plug batch": "hot-plugging",
    "proof": "OK   /dev/vfio/12",
    "unplug": "OK   /dev/vfio/vfio",
    "shutdown": "unplugged",
}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("phase", list(PHASE_MARKERS))
def test_a_signal_in_any_phase_cleans_up(signum: int, phase: str) -> None:
    """SIGTERM's default action would skip every cleanup; podplug turns it (and SIGINT)
    into an orderly stop: exit 128 + signal, nothing left."""
    before_dirs, before_qemu = podplug_temp_entries(), live_qemu()
    proc, seen = run_cli_until(PHASE_MARKERS[phase])
    assert any(PHASE_MARKERS[phase] in line for line in seen), "".join(seen)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    text = "".join(seen) + out
    assert proc.returncode == 128 + signum, text
    assert f"interrupted by {signal.Signals(signum).name}" in text
    assert live_qemu() <= before_qemu
    assert podplug_temp_entries() <= before_dirs
