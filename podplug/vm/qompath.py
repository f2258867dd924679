"""Where QEMU actually put a device: Kata's guest PCI path, read back over QOM.

Kata does not trust its own plan after a hot-plug; ``qomGetPciPath`` in
``src/runtime/virtcontainers/qemu.go`` asks QEMU instead. This module does the same walk:

1. ``qom-get <device> addr``: the device's devfn on its bus (slot = ``addr >> 3``,
   function = ``addr & 7``);
2. ``qom-get <device> parent_bus``: the QOM path of that bus, e.g.
   ``/machine/peripheral/rp3/rp3`` (the bus of port ``rp3``) or ``/machine/q35/pcie.0``;
3. if the bus is the root bus (``^/machine/.*/pcie\\.0$``) stop; otherwise the bus's
   device is the bus path minus its last component (``/machine/peripheral/rp3``): read
   *its* ``addr`` and ``parent_bus`` and prepend its slot; at most 10 levels (Kata's bound).

The result is a :class:`~podplug.model.pci.GuestPciPath` (``"03/00"`` for slot 0 behind the
port at root slot 3; ``"04/00/01/00"`` behind switch downstream port 1; ``"05/03"`` at slot 3
of a pci-bridge at root slot 5; ``"03/00.1"`` for function 1 of the device behind root
slot 3, the agent's ``SlotFn`` form, see :mod:`podplug.model.pci`). The function of each
port or bridge on the way is kept too, though podplug's paths carry a function on the last
element only: two multifunction-packed root ports (``02.0`` and ``02.1``, QEMU
``docs/pcie.txt`` "Root Ports" advice) give the same path; :attr:`QomPlacement.notes` says so.

Measured with QEMU 7.2 (see the tests): ``addr`` is a QOM ``int32`` holding the devfn
(``0x8.3`` reads back as 67), not a ``"SS.F"`` string; ``parent_bus`` is an absolute QOM
path string. Pass absolute device paths: a bare id is a *partial* QOM path, which works for
endpoints but is rejected as ambiguous for a port or bridge (``rp1`` names both the device
and its bus ``/machine/peripheral/rp1/rp1``). Not expressible: devices behind a
``pxb-pcie`` (an extra root bus). Their chain ends at a bus such as
``/machine/unattached/device[26]/pxb1`` whose owner is the pxb's host bridge, which has no
``addr``; the walk reports that as a :class:`~podplug.errors.VmError` (Kata's path format has
no way to name another root bus).

The walk is pure over an injected ``qom_get(path, property)`` callable;
:func:`read_placement` is the one call that goes to QEMU.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from podplug.errors import PodplugError, QmpCommandError, VmError
from podplug.model.pci import GuestPciPath
from podplug.vm.qmp import Answer, QmpSession

QomGet = Callable[[str, str], object]

ROOT_BUS = re.compile(r"^/machine/.*/pcie\.0$")
MAX_DEPTH = 10


@dataclass(frozen=True)
class PciHop:
    """One device on the way from the root bus: its QOM path and its devfn on its bus."""

    qom_path: str
    bus: str  # QOM path of the bus the device sits on
    slot: int
    function: int


@dataclass(frozen=True)
class QomPlacement:
    """A device's position as QEMU reports it: root-bus hop first, the device itself last."""

    hops: tuple[PciHop, ...]

    @property
    def path(self) -> GuestPciPath:
        """The guest PCI path, with the device's own function on the last element."""
        return GuestPciPath(tuple(hop.slot for hop in self.hops), self.function)

    @property
    def function(self) -> int:
        """The device's own PCI function."""
        return self.hops[-1].function

    @property
    def notes(self) -> tuple[str, ...]:
        """Non-zero functions of the ports and bridges on the way, which podplug's paths
        (a function on the last element only) do not express."""
        return tuple(
            f"{hop.qom_path} is function {hop.function} of slot {hop.slot:02x} on {hop.bus}"
            for hop in self.hops[:-1]
            if hop.function != 0
        )

    def __str__(self) -> str:
        return str(self.path)


def device_qom_path(device: str) -> str:
    """``/machine/peripheral/<id>`` for a device id; absolute QOM paths pass through."""
    if not device:
        raise ValueError("empty device id")
    return device if device.startswith("/") else f"/machine/peripheral/{device}"


def _devfn(qom_get: QomGet, path: str) -> int:
    value = qom_get(path, "addr")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise VmError(f"qom-get {path} addr returned {value!r}, expected a devfn 0..255")
    return value


def _parent_bus(qom_get: QomGet, path: str) -> str:
    value = qom_get(path, "parent_bus")
    if not isinstance(value, str) or not value.startswith("/") or value.count("/") < 2:
        raise VmError(f"qom-get {path} parent_bus returned {value!r}, expected a QOM path")
    return value


