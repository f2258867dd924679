"""The nested VFIO check's L0 side: a machine with an IOMMU, made by nesting, for podplug.

This machine has no IOMMU, so real ``vfio-pci`` assignment cannot happen on it. L0 (this
host) boots L1 under TCG: q35 with ``intel-iommu,intremap=on`` (VT-d with interrupt
remapping: type1 refuses a group without it), and behind pcie-root-ports

* a GPU-shaped two-function slot: function 0 ``ivshmem-plain`` (BAR0 256 B registers, BAR2
  a large 64-bit prefetchable memory BAR backed by a file L0 writes into), function 1
  ``edu`` (BAR0 1 MiB); without ACS both land in one IOMMU group in L1, like a GPU and its
  audio function;
* a single-function ``nvme`` (its namespace image also written by L0).

L1 runs podplug's own guest kernel with a small initramfs:
static busybox, the 9p/overlay/loop/vfio modules and ``/init``. ``/init`` mounts the
host's ``/`` read-only over virtio-9p, with a tmpfs overlay on top so L1 may write
anywhere and the checkout is visible wherever it lives (``/tmp`` included), then
``chroot``s there and runs :mod:`tests.nested.inside` on the host's own Python. L1 shares
one writable directory (``OUT``) with L0 for the results.

Nothing is left behind on L0: L1 runs in its own session and is killed on every exit path;
its files live in one temporary directory the caller removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from podplug.image.cpio import busybox_root
from podplug.image.kmod import load_order
from podplug.image.modtree import index_modules, modinfo_reader, read_module
from podplug.image.tools import busybox_applets, find_static_busybox

REPO = Path(__file__).resolve().parent.parent.parent
PYTHON = Path(sys.executable)

#: what L1 needs loaded (dependencies are added from the modules' own ``depends``)
L1_MODULES = ("virtio_pci", "9p", "9pnet_virtio", "overlay", "loop", "vfio",
              "vfio_iommu_type1", "vfio_pci")

#: ivshmem BAR2, a sparse file on L0. 256 MiB by default: L1's type1 IOMMU driver pins and
#: maps a BAR page by page when L2's QEMU maps it for peer DMA, and under TCG a 4 GiB BAR
#: cost L2's QEMU 270 s of L1 system time in 10 minutes without L2 reaching /init (16 MiB:
#: 47 s at the same point); ``NESTED_BAR_MIB=4096`` runs the GiB-sized BAR by hand
GPU_BAR_MIB = int(os.environ.get("NESTED_BAR_MIB", "256"))
CASE_TIMEOUT_S = 2400  # one podplug run in L1 (inside.py's bound); measured 12-20 minutes
GPU_MARK = b"PODPLUG-NESTED-GPU-BAR2-WRITTEN-BY-L0\n"
NVME_MARK = b"PODPLUG-NESTED-NVME-WRITTEN-BY-L0\n"
NVME_SERIAL = "NESTED-NVME-0001"

INIT = r"""#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mark() { echo "L1MARK $1 $(cut -d' ' -f1 /proc/uptime)"; }
mark init
while read -r f; do
  insmod "/lib/modules/l1/$f" || echo "L1: insmod $f failed"
done < /etc/l1/modules
mark modules
NINEP=trans=virtio,version=9p2000.L,msize=524288
mount -t 9p -o $NINEP,cache=loose,ro hostroot /lower || echo "L1: hostroot"
mount -t tmpfs -o size=2g tmpfs /upper
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /root \
  || echo "L1: overlay"
R=/root
for m in proc sys dev; do mount -o bind /$m $R/$m; done
mkdir -p $R/run/nested
mount -t 9p -o $NINEP out $R/run/nested || echo "L1: out"
mark podplug-start
chroot $R /usr/bin/env -i HOME=@HOME@ PATH=@PATH@ LC_ALL=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
  /bin/sh -c @CMD@ > $R/run/nested/inside.out 2>&1
echo $? > $R/run/nested/rc
mark podplug-end
dmesg > $R/run/nested/dmesg.txt 2>&1
sync
umount $R/run/nested
poweroff -f
"""


@dataclass(frozen=True)
class L1Kernel:
    """The kernel L1 boots and the module tree it loads from."""

    vmlinux: Path
    modules: Path  # .../lib/modules/VERSION/kernel


@dataclass
class L1Result:
    """What one L1 session produced."""

    rc: int | None
    marks: dict[str, float]
    wall: float
    facts: dict[str, object]
    cases: dict[str, dict[str, object]]
    output: str
    qemu_output: str
    dmesg: str
    timeline: list[str] = field(default_factory=list)


def podplug_kernel(work: Path) -> L1Kernel:
    """podplug's own guest kernel (its PVH ``vmlinux``) with the modules of its package,
    unpacked from the cached ``.deb`` into ``work``."""
    from podplug.image.build import build_image
    from podplug.image.cache import default_cache_dir

    image = build_image()
    debs = default_cache_dir().expanduser() / "debs"
    version = image.package_version.replace(":", "%3a")
    deb = debs / f"{image.package}_{version}_amd64.deb"
    tree = work / "l1-kernel"
    subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True, timeout=300)
    (modules,) = (tree / "lib" / "modules").glob("*/kernel")
    return L1Kernel(image.kernel, modules)


def initramfs(kernel: L1Kernel, command: str) -> bytes:
    """L1's initramfs, uncompressed (no gunzip under TCG)."""
    index = index_modules(kernel.modules)
    order, _ = load_order(list(L1_MODULES), index, modinfo_reader(index))
    busybox = find_static_busybox()
    archive = busybox_root(("proc", "sys", "dev", "tmp", "lower", "upper", "root", "etc/l1"),
                           busybox.read_bytes(), busybox_applets(busybox))
    files = []
    for name in order:
        fname = index[name].name.removesuffix(".xz")
        archive.add_file(f"lib/modules/l1/{fname}", read_module(index[name]))
        files.append(fname)
    archive.add_file("etc/l1/modules", "".join(f + "\n" for f in files).encode())
    path = os.environ.get("PATH", "/usr/bin:/bin")
    init = (INIT.replace("@HOME@", shlex.quote(os.environ.get("HOME", "/root")))
            .replace("@PATH@", shlex.quote(f"{PYTHON.parent}:{path}"))
            .replace("@CMD@", shlex.quote(command)))
    archive.add_file("init", init.encode(), 0o755)
    return archive.finish()


