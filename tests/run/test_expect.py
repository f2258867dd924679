"""The plan-versus-guest comparison (pure), fed with resolutions of the shape the agent's
``device`` verb returns; the real guest path is in test_entries_vm.py."""

from __future__ import annotations

from dataclasses import replace

from podplug.guest.protocol import (
    BRIDGE_MEM_WINDOW,
    BRIDGE_PREF_WINDOW,
    AgentReply,
    BarPeek,
    GuestBar,
    GuestPciDevice,
    Resolution,
    parse_bars,
    parse_resolution,
)
from podplug.host.volumes import VolumeFacts
from podplug.model.host import IORESOURCE_MEM, IORESOURCE_MEM_64, IORESOURCE_PREFETCH
from podplug.plan.model import DevicePlan
from podplug.plan.plan import plan
from podplug.run.expect import (
    FunctionSeen,
    VolumeSeen,
    expectations,
    guest_path_of,
    vfio_problems,
    volume_problems,
)
from tests.support import block, config, inventory, request, vfio_group

MEM64 = IORESOURCE_MEM | IORESOURCE_MEM_64
PREF = MEM64 | IORESOURCE_PREFETCH
HOST = inventory(1, 2, blocks=1)


def _gpu() -> DevicePlan:
    p = plan(config("vfio", cold="root-port"), request(vfio_group(12), block(0)), HOST)
    return next(d for d in p.devices if d.functions)


def _window(index: int, start: int, size: int) -> GuestBar:
    return GuestBar(index, start, start + size - 1, PREF if index == 15 else IORESOURCE_MEM)


WINDOWS = (_window(BRIDGE_MEM_WINDOW, 0xFE000000, 32 << 20),
           _window(BRIDGE_PREF_WINDOW, 0x1000000000, 128 << 30))


def _seen(bdf: str, bars: tuple[GuestBar, ...]) -> FunctionSeen:
    device = GuestPciDevice(bdf, 0x10DE, 0x2330 if bdf.endswith("0") else 0x22BA, 0x030200,
                            "vfio-pci", f"pci0000:00/0000:00:03.0/{bdf}")
    return FunctionSeen(device, None, bars, WINDOWS)


GOOD_BARS = {
    "0000:01:00.0": (GuestBar(0, 0xFE000000, 0xFE000000 + (16 << 20) - 1, IORESOURCE_MEM),
                     GuestBar(1, 0x1000000000, 0x1000000000 + (64 << 30) - 1, PREF)),
    "0000:01:00.1": (GuestBar(0, 0xFF000000, 0xFF000000 + (16 << 10) - 1, IORESOURCE_MEM),),
}
GOOD = Resolution("vfio-pci", "/run/podplug/ctr/dev/vfio/6", (226, 0), "", "6",
                  (("0000:41:00.0", "0000:01:00.0"), ("0000:41:00.1", "0000:01:00.1")),
                  viable=True, peeks=(BarPeek("0000:41:00.0", 1, bytes(range(16))),))


def _problems(resolution: Resolution, bars: dict[str, tuple[GuestBar, ...]]) -> list[str]:
    device = _gpu()
    assert device.agent is not None
    seen = {g: _seen(g, bars.get(g, ())) for _, g in resolution.functions}
    return vfio_problems(device, device.agent, resolution,
                         expectations(device, HOST, emulated=False), seen, {})


def test_a_faithful_resolution_has_no_problem() -> None:
    assert _problems(GOOD, GOOD_BARS) == []


def test_a_bar_reading_all_ones_fails_and_a_refused_read_does_not() -> None:
    dead = replace(GOOD, peeks=(BarPeek("0000:41:00.0", 1, b"\xff" * 16),))
    assert _problems(dead, GOOD_BARS) == [
        "/dev/vfio/12: 0000:41:00.0 BAR1 reads all ones in the guest (the function does not "
        "answer there)"]
    assert _problems(replace(GOOD, peeks=(BarPeek("0000:41:00.0", 1, None),)), GOOD_BARS) == []


def test_a_group_the_guest_did_not_find_viable_fails() -> None:
    assert _problems(replace(GOOD, viable=False), GOOD_BARS) == [
        "/dev/vfio/12: the guest did not find group 6 viable"]


def test_both_functions_at_function_zero_is_the_multifunction_bug() -> None:
    """What Kata's agent does with the old entries ``03/00`` twice: both host functions
    land on guest function 0."""
    both = replace(GOOD, functions=(("0000:41:00.0", "0000:01:00.0"),
                                    ("0000:41:00.1", "0000:01:00.0")))
    problems = _problems(both, GOOD_BARS)
    assert any("0000:41:00.0 and 0000:41:00.1 all resolved to guest 0000:01:00.0" in p
               for p in problems)
    assert any("0000:41:00.1 (guest 0000:01:00.0): at guest PCI path 03/00, planned 03/00.1"
               in p for p in problems)
    assert all(p.startswith("/dev/vfio/12: ") for p in problems)


def test_an_unassigned_bar_is_a_missing_window() -> None:
    unset = dict(GOOD_BARS)
    unset["0000:01:00.0"] = (GOOD_BARS["0000:01:00.0"][0],
                             GuestBar(1, 0, (64 << 30) - 1, PREF))
    (problem,) = _problems(GOOD, unset)
    assert "BAR1 (64 GiB prefetchable) not assigned: no window of the port above fits it" \
        in problem