def placement_from_qom(device: str, qom_get: QomGet, max_depth: int = MAX_DEPTH) -> QomPlacement:
    """Walk ``addr``/``parent_bus`` from ``device`` up to ``pcie.0`` (pure over ``qom_get``).

    ``device`` is an id (looked up under ``/machine/peripheral``) or an absolute QOM path.
    Errors of ``qom_get`` (e.g. ``QmpCommandError`` ``DeviceNotFound``) propagate.

    :raise VmError: a value has the wrong shape, or pcie.0 is not reached in ``max_depth``
    """
    hops: list[PciHop] = []
    path = device_qom_path(device)
    for _ in range(max_depth):
        try:
            devfn = _devfn(qom_get, path)
        except QmpCommandError as exc:
            if not hops:
                raise  # the device itself: DeviceNotFound and the like are the caller's
            raise VmError(
                f"{device}: bus {hops[-1].bus} is not a PCI bridge's bus below pcie.0 "
                f"({path}: {exc.desc}); an extra root bus such as pxb-pcie?"
            ) from exc
        bus = _parent_bus(qom_get, path)
        hops.append(PciHop(path, bus, devfn >> 3, devfn & 7))
        if ROOT_BUS.match(bus):
            return QomPlacement(tuple(reversed(hops)))
        path = bus.rsplit("/", 1)[0]
    raise VmError(
        f"{device}: no root bus pcie.0 within {max_depth} levels "
        f"(last bus {hops[-1].bus if hops else '?'})"
    )


def read_placement(qmp: QmpSession, device: str) -> QomPlacement:
    """Ask the running QEMU where ``device`` is (one ``qom-get`` pair per level)."""
    return placement_from_qom(device, lambda path, prop: qmp.qom_get(path, prop))


ExecuteMany = Callable[[Sequence[tuple[str, Mapping[str, object] | None]]], Sequence[Answer]]


def read_placements(execute_many: ExecuteMany, devices: Sequence[str],
                    ports: dict[tuple[str, str], object] | None = None,
                    ) -> dict[str, QomPlacement | PodplugError]:
    """Where each of ``devices`` is, read level by level with pipelined ``qom-get`` commands.

    The same walk as :func:`placement_from_qom`, run over a cache that is filled one level
    at a time: first ``addr`` and ``parent_bus`` of every device in one burst, then of every
    port or bridge those buses belong to that is not known yet, and so on. A port shared by
    many devices (a bridge with 30 volumes) is asked once, and no answer waits for another.
    Each device gets its placement, or the error :func:`placement_from_qom` would have
    raised for it. ``ports`` (kept by the caller for one VM's life) holds what was read of
    the ports and bridges on the way: they are the boot topology, cold-plugged, and never
    move, so the next batch asks only about its own devices.
    """
    known: dict[tuple[str, str], object] = dict(ports or {})
    wanted = [device_qom_path(d) for d in devices]
    for _ in range(MAX_DEPTH):
        asks = [(path, prop) for path in dict.fromkeys(wanted) for prop in ("addr", "parent_bus")
                if (path, prop) not in known]
        if not asks:
            break
        answers = execute_many([("qom-get", {"path": path, "property": prop})
                                for path, prop in asks])
        for ask, answer in zip(asks, answers, strict=True):
            known[ask] = answer.error if answer.error is not None else answer.value
        wanted = []
        for path, prop in asks:
            bus = known[(path, prop)]
            if prop == "parent_bus" and isinstance(bus, str) and bus.count("/") >= 2 \
                    and not ROOT_BUS.match(bus):
                wanted.append(bus.rsplit("/", 1)[0])

    def cached(path: str, prop: str) -> object:
        if (path, prop) not in known:  # deeper than MAX_DEPTH: the walk reports it
            raise VmError(f"qom-get {path} {prop}: not read (deeper than {MAX_DEPTH} levels)")
        value = known[(path, prop)]
        if isinstance(value, QmpCommandError):
            raise value
        return value

    if ports is not None:
        own = {device_qom_path(d) for d in devices}
        ports.update((key, value) for key, value in known.items()
                     if key[0] not in own and not isinstance(value, PodplugError))
    found: dict[str, QomPlacement | PodplugError] = {}
    for device in devices:
        try:
            found[device] = placement_from_qom(device, cached)
        except PodplugError as exc:
            found[device] = exc
    return found


__all__ = [
    "MAX_DEPTH",
    "ROOT_BUS",
    "PciHop",
    "QomGet",
    "QomPlacement",
    "device_qom_path",
    "placement_from_qom",
    "read_placement",
    "read_placements",
]
