"""The nested VFIO check's L1 side: runs inside L1, on the host's own Python and checkout.

L1 is a guest with a virtual IOMMU (:mod:`tests.nested.harness`). This program sees L1's
REAL ``/sys`` and ``/dev``: it finds the devices L0 gave L1 by vendor:device, binds each to
vfio-pci as a device plugin would (``driver_override`` + ``drivers_probe``), makes a loop
volume, and for every case writes a Kata configuration and an OCI spec naming the real
``/dev/vfio/<group>`` nodes and the loop device with L1's
real numbers, then runs the ``podplug`` CLI unmodified (``run --no-emulate-vfio --json``).
Everything it learns goes to ``OUT/<case>.json`` and ``OUT/l1.json``; L0 judges.

Usage (inside L1): ``python3 -m tests.nested.inside OUT CASES_JSON``
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

PCI = Path("/sys/bus/pci/devices")
CASE_TIMEOUT_S = 2400  # = harness.CASE_TIMEOUT_S (this runs in L1 without podplug's imports)

#: what L0 gives L1, by vendor:device (see harness.L0_DEVICES)
GPU_F0 = "1af4:1110"  # ivshmem-plain: BAR0 256 B registers, BAR2 the large prefetchable memory
GPU_F1 = "1234:11e8"  # edu: BAR0 1 MiB, function 1 of the same slot
SINGLE = "1b36:0010"  # nvme: one function alone in its group


def read(path: Path) -> str:
    return path.read_text().strip()


def find(vendor_device: str) -> str:
    vendor, device = vendor_device.split(":")
    for entry in sorted(PCI.iterdir()):
        if (read(entry / "vendor"), read(entry / "device")) == (f"0x{vendor}", f"0x{device}"):
            return entry.name
    raise SystemExit(f"L1: no PCI function {vendor_device}")


def driver(bdf: str) -> str:
    link = PCI / bdf / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else "-"


def bind_vfio(bdf: str) -> None:
    """What a device plugin does before Kata sees the device."""
    if driver(bdf) == "vfio-pci":
        return
    (PCI / bdf / "driver_override").write_text("vfio-pci")
    if driver(bdf) != "-":
        (PCI / bdf / "driver" / "unbind").write_text(bdf)
    Path("/sys/bus/pci/drivers_probe").write_text(bdf)
    if driver(bdf) != "vfio-pci":
        raise SystemExit(f"L1: {bdf} did not bind to vfio-pci (driver {driver(bdf)})")


def group(bdf: str) -> str:
    return os.path.basename(os.readlink(PCI / bdf / "iommu_group"))


def devnum(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def node(path: str, kind: str, mode: int) -> dict[str, object]:
    major, minor = devnum(path)
    return {"path": path, "type": kind, "major": major, "minor": minor, "fileMode": mode,
            "uid": 0, "gid": 0}


def spec(paths: list[str], volume: str | None) -> dict[str, object]:
    devices = [node(p, "c", 0o666) for p in paths]
    if volume:
        devices.append({**node(volume, "b", 0o660), "path": "/dev/xda"})
    return {"ociVersion": "1.1.0",
            "annotations": {"io.kubernetes.cri.container-type": "container",
                            "io.kubernetes.cri.container-name": "workload"},
            "linux": {"devices": devices}}


def loop_volume(work: Path) -> str:
    image = work / "xda.img"
    with open(image, "wb") as fh:
        fh.write(b"NESTED-XDA-VOLUME\n")
        fh.truncate(64 << 20)
    out = subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


CURRENT = ["none"]  # the case running now, for the follower


def follow_l2_serial(out: Path) -> None:
    """Copy L2's serial log out every few seconds (a slow boot can be followed from L0)."""
    while True:
        for log in Path("/tmp").glob("podplug-run-*/*/serial.log"):
            with contextlib.suppress(OSError):
                shutil.copyfile(log, out / f"{CURRENT[0]}.l2-serial.log")
        with contextlib.suppress(OSError), open(out / "l1-watch.txt", "a") as watch:
            for stat in Path("/proc").glob("[0-9]*/stat"):
                with contextlib.suppress(OSError):
                    fields = stat.read_text().split()
                    if "qemu" in fields[1]:
                        watch.write(f"{time.monotonic():.0f} pid {fields[0]} {fields[2]} "
                                    f"utime {fields[13]} stime {fields[14]}\n")
            with open("/proc/meminfo") as mem:
                watch.write(" ".join(mem.read().split()[:6]) + "\n")
        time.sleep(3)


def main(out: Path, cases_file: Path) -> int:
    threading.Thread(target=follow_l2_serial, args=(out,), daemon=True).start()
    started = time.monotonic()
    cases = json.loads(cases_file.read_text())
    functions = {"gpu0": find(GPU_F0), "gpu1": find(GPU_F1), "single": find(SINGLE)}
    for bdf in functions.values():
        bind_vfio(bdf)
    groups = {name: group(bdf) for name, bdf in functions.items()}
    members = {g: sorted(os.listdir(f"/sys/kernel/iommu_groups/{g}/devices"))
               for g in set(groups.values())}
    work = Path("/tmp/nested-l1")
    work.mkdir(exist_ok=True)
    volume = loop_volume(work)
    facts: dict[str, object] = {
        "kernel": os.uname().release, "functions": functions, "groups": groups,
        "members": members, "drivers": {n: driver(b) for n, b in functions.items()},
        "volume": volume,
        "setup_s": round(time.monotonic() - started, 2)}
    (out / "l1.json").write_text(json.dumps(facts, indent=1))
    for case in cases:
        name = case["name"]
        CURRENT[0] = name
        cdir = work / name
        cdir.mkdir()
        (cdir / "configuration.toml").write_text(case["config"])
        paths = ["/dev/vfio/vfio", *sorted({f"/dev/vfio/{groups[f]}" for f in case["functions"]})]
        (cdir / "spec.json").write_text(
            json.dumps(spec(paths, volume if case.get("volume") else None)))
        argv = [sys.executable, "-m", "podplug.cli", "run",
                "--config", str(cdir / "configuration.toml"), "--spec", str(cdir / "spec.json"),
                "--accel", "tcg", "--no-emulate-vfio", "--boot-timeout", "900", "--json",
                *case.get("args", [])]
        t = time.monotonic()
        err_path = out / f"{name}.err"  # written as it goes: L0 can follow a slow run
        with open(err_path, "w") as err:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, text=True,
                                  timeout=CASE_TIMEOUT_S, check=False)
        with open("/proc/interrupts") as fh:
            irqs = [ln.strip() for ln in fh if "vfio" in ln]
        time.sleep(4)  # the follower's last copy of L2's serial log
        serial = out / f"{name}.l2-serial.log"
        result = {"name": name, "argv": argv,
                  "l2_serial": serial.read_text() if serial.exists() else "",
                  "rc": proc.returncode, "stdout": proc.stdout,
                  "stderr": err_path.read_text(), "seconds": round(time.monotonic() - t, 1),
                  "spec": json.loads((cdir / "spec.json").read_text()),
                  "l1_vfio_interrupts": irqs,
                  "drivers_after": {n: driver(b) for n, b in functions.items()}}
        (out / f"{name}.json").write_text(json.dumps(result, indent=1))
        print(f"L1: case {name} rc={proc.returncode} in {result['seconds']} s", flush=True)
    subprocess.run(["losetup", "-d", volume], check=False, timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
