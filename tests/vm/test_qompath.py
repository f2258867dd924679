"""The QOM walk of :mod:`podplug.vm.qompath`, over a dict fake of ``qom-get``.

The fake's values have the shapes QEMU 7.2 returned in the real runs (test_process_real.py):
``addr`` is an int devfn, ``parent_bus`` an absolute QOM path, a bus's owner is the bus path
minus its last component, and a root port behind a pxb-pcie sits on a bus owned by an
unattached ``pxb-host`` that has no ``addr``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from podplug.errors import QmpCommandError, VmError
from podplug.model.pci import GuestPciPath
from podplug.vm.qmp import Answer
from podplug.vm.qompath import (
    MAX_DEPTH,
    ROOT_BUS,
    PciHop,
    device_qom_path,
    placement_from_qom,
    read_placements,
)

ROOT = "/machine/q35/pcie.0"
P = "/machine/peripheral"


class FakeQom:
    """``{qom path: (addr, parent_bus)}`` -> a ``qom_get`` callable that records its calls.

    An ``addr`` of None stands for QEMU's "Property 'x.addr' not found".
    """

    def __init__(self, tree: Mapping[str, tuple[object, object]]) -> None:
        self.tree = tree
        self.calls: list[tuple[str, str]] = []

    def __call__(self, path: str, prop: str) -> object:
        self.calls.append((path, prop))
        if path not in self.tree:
            args = {"path": path, "property": prop}
            raise QmpCommandError("qom-get", args, "DeviceNotFound", f"Device '{path}' not found")
        addr, bus = self.tree[path]
        if prop == "addr":
            if addr is None:
                raise QmpCommandError("qom-get", {}, "GenericError", "Property 'x.addr' not found")
            return addr
        assert prop == "parent_bus", prop
        return bus


# The test topology of test_process_real.py, as QEMU reported it.
TOPOLOGY: dict[str, tuple[object, object]] = {
    f"{P}/rp1": (2 << 3, ROOT),
    f"{P}/rp3": (4 << 3, ROOT),
    f"{P}/up1": (0, f"{P}/rp3/rp3"),
    f"{P}/dn1": (0 << 3, f"{P}/up1/up1"),
    f"{P}/dn2": (1 << 3, f"{P}/up1/up1"),
    f"{P}/br1": (5 << 3, ROOT),
    f"{P}/d-rp": (0, f"{P}/rp1/rp1"),
    f"{P}/d-dn": (0, f"{P}/dn2/dn2"),
    f"{P}/d-br": (3 << 3, f"{P}/br1/br1"),
    f"{P}/d-fn": (67, f"{P}/br1/br1"),  # addr=0x8.0x3 read back as 67
}


@pytest.mark.parametrize(
    ("device", "expected"),
    [("d-rp", "02/00"), ("d-dn", "04/00/01/00"), ("d-br", "05/03"), ("d-fn", "05/08.3")],
)
def test_paths(device: str, expected: str) -> None:
    placement = placement_from_qom(device, FakeQom(TOPOLOGY))
    assert str(placement) == expected
    assert placement.path == GuestPciPath.parse(expected)


def test_hops_root_first_and_reads_absolute_paths() -> None:
    qom_get = FakeQom(TOPOLOGY)
    placement = placement_from_qom("d-dn", qom_get)
    assert placement.hops == (
        PciHop(f"{P}/rp3", ROOT, 4, 0),
        PciHop(f"{P}/up1", f"{P}/rp3/rp3", 0, 0),
        PciHop(f"{P}/dn2", f"{P}/up1/up1", 1, 0),
        PciHop(f"{P}/d-dn", f"{P}/dn2/dn2", 0, 0),
    )
    # never a bare (partial, possibly ambiguous) path
    assert all(path.startswith("/machine/") for path, _ in qom_get.calls)
    assert qom_get.calls[:2] == [(f"{P}/d-dn", "addr"), (f"{P}/d-dn", "parent_bus")]


def test_the_device_function_is_part_of_the_path() -> None:
    placement = placement_from_qom("d-fn", FakeQom(TOPOLOGY))
    assert placement.function == 3
    assert placement.path == GuestPciPath((5, 8), 3)
    assert placement.notes == ()  # the device's own function is expressed, not noted
    assert placement_from_qom("d-rp", FakeQom(TOPOLOGY)).notes == ()


def test_multifunction_root_ports_share_a_path_and_are_noted() -> None:
    tree = {
        f"{P}/rpa": ((6 << 3) | 0, ROOT),
        f"{P}/rpb": ((6 << 3) | 1, ROOT),
        f"{P}/x": (0, f"{P}/rpa/rpa"),
        f"{P}/y": (0, f"{P}/rpb/rpb"),
    }
    x, y = placement_from_qom("x", FakeQom(tree)), placement_from_qom("y", FakeQom(tree))
    assert str(x) == str(y) == "06/00"
    assert x.notes == () and "function 1" in y.notes[0]


def test_absolute_path_passes_through() -> None:
    tree = {"/machine/unattached/device[7]": (3 << 3, ROOT)}
    assert str(placement_from_qom("/machine/unattached/device[7]", FakeQom(tree))) == "03"
    assert device_qom_path("d1") == f"{P}/d1"
    with pytest.raises(ValueError):
        device_qom_path("")


def test_unknown_device_error_propagates() -> None:
    with pytest.raises(QmpCommandError) as info:
        placement_from_qom("ghost", FakeQom(TOPOLOGY))
    assert info.value.error_class == "DeviceNotFound"


def test_pxb_root_bus_is_a_clear_error() -> None:
    tree = {
        f"{P}/prx": (0, "/machine/unattached/device[26]/pxb1"),
        "/machine/unattached/device[26]": (None, "/machine/unattached/sysbus"),
        f"{P}/d": (0, f"{P}/prx/prx"),
    }
    with pytest.raises(VmError, match="pxb-pcie") as info:
        placement_from_qom("d", FakeQom(tree))
    assert isinstance(info.value.__cause__, QmpCommandError)


def test_depth_is_bounded() -> None:
    # a bus loop: a -> b -> a ... never reaches pcie.0
    tree = {f"{P}/a": (8, f"{P}/b/b"), f"{P}/b": (8, f"{P}/a/a")}
    qom_get = FakeQom(tree)
    with pytest.raises(VmError, match=f"within {MAX_DEPTH} levels"):
        placement_from_qom("a", qom_get)
    assert len(qom_get.calls) == 2 * MAX_DEPTH


@pytest.mark.parametrize("addr", ["00.0", "0x10", True, -1, 256, None, 1.0])
def test_bad_addr_values(addr: object) -> None:
    tree: dict[str, tuple[object, object]] = {f"{P}/d": (addr, ROOT)}
    if addr is None:  # the fake turns None into "property not found" on the device itself
        with pytest.raises(QmpCommandError):
            placement_from_qom("d", FakeQom(tree))
        return
    with pytest.raises(VmError, match="addr returned"):
        placement_from_qom("d", FakeQom(tree))


@pytest.mark.parametrize("bus", [None, "", "pcie.0", "/", 7])
def test_bad_parent_bus_values(bus: object) -> None:
    with pytest.raises(VmError, match="parent_bus returned"):
        placement_from_qom("d", FakeQom({f"{P}/d": (0, bus)}))


@pytest.mark.parametrize(
    ("bus", "is_root"),
    [
        ("/machine/q35/pcie.0", True),
        ("/machine/unattached/device[3]/pcie.0", True),
        ("/machine/peripheral/rp1/rp1", False),
        ("/machine/i440fx/pci.0", False),
        ("/machine/q35/pcie.00", False),
        ("pcie.0", False),
    ],
)
def test_root_bus_pattern(bus: str, is_root: bool) -> None:
    assert bool(ROOT_BUS.match(bus)) is is_root


class FakeBatches:
    """``execute_many`` over :class:`FakeQom`: records each burst of ``qom-get`` commands."""

    def __init__(self, tree: Mapping[str, tuple[object, object]]) -> None:
        self.qom = FakeQom(tree)
        self.bursts: list[list[tuple[str, str]]] = []

    def __call__(self, commands: Sequence[tuple[str, Mapping[str, object] | None]]
                 ) -> list[Answer]:
        burst, answers = [], []
        for command, args in commands:
            assert command == "qom-get" and args is not None
            path, prop = str(args["path"]), str(args["property"])
            burst.append((path, prop))
            try:
                value: object = self.qom(path, prop)
            except QmpCommandError as exc:
                value = exc
            answers.append(Answer(command, value, 0.0))
        self.bursts.append(burst)
        return answers


def test_batched_read_back_matches_the_walk_and_asks_each_port_once() -> None:
    devices = ["d-rp", "d-dn", "d-br", "d-fn"]
    batches = FakeBatches(TOPOLOGY)
    found = read_placements(batches, devices)
    for device in devices:
        assert found[device] == placement_from_qom(device, FakeQom(TOPOLOGY))
    asked = [ask for burst in batches.bursts for ask in burst]
    assert len(asked) == len(set(asked))  # br1 serves two devices, asked once
    assert len(batches.bursts) == 4  # devices; rp1, dn2, br1; up1; rp3 (depth, not count)
    assert batches.bursts[0] == [(f"{P}/{d}", p) for d in devices for p in ("addr", "parent_bus")]


def test_batched_read_back_gives_each_device_its_own_error() -> None:
    found = read_placements(FakeBatches(TOPOLOGY), ["ghost", "d-br"])
    assert isinstance(found["ghost"], QmpCommandError)
    assert found["ghost"].error_class == "DeviceNotFound"
    assert str(found["d-br"]) == "05/03"


def test_batched_read_back_is_bounded_in_depth() -> None:
    tree = {f"{P}/a": (8, f"{P}/b/b"), f"{P}/b": (8, f"{P}/a/a")}
    batches = FakeBatches(tree)
    (error,) = read_placements(batches, ["a"]).values()
    assert isinstance(error, VmError)
    assert len(batches.bursts) <= 2  # a loop of two is cached after two bursts


def test_the_ports_read_once_are_not_asked_again() -> None:
    """The boot topology's ports never move: a second batch asks only about its devices."""
    ports: dict[tuple[str, str], object] = {}
    first = FakeBatches(TOPOLOGY)
    read_placements(first, ["d-dn"], ports)
    assert (f"{P}/rp3", "addr") in ports and (f"{P}/d-dn", "addr") not in ports
    second = FakeBatches(TOPOLOGY)
    found = read_placements(second, ["d-dn"], ports)
    assert str(found["d-dn"]) == "04/00/01/00"
    assert second.bursts == [[(f"{P}/d-dn", "addr"), (f"{P}/d-dn", "parent_bus")]]
