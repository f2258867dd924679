"""The hot-plug executor's error paths, against a recording fake VM (the real path is in
test_run_vm.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import pytest

from podplug.errors import QmpCommandError
from podplug.model.pci import GuestPciPath
from podplug.plan.plan import plan
from podplug.plan.sequence import hot_devices, plug_steps
from podplug.vm import hotplug
from podplug.vm.hotplug import BatchFailed, carry_batch
from podplug.vm.qmp import Answer, QmpEvent
from podplug.vm.qompath import PciHop, QomPlacement
from tests.support import block, config, inventory, request, vfio_group


class _Watch:
    def __init__(self, vm: FakeVm, match: Callable[[QmpEvent], bool] | None) -> None:
        self.vm, self.match = vm, match

    def __enter__(self) -> _Watch:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        return None

    def wait(self, timeout: float, subject: str = "") -> QmpEvent:
        event = self.vm.events.pop(0)
        assert self.match is None or self.match(event)
        return event


class FakeVm:
    """Records QMP commands; fails the command named in ``fail``; emits DEVICE_DELETED."""

    def __init__(self, fail: str = "") -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail
        self.events: list[QmpEvent] = []
        self.slot_mates: dict[str, tuple[str, ...]] = {}
        self.port_placements: dict[tuple[str, str], object] = {}
        self.qmp = self

    def execute(self, command: str, arguments: Mapping[str, object] | None = None,
                timeout: float = 0) -> object:
        args = dict(arguments or {})
        self.sent.append((command, args))
        if f"{command} {args.get('id', args.get('node-name'))}" == self.fail:
            raise QmpCommandError(command, args, "GenericError", "injected")
        if command == "device_del":  # QEMU takes a slot's other functions with function 0
            for gone in (args["id"], *self.slot_mates.get(str(args["id"]), ())):
                self.events.append(QmpEvent("DEVICE_DELETED", {"device": gone}))
        return {}

    def execute_many(self, commands: Sequence[tuple[str, Mapping[str, object] | None]],
                     timeout: float = 0) -> list[Answer]:
        """As QEMU answers a pipelined batch: every command runs, in order."""
        answers = []
        for command, arguments in commands:
            try:
                value = self.execute(command, arguments)
            except QmpCommandError as exc:
                value = exc
            answers.append(Answer(command, value, 0.001 * (len(answers) + 1)))
        return answers

    def watch(self, *names: str, match: Callable[[QmpEvent], bool] | None = None) -> _Watch:
        return _Watch(self, match)


def _placing(monkeypatch: pytest.MonkeyPatch, where: Callable[[object, str], QomPlacement]
             ) -> None:
    """Make the executor's placement read-backs answer with ``where``."""
    monkeypatch.setattr(hotplug, "read_placement", where)
    monkeypatch.setattr(hotplug, "read_placements",
                        lambda execute_many, devices, *ports: {d: where(None, d) for d in devices})


def _steps():  # type: ignore[no-untyped-def]
    p = plan(config("vfio", hot="root-port"), request(vfio_group(12), block(0)),
             inventory(1, 2, blocks=1))
    return plug_steps(hot_devices(p))


def _place(path: str) -> Callable[[object, str], QomPlacement]:
    where = GuestPciPath.parse(path)
    functions = [0] * (len(where.slots) - 1) + [where.function]
    return lambda qmp, dev: QomPlacement(tuple(
        PciHop("x", "y", s, f) for s, f in zip(where.slots, functions, strict=True)))


def _as_planned(qmp: object, dev: str) -> QomPlacement:
    """Where QEMU puts each device when it follows the plan: the two functions of the VFIO
    slot at 03/00 and 03/00.1 (the id ends in the host function), the volume at 02/01."""
    if dev.startswith("vfio"):
        return _place("03/00" + ("" if dev.endswith("0") else "." + dev[-1]))(qmp, dev)
    return _place("02/01")(qmp, dev)


def test_failed_step_rolls_back_everything_done(monkeypatch: pytest.MonkeyPatch) -> None:
    _placing(monkeypatch, _as_planned)
    vm = FakeVm(fail="device_add blk0")
    with pytest.raises(BatchFailed) as err:
        carry_batch(vm, _steps())  # type: ignore[arg-type]
    assert "device_add blk0" in str(err.value) and "rolled back" in str(err.value)
    assert [(c, a.get("id", a.get("node-name"))) for c, a in vm.sent] == [
        ("device_add", "vfio-0000-41-00-1"), ("device_add", "vfio-0000-41-00-0"),
        ("blockdev-add", "drive-blk0"), ("device_add", "blk0"),
        ("blockdev-del", "drive-blk0"), ("device_del", "vfio-0000-41-00-0"),
        ("device_del", "vfio-0000-41-00-1"),
    ]


