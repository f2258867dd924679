"""A batch of volumes goes in pipelined (:func:`podplug.vm.hotplug.carry_batch`) and comes
out exactly: every volume visible in the guest with its own serial, found by one
``wait-blks`` call, and all gone after one pipelined unplug; a refusal in the middle of
the burst undoes every step that went in, those after it included (real QEMU, real
guest)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from podplug.guest.agent_client import AgentClient
from podplug.guest.protocol import parse_lspci
from podplug.image.build import build_image
from podplug.plan.model import Plan
from podplug.plan.sequence import StepKind, hot_devices, unplug_steps
from podplug.run.session import guest_argv
from podplug.vm.hotplug import BatchFailed, carry_batch, unplug_batch
from podplug.vm.process import Accel, Vm
from tests.support import QEMU, scratch_volumes

pytestmark = pytest.mark.vm

COUNT = 8


@contextmanager
def _vm(p: Plan, tmp: str) -> Iterator[tuple[Vm, AgentClient]]:
    sock = Path(tmp) / "agent.sock"
    argv = guest_argv(p, build_image(), sock, device=None, memory_mib=512, accel=Accel.TCG)
    with Vm(argv, accel=Accel.TCG, qemu_binary=QEMU, tmp_parent=tmp) as vm, \
            AgentClient.connect(sock) as agent:
        agent.wait_ready(60.0)
        yield vm, agent


def _held(vm: Vm) -> tuple[set[str], set[str]]:
    """The block nodes and hot devices QEMU holds (node names, device ids)."""
    nodes = vm.execute("query-named-block-nodes")
    assert isinstance(nodes, list)
    devices = vm.execute("qom-list", {"path": "/machine/peripheral"})
    assert isinstance(devices, list)
    return ({str(n.get("node-name")) for n in nodes},
            {str(d["name"]) for d in devices if str(d.get("type", "")).startswith("child<")})


def test_a_batch_is_plugged_at_once_and_every_volume_is_seen(tmp_path: Path) -> None:
    p, steps = scratch_volumes(tmp_path, COUNT)
    hot = hot_devices(p)
    with tempfile.TemporaryDirectory(prefix="podplug-t-") as tmp, _vm(p, tmp) as (vm, agent):
        before = _held(vm)
        results = carry_batch(vm, steps)
        assert [r.step for r in results] == steps
        paths = [str(d.guest_paths[0]) for d in hot]
        assert [str(r.actual_path) for r in results if r.actual_path] == paths
        seen = agent.call("wait-blks", "20000", *paths, timeout=40.0)
        found = dict(line.split() for line in seen.lines)
        assert sorted(found) == sorted(paths) and len(set(found.values())) == COUNT
        for device in hot:  # each disk is its own volume: the serial QEMU was given
            disk = found[str(device.guest_paths[0])]
            assert device.qemu is not None
            want = dict(device.qemu.props)["serial"]
            assert agent.call("serial", disk).fields["serial"] == want
        out = unplug_batch(vm, unplug_steps(hot))
        assert sorted(r.step.subject for r in out) == sorted(s.subject for s in unplug_steps(hot))
        assert _held(vm) == before
        left = {(d.vendor, d.device) for d in parse_lspci(agent.call("lspci"))}
        assert (0x1AF4, 0x1001) not in left  # no virtio-blk function in the guest


def test_a_refusal_mid_burst_undoes_everything_that_went_in(tmp_path: Path) -> None:
    p, steps = scratch_volumes(tmp_path, 4)
    at = next(i for i, s in enumerate(steps)
              if s.kind is StepKind.BLOCKDEV_ADD and s.subject == "drive-blk2")
    steps[at] = replace(steps[at], arguments={**steps[at].arguments, "driver": "no-such"})
    with tempfile.TemporaryDirectory(prefix="podplug-t-") as tmp, _vm(p, tmp) as (vm, agent):
        before = _held(vm)
        with pytest.raises(BatchFailed) as err:
            carry_batch(vm, steps)
        assert err.value.subject == "drive-blk2" and err.value.rollback_errors == ()
        # blk2's device_add failed too (no drive), blk3 went in after the refusal: undone
        assert _held(vm) == before
        assert agent.call("lspci").lines  # the guest still answers