def test_a_bar_outside_the_ports_windows_is_reported() -> None:
    moved = dict(GOOD_BARS)
    moved["0000:01:00.1"] = (GuestBar(0, 0x80000000, 0x80000000 + (16 << 10) - 1,
                                      IORESOURCE_MEM),)
    (problem,) = _problems(GOOD, moved)
    assert "BAR0 at 0x80000000 is outside the windows of the port above it" in problem


def test_a_bar_of_the_wrong_size_or_kind_is_reported() -> None:
    small = dict(GOOD_BARS)
    small["0000:01:00.0"] = (GOOD_BARS["0000:01:00.0"][0],
                             GuestBar(1, 0x1000000000, 0x1000000000 + (1 << 30) - 1, MEM64))
    problems = _problems(GOOD, small)
    assert any("BAR1 size 0x40000000, expected prefetchable 0x1000000000" in p
               for p in problems)
    assert any("BAR1 is not prefetchable, expected prefetchable" in p for p in problems)


def test_a_bar_the_guest_cleared_was_not_assigned() -> None:
    gone = dict(GOOD_BARS)
    gone["0000:01:00.0"] = GOOD_BARS["0000:01:00.0"][:1]
    (problem,) = _problems(GOOD, gone)
    assert "BAR1 (64 GiB prefetchable) not assigned: no window of the port above fits it" \
        in problem


def test_missing_function_and_group() -> None:
    one = replace(GOOD, functions=GOOD.functions[:1], group="", node="")
    problems = _problems(one, GOOD_BARS)
    assert any("the entry brought 0000:41:00.0, planned 0000:41:00.0, 0000:41:00.1" in p
               for p in problems)
    assert any("no guest IOMMU group node" in p for p in problems)


def test_emulated_stand_ins_must_carry_the_host_bdf() -> None:
    device = _gpu()
    assert device.agent is not None
    expected = expectations(device, HOST, emulated=True)
    assert [e.serial for e in expected] == ["0000:41:00.0", "0000:41:00.1"]
    seen = {g: replace(_seen(g, ()), serial="0000:41:00.1") for _, g in GOOD.functions}
    problems = vfio_problems(device, device.agent, GOOD, expected, seen, {})
    assert any("stand-in serial '0000:41:00.1', expected '0000:41:00.0'" in p for p in problems)


def test_guest_path_from_sysfs_ancestry() -> None:
    device = GuestPciDevice("0000:05:00.1", 1, 1, 1, None,
                            "pci0000:00/0000:00:04.0/0000:03:00.0/0000:04:01.0/0000:05:00.1")
    assert str(guest_path_of(device)) == "04/00/01/00.1"
    packed = replace(device, sysfs_path="pci0000:00/0000:00:04.2/0000:05:00.1")
    assert guest_path_of(packed) is None


def test_volume_resolving_to_another_disk_fails() -> None:
    p = plan(config("vfio", cold="root-port"), request(vfio_group(12), block(0)), HOST)
    volume = next(d for d in p.devices if d.blockdev is not None)
    assert volume.agent is not None
    resolution = Resolution("blk", "/run/podplug/ctr/dev/xda", (254, 16), "/dev/vdb")
    host = VolumeFacts("/images/disk0.img", 1 << 25, "aa", "bb", "", False)
    read = {"size": str(1 << 25), "head": "aa", "tail": "bb"}
    ok = VolumeSeen("blk0", read, {"write": "ok"}, {"readback": "ok"})
    assert volume_problems(volume, volume.agent, resolution, ok, host) == []
    assert volume_problems(volume, volume.agent, resolution, VolumeSeen("blk0", read),
                           host) == []  # the read-only proof alone
    other = replace(ok, serial="blk1")
    (problem,) = volume_problems(volume, volume.agent, resolution, other, host)
    assert "resolved to /dev/vdb, whose serial is 'blk1', not the planned device's 'blk0'" \
        in problem
    changed = replace(ok, ro={**read, "tail": "cc", "size": "512"})
    problems = volume_problems(volume, volume.agent, resolution, changed, host)
    assert any("is 512 bytes, the host volume /images/disk0.img 33554432" in p
               for p in problems)
    assert any("the last 4 KiB of /dev/vdb differ" in p for p in problems)


def test_parse_device_and_bars_replies() -> None:
    reply = AgentReply("r1", "device", "type=vfio-pci node=/run/podplug/ctr/dev/vfio/6 "
                       "devnum=243:0 group=6 map=0000:41:00.0>0000:02:00.0,"
                       "0000:41:00.1>0000:02:00.1")
    res = parse_resolution(reply)
    assert res.group == "6" and res.devnum == (243, 0)
    assert res.functions == (("0000:41:00.0", "0000:02:00.0"), ("0000:41:00.1", "0000:02:00.1"))
    bars = parse_bars(AgentReply("r2", "bars", "2", ("0 fe000000 fe003fff 140204",
                                                      "15 1000000000 13ffffffff 102201")))
    assert bars[0].size == 16 << 10 and bars[0].assigned
    assert bars[1].index == 15 and bars[1].contains(GuestBar(4, 0x1000000000, 0x1000000fff, 0))