def test_placement_mismatch_is_an_error_and_the_device_comes_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _placing(monkeypatch, _place("05/00"))
    vm = FakeVm()
    with pytest.raises(BatchFailed) as err:
        carry_batch(vm, _steps())  # type: ignore[arg-type]
    assert "planned at guest PCI path 03/00.1, QEMU put it at 05/00" in str(err.value)
    assert vm.sent[-1] == ("device_del", {"id": "vfio-0000-41-00-1"})


def test_all_good_returns_actual_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    _placing(monkeypatch, _as_planned)
    results = carry_batch(FakeVm(), _steps())  # type: ignore[arg-type]
    assert [str(r.actual_path) for r in results] == ["03/00.1", "03/00", "None", "02/01"]


def test_function_one_landing_at_function_zero_is_a_mismatch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _placing(monkeypatch, _place("03/00"))
    with pytest.raises(BatchFailed) as err:
        carry_batch(FakeVm(), _steps())  # type: ignore[arg-type]
    assert "planned at guest PCI path 03/00.1, QEMU put it at 03/00" in str(err.value)


def test_a_refused_step_mid_batch_undoes_the_steps_after_it_that_went_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelined, QEMU runs every command of the burst: what went in after the refusal is
    undone too, and the error names the refused step."""
    _placing(monkeypatch, _as_planned)
    vm = FakeVm(fail="blockdev-add drive-blk0")
    with pytest.raises(BatchFailed) as err:
        carry_batch(vm, _steps())  # type: ignore[arg-type]
    assert "blockdev-add drive-blk0" in str(err.value)
    assert [(c, a.get("id", a.get("node-name"))) for c, a in vm.sent][4:] == [
        ("device_del", "blk0"), ("device_del", "vfio-0000-41-00-0"),
        ("device_del", "vfio-0000-41-00-1"),
    ]


def test_a_placement_that_cannot_be_read_names_its_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(qmp: object, dev: str) -> QomPlacement:
        if dev == "blk0":
            raise QmpCommandError("qom-get", {}, "DeviceNotFound", "gone")
        return _as_planned(qmp, dev)

    monkeypatch.setattr(hotplug, "read_placements", lambda execute_many, devices, *ports: {
        d: _or_error(unreadable, d) for d in devices})
    vm = FakeVm()
    with pytest.raises(BatchFailed) as err:
        carry_batch(vm, _steps())  # type: ignore[arg-type]
    assert err.value.subject == "blk0" and "gone" in str(err.value)
    assert ("device_del", {"id": "blk0"}) in vm.sent


def _or_error(where: Callable[[object, str], QomPlacement], dev: str
              ) -> QomPlacement | QmpCommandError:
    try:
        return where(None, dev)
    except QmpCommandError as exc:
        return exc


def test_unplug_batch_sends_every_device_del_then_the_node_deletes() -> None:
    """All device_dels in one burst, every DEVICE_DELETED awaited, then the blockdev-dels:
    no node is deleted while a device may still use it."""
    from podplug.plan.sequence import unplug_steps
    from podplug.vm.hotplug import unplug_batch

    p = plan(config("vfio", hot="root-port"), request(vfio_group(12), block(0)),
             inventory(1, 2, blocks=1))
    vm = FakeVm()
    vm.slot_mates = {"vfio-0000-41-00-0": ("vfio-0000-41-00-1",)}
    results = unplug_batch(vm, unplug_steps(hot_devices(p)))  # type: ignore[arg-type]
    sent = [(c, a.get("id", a.get("node-name"))) for c, a in vm.sent]
    dels = [i for c, i in sent if c == "device_del"]
    assert sorted(dels) == ["blk0", "vfio-0000-41-00-0"]  # unplug_steps order, one burst
    assert sent.index(("blockdev-del", "drive-blk0")) > max(
        sent.index(("device_del", i)) for i in dels)
    assert {r.step.subject for r in results} == {"vfio-0000-41-00-0", "blk0", "drive-blk0"}
    assert vm.events == []  # every event it caused was consumed


def test_unplug_batch_passes_on_a_refusal() -> None:
    from podplug.plan.sequence import unplug_steps
    from podplug.vm.hotplug import unplug_batch

    p = plan(config("vfio", hot="root-port"), request(block(0)), inventory(0, 0, blocks=1))
    with pytest.raises(QmpCommandError):
        unplug_batch(FakeVm(fail="device_del blk0"), unplug_steps(hot_devices(p)))  # type: ignore[arg-type]