def l0_argv(qemu: str, kernel: Path, initrd: Path, work: Path, out: Path) -> list[str]:
    """L0's QEMU command line for L1 (the devices are the contract with ``inside``)."""
    return [
        qemu, "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "3072",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-device", "intel-iommu,intremap=on,caching-mode=on",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 quiet panic=-1 oops=panic mitigations=off intel_iommu=on "
                   "iommu=pt tsc=reliable no_timer_check",
        "-serial", f"file:{work / 'l1-serial.log'}",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                   "multidevs=remap",
        "-virtfs", f"local,path={out},mount_tag=out,security_model=none",
        "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1",
        "-device", "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2",
        "-object", f"memory-backend-file,id=gpumem,size={GPU_BAR_MIB}M,"
                   f"mem-path={work / 'gpu-bar2.mem'},share=on",
        "-device", "ivshmem-plain,id=gpu0,memdev=gpumem,bus=rp1,addr=00.0,multifunction=on",
        "-device", "edu,id=gpu1,bus=rp1,addr=00.1",
        "-blockdev", f"file,node-name=nvf,filename={work / 'nvme.img'}",
        "-blockdev", "raw,node-name=nvd,file=nvf",
        "-device", f"nvme,id=single,serial={NVME_SERIAL},drive=nvd,bus=rp2,addr=0",
    ]  # fmt: skip


def _marks(serial: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in serial.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "L1MARK":
                with contextlib.suppress(ValueError):
                    found[parts[1]] = float(parts[2])
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Terminated(Exception):
    """SIGTERM or SIGHUP while L1 ran: raised so that every ``finally`` stops L1 and
    removes its files (pytest's own SIGTERM handling runs no finalizer)."""


@contextlib.contextmanager
def _running(argv: Sequence[str]) -> Iterator[subprocess.Popen[bytes]]:
    def terminate(signum: int, _frame: object) -> None:
        raise Terminated(signal.Signals(signum).name)

    previous = {s: signal.signal(s, terminate) for s in (signal.SIGTERM, signal.SIGHUP)}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        _stop(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_l1(work: Path, kernel: L1Kernel, cases: list[dict[str, object]], *,
           qemu: str = "/usr/bin/qemu-system-x86_64", timeout: float | None = None,
           progress: bool = True) -> L1Result:
    """Boot L1 in ``work`` and run ``cases`` inside it (each one ``podplug run``, bounded by
    ``inside``); the whole session by ``timeout``, by default 10 minutes plus 40 per case."""
    if timeout is None:
        timeout = 600.0 + CASE_TIMEOUT_S * len(cases)
    out = work / "out"
    out.mkdir()
    (out / "cases.json").write_text(json.dumps(cases))
    with open(work / "gpu-bar2.mem", "wb") as fh:
        fh.write(GPU_MARK)
        fh.truncate(GPU_BAR_MIB << 20)
    with open(work / "nvme.img", "wb") as fh:
        fh.write(NVME_MARK)
        fh.truncate(64 << 20)
    command = (f"cd {shlex.quote(str(REPO))} && exec {shlex.quote(str(PYTHON))} -m "
               "tests.nested.inside /run/nested /run/nested/cases.json")
    initrd = work / "l1.cpio"
    initrd.write_bytes(initramfs(kernel, command))
    serial = work / "l1-serial.log"
    argv = l0_argv(qemu, kernel.vmlinux, initrd, work, out)
    started = time.monotonic()
    timeline: list[str] = []
    with _running(argv) as proc:
        seen: set[str] = set()
        while proc.poll() is None and time.monotonic() - started < timeout:
            for name, up in _marks(serial).items():
                if name not in seen:
                    seen.add(name)
                    wall = time.monotonic() - started
                    line = f"L1 {name}: uptime {up:.1f} s, L0 wall {wall:.1f} s"
                    timeline.append(line)
                    if progress:
                        print(line, file=sys.stderr, flush=True)
            time.sleep(0.5)
        timed_out = proc.poll() is None
        _stop(proc)
        qemu_output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    wall = time.monotonic() - started

    def text(name: str) -> str:
        with contextlib.suppress(OSError):
            return (out / name).read_text(errors="replace")
        return ""

    rc_text = text("rc").strip()
    results = {}
    for case in cases:
        raw = text(f"{case['name']}.json")
        if raw:
            results[str(case["name"])] = json.loads(raw)
    facts = json.loads(text("l1.json") or "{}")
    return L1Result(int(rc_text) if rc_text.isdigit() and not timed_out else None,
                    _marks(serial), wall, facts, results, text("inside.out"), qemu_output,
                    text("dmesg.txt"), timeline)
