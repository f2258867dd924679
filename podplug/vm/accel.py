"""Choosing the accelerator: never KVM because ``/dev/kvm`` exists.

On this project's machines ``/dev/kvm`` opens (a software KVM, kvm_pvm) but stock guests crash
or crawl (research ``qemu-recipe.md``, "KVM on this machine"). ``--accel auto`` therefore
asks for ``vmx``/``svm`` and a short firmware probe under KVM, and falls back to TCG saying why.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from podplug.errors import VmError
from podplug.vm.process import DEFAULT_QEMU, Accel, Vm

#: SeaBIOS's last words when it finds nothing to boot, on its debug port 0x402.
SEABIOS_END = b"No bootable device."
#: From ``cont``, SeaBIOS reaches SEABIOS_END in 0.09 s under TCG on the 2-core machine kind
#: (3 runs); a usable KVM is faster still; the broken kvm_pvm KVM there needs 3.4-3.6 s.
FIRMWARE_DEADLINE_S = 1.5


def choose_accel(requested: Accel, probe: Callable[[], bool]) -> tuple[Accel, str]:
    """The accelerator to pass to :class:`Vm`, and a note saying why.

    TCG and KVM are taken as asked (an explicit KVM is not probed). AUTO picks KVM only if
    ``probe()`` returns True; ``False`` or a :class:`~podplug.errors.VmError` (whose message
    is kept in the note) falls back to TCG. The presence of ``/dev/kvm`` is never a reason.
    """
    if requested is Accel.TCG:
        return Accel.TCG, "TCG requested"
    if requested is Accel.KVM:
        return Accel.KVM, "KVM requested explicitly (not probed)"
    try:
        usable = probe()
    except VmError as exc:
        return Accel.TCG, f"AUTO: KVM probe failed ({exc}); using TCG"
    if usable:
        return Accel.KVM, "AUTO: KVM probe passed"
    return Accel.TCG, "AUTO: KVM probe said no; using TCG"


def _cpu_flags(cpuinfo: Path) -> set[str]:
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                flags.update(value.split())
    return flags


def firmware_probe(
    accel: Accel,
    *,
    qemu_binary: str = DEFAULT_QEMU,
    deadline_s: float = FIRMWARE_DEADLINE_S,
    launch_timeout: float = 10.0,
) -> float:
    """Run SeaBIOS (q35, no disk, no kernel) under ``accel``; seconds until it gives up.

    Starts paused (``-S``), checks ``query-kvm`` (for KVM), ``cont``, then waits for
    :data:`SEABIOS_END` on the ``isa-debugcon`` port 0x402.

    What passing proves: the accelerator creates a VM and runs real-mode and 32-bit
    firmware code (port I/O, PCI enumeration, option ROMs) at a usable speed, QEMU printed
    no "host doesn't support requested feature" CPU warning, and QEMU did not die (a "KVM
    internal error" ends QEMU). What it does not prove: 64-bit long mode, SSE/AVX/XSAVE or
    ``cmpxchg16b`` (the instructions the kvm_pvm KVM fails on with a Linux guest), guest
    kernel drivers, or speed under load. A guest boot can still fail after a pass.

    :raise VmError: the firmware did not get there in ``deadline_s`` (or QEMU died, or KVM
        is not enabled); :class:`~podplug.errors.QemuLaunchError` if QEMU does not start
    """
    with tempfile.TemporaryDirectory(prefix="podplug-probe-") as tmp:
        debugcon = Path(tmp) / "debugcon.log"
        tail = [
            "-machine", "q35", "-m", "64", "-S",
            "-chardev", f"file,id=dbg,path={debugcon}",
            "-device", "isa-debugcon,iobase=0x402,chardev=dbg",
        ]  # fmt: skip
        vm = Vm(tail, accel=accel, qemu_binary=qemu_binary, name="accel-probe")
        vm.launch(launch_timeout)
        with vm:
            if accel is Accel.KVM:
                kvm = vm.execute("query-kvm")
                if not (isinstance(kvm, Mapping) and kvm.get("enabled") is True):
                    raise VmError(f"query-kvm says KVM is not enabled: {kvm!r}")
            warning = [ln for ln in vm.output().splitlines() if "doesn't support" in ln]
            if warning:
                raise VmError(f"QEMU warns about the CPU model: {warning[0].strip()}")
            started = time.monotonic()
            vm.execute("cont")
            while True:
                elapsed = time.monotonic() - started
                with contextlib.suppress(OSError):
                    if SEABIOS_END in debugcon.read_bytes():
                        return elapsed
                if not vm.alive:
                    lines = vm.output().strip().splitlines()
                    raise VmError(
                        f"QEMU died in the firmware probe: {lines[-1] if lines else 'no output'}"
                    )
                if elapsed > deadline_s:
                    raise VmError(
                        f"SeaBIOS did not finish within {deadline_s:.1f} s under "
                        f"{accel.value} (about 0.1 s under TCG)"
                    )
                time.sleep(0.01)


def probe_kvm(
    qemu_binary: str = DEFAULT_QEMU,
    deadline_s: float = FIRMWARE_DEADLINE_S,
    *,
    kvm_device: str = "/dev/kvm",
    cpuinfo: str = "/proc/cpuinfo",
) -> bool:
    """Is KVM worth using? True, or a :class:`~podplug.errors.VmError` that says why not.

    Three checks, cheapest first: ``/dev/kvm`` is accessible; the CPU shows ``vmx`` or
    ``svm`` (without them ``/dev/kvm`` can only be a software KVM such as kvm_pvm, the case
    of this project's machines); :func:`firmware_probe` under KVM meets its deadline. For use
    as ``choose_accel(Accel.AUTO, probe_kvm)``. Opens ``/dev/kvm`` only through QEMU.
    """
    if not os.access(kvm_device, os.R_OK | os.W_OK):
        raise VmError(f"{kvm_device} is missing or not accessible")
    flags = _cpu_flags(Path(cpuinfo))
    if not flags & {"vmx", "svm"}:
        raise VmError(
            f"{cpuinfo} shows no vmx/svm flag: {kvm_device} is a software KVM "
            "(e.g. kvm_pvm), on which stock guests crash or crawl"
        )
    firmware_probe(Accel.KVM, qemu_binary=qemu_binary, deadline_s=deadline_s)
    return True


__all__ = [
    "FIRMWARE_DEADLINE_S",
    "SEABIOS_END",
    "choose_accel",
    "firmware_probe",
    "probe_kvm",
]
