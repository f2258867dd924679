#!/usr/bin/env python3
"""By-hand check: podplug's REAL VFIO path, by nesting (not part of the test suite).

This machine has no IOMMU, so ``podplug run`` normally passes emulated stand-ins for VFIO
devices. This script makes a machine that has one and runs podplug there:

* L0 (this host) boots L1 under TCG: q35 with ``intel-iommu,caching-mode=on,intremap=on``,
  an emulated NVMe controller (1b36:0010, serial NESTED-NVME-0001) alone on a
  pcie-root-port, and the host's root filesystem shared read-only over virtio-9p
  (plus a writable scratch share for the results). L1's kernel is podplug's own guest
  kernel; its initramfs (built here with ``podplug.image.cpio.NewcArchive``) holds static
  busybox, the 9p / loop / vfio modules and an ``/init`` script.
* L1's ``/init`` binds the NVMe to vfio-pci, attaches a loop device to a file, writes a Kata
  configuration (vfio_mode=vfio, cold_plug_vfio=root-port, virtio-blk) and an OCI spec
  naming ``/dev/vfio/vfio``, ``/dev/vfio/<L1 group>`` and the loop device with L1's real
  major:minor, then ``chroot``s into the host's root (L1's /proc, /sys, /dev bound in, a
  tmpfs on /tmp) and runs ``python3 -m podplug.cli run ... --accel tcg --no-emulate-vfio
  --json`` against L1's REAL /sys. podplug boots L2 with ``-device vfio-pci,host=...``.
* Back on L0, the script prints podplug's report, whether every device was usable, and the
  timings. Every process and temporary directory is removed on every exit path.

Usage: ``python3 scripts/nested-vfio-check.py [--timeout 900] [--boot-timeout 600] [--keep]``

The first version of this check found two podplug problems, since fixed: the agent-ready
wait was a fixed 60 s (now ``--boot-timeout``; L2 needs 130-145 s under TCG-in-TCG), and
while L2's agent port was still closed QEMU stopped reading the socket, so a ping's send
timed out after about 70 pings ("guest agent send: ...: timed out"); pings the full socket
cannot take are now skipped.
Exit code: 0 when podplug (inside L1) exited 0 with every device usable and no emulation.
"""

# ruff: noqa: E501  (the embedded L1 /init shell script has long lines)
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from podplug.image.build import BASE_CMDLINE, build_image
from podplug.image.cache import default_cache_dir
from podplug.image.cpio import NewcArchive
from podplug.image.kmod import load_order
from podplug.image.modtree import index_modules, modinfo_reader, read_module
from podplug.image.tools import busybox_applets, find_static_busybox

L1_MODULES = ("virtio_pci", "9p", "9pnet_virtio", "loop", "vfio", "vfio_iommu_type1", "vfio_pci")
NVME_SERIAL = "NESTED-NVME-0001"
PYTHON = Path(sys.executable).resolve()
REPO = Path(__file__).resolve().parent.parent

KATA_CONFIG = """\
# nested-vfio-check: Kata issue #11288's scenario, real VFIO inside L1
[hypervisor.qemu]
path = "/usr/bin/qemu-system-x86_64"
machine_type = "q35"
block_device_driver = "virtio-blk"
default_bridges = 1
hot_plug_vfio = "no-port"
cold_plug_vfio = "root-port"
pcie_root_port = 2
enable_annotations = ["cold_plug_vfio", "hot_plug_vfio", "pcie_root_port", "pcie_switch_port"]

[runtime]
vfio_mode = "vfio"
"""

# /init of L1 (busybox sh). @PODPLUG@ is replaced with the command run in the chroot.
L1_INIT = r"""#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mark() { echo "L1MARK $1 $(cut -d' ' -f1 /proc/uptime)"; }
mark init
while read -r f; do insmod "/lib/modules/l1/$f" || echo "L1: insmod $f failed"; done < /etc/l1/modules
mark modules
mkdir -p /host /scratch
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro hostroot /host || echo "L1: mount hostroot failed"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 scratch /scratch || echo "L1: mount scratch failed"
OUT=/scratch/out
mkdir -p $OUT
finish() { dmesg > $OUT/dmesg.txt 2>&1; sync; mark poweroff; poweroff -f; echo o > /proc/sysrq-trigger; }
BDF=
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat $d/vendor):$(cat $d/device)" = "0x1b36:0x0010" ]; then BDF=${d##*/}; fi
done
if [ -z "$BDF" ]; then echo "L1: no nvme found" > $OUT/error.txt; finish; fi
echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override
echo $BDF > /sys/bus/pci/drivers_probe
GROUP=$(basename "$(readlink /sys/bus/pci/devices/$BDF/iommu_group)")
DRV=$(basename "$(readlink /sys/bus/pci/devices/$BDF/driver)")
MEMBERS=$(ls /sys/kernel/iommu_groups/$GROUP/devices | tr '\n' ' ')
mark vfio-bound
set -- $(stat -c '%t %T' /dev/vfio/$GROUP); GMAJ=$((0x$1)); GMIN=$((0x$2))
set -- $(stat -c '%t %T' /dev/vfio/vfio); CMAJ=$((0x$1)); CMIN=$((0x$2))
echo "bdf=$BDF driver=$DRV group=$GROUP members=$MEMBERS group_node=$GMAJ:$GMIN container_node=$CMAJ:$CMIN" > $OUT/l1-vfio.txt
cat $OUT/l1-vfio.txt
R=/host
mount -t tmpfs -o size=1g tmpfs $R/tmp
for m in proc sys dev; do mount -o bind /$m $R/$m; done
dd if=/dev/zero of=$R/tmp/xda.img bs=1M count=0 seek=64 2>/dev/null
LOOP=$(losetup -f)
losetup $LOOP $R/tmp/xda.img
set -- $(stat -c '%t %T' $LOOP); LMAJ=$((0x$1)); LMIN=$((0x$2))
echo "loop=$LOOP $LMAJ:$LMIN backing=$(cat /sys/block/${LOOP##*/}/loop/backing_file)" >> $OUT/l1-vfio.txt
cp /scratch/configuration.toml $R/tmp/configuration.toml
cat > $R/tmp/spec.json <<EOF
{
  "ociVersion": "1.1.0",
  "annotations": {"io.kubernetes.cri.container-type": "container",
                  "io.kubernetes.cri.container-name": "workload"},
  "linux": {"devices": [
    {"path": "/dev/vfio/vfio", "type": "c", "major": $CMAJ, "minor": $CMIN, "fileMode": 438, "uid": 0, "gid": 0},
    {"path": "/dev/vfio/$GROUP", "type": "c", "major": $GMAJ, "minor": $GMIN, "fileMode": 438, "uid": 0, "gid": 0},
    {"path": "/dev/xda", "type": "b", "major": $LMAJ, "minor": $LMIN, "fileMode": 432, "uid": 0, "gid": 0}
  ]}
}
EOF
cp $R/tmp/spec.json $OUT/spec.json
( while :; do if grep -q vfio /proc/interrupts; then grep vfio /proc/interrupts | sed "s/^/[L1 uptime $(cut -d' ' -f1 /proc/uptime)] /" >> $OUT/l1-interrupts.txt; ls -l /proc/[0-9]*/fd 2>/dev/null | grep -e vfio > $OUT/l1-vfio-fds.txt; fi; for f in $R/tmp/podplug-run-*/*/serial.log; do [ -f "$f" ] && cp "$f" $OUT/l2-serial.log; done; sleep 5; done ) &
WATCH=$!
mark podplug-start
chroot $R /usr/bin/env -i HOME=/root PATH=/root/.pyenv/versions/3.11.7/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
  LC_ALL=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 @PODPLUG@ > $OUT/podplug.out 2> $OUT/podplug.err
echo $? > $OUT/rc
mark podplug-end
kill $WATCH 2>/dev/null
losetup -d $LOOP
finish
"""

def say(text: str) -> None:
    print(f"[nested {time.strftime('%H:%M:%S')}] {text}", flush=True)


def find_deb(cache: Path, package: str, version: str) -> Path:
    deb = cache / "debs" / f"{package}_{version.replace(':', '%3a')}_amd64.deb"
    if not deb.is_file():
        raise SystemExit(f"kernel package {deb} not in podplug's cache (run podplug image build)")
    return deb


def build_l1_initramfs(deb: Path, work: Path, podplug_cmd: str) -> tuple[bytes, list[str]]:
    tree = work / "kernel-tree"
    subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True, timeout=300)
    moddirs = sorted((tree / "lib" / "modules").glob("*/kernel"))
    index = index_modules(moddirs[0])
    order, _skipped = load_order(list(L1_MODULES), index, modinfo_reader(index))
    busybox = find_static_busybox()
    archive = NewcArchive()
    for name in ("proc", "sys", "dev", "tmp", "host", "scratch", "etc/l1"):
        archive.add_dir(name)
    archive.add_node("dev/console", "c", 5, 1, 0o600)
    archive.add_node("dev/null", "c", 1, 3, 0o666)
    archive.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in busybox_applets(busybox):
        if applet != "bin/busybox":
            archive.add_symlink(applet, "../" * applet.count("/") + "bin/busybox")
    files = []
    for name in order:
        src = index[name]
        fname = src.name.removesuffix(".xz")
        archive.add_file(f"lib/modules/l1/{fname}", read_module(src))
        files.append(fname)
    archive.add_file("etc/l1/modules", "".join(f + "\n" for f in files).encode())
    archive.add_file("init", L1_INIT.replace("@PODPLUG@", podplug_cmd).encode(), 0o755)
    shutil.rmtree(tree, ignore_errors=True)
    return archive.finish(), files


def l0_argv(image_kernel: Path, initrd: Path, scratch: Path, serial: Path, nvme_img: Path) -> list[str]:
    append = f"{BASE_CMDLINE} intel_iommu=on iommu=pt"
    return [
        "qemu-system-x86_64", "-machine", "q35,kernel-irqchip=split", "-accel", "tcg",
        "-cpu", "max", "-smp", "2", "-m", "3072", "-nodefaults", "-no-user-config",
        "-display", "none", "-no-reboot",
        "-device", "intel-iommu,caching-mode=on,intremap=on",
        "-kernel", str(image_kernel), "-initrd", str(initrd), "-append", append,
        "-serial", f"file:{serial}",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={scratch},mount_tag=scratch,security_model=none",
        "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1",
        "-blockdev", f"file,node-name=nvf,filename={nvme_img}",
        "-blockdev", "raw,node-name=nvd,file=nvf",
        "-device", f"nvme,id=nv1,serial={NVME_SERIAL},drive=nvd,bus=rp1,addr=0",
    ]  # fmt: skip


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with_group = True
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        with_group = False
    try:
        proc.wait(3)
    except subprocess.TimeoutExpired:
        if with_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        proc.wait(5)


def marks(serial: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        text = serial.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) == 3 and parts[0] == "L1MARK":
            with contextlib.suppress(ValueError):
                out[parts[1]] = float(parts[2])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=900.0, help="whole L1 run (s)")
    ap.add_argument("--boot-timeout", type=float, default=600.0,
                    help="podplug's --boot-timeout for L2 (its TCG-in-TCG boot takes minutes)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (for debugging)")
    ap.add_argument("--control-emulated", action="store_true",
                    help="control run: same L1, but podplug gets --emulate-vfio (stand-ins, "
                    "no real VFIO), to see what real VFIO costs; never PASSes")
    args = ap.parse_args()

    def on_term(_sig: int, _frm: object) -> None:
        raise SystemExit(130)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    t0 = time.monotonic()
    image = build_image()
    cache = default_cache_dir().expanduser().resolve()
    deb = find_deb(cache, image.package, image.package_version)
    say(f"L0: guest image {image.kernel.parent.name} (kernel {image.kernel_version}), "
        f"podplug cache {cache} (L1 sees it read-only through 9p)")
    run_args = ("run --config /tmp/configuration.toml --spec /tmp/spec.json --accel tcg "
                + ("--emulate-vfio" if args.control_emulated else "--no-emulate-vfio")
                + f" --boot-timeout {args.boot_timeout:g} --json")
    podplug_cmd = f"python3 -m podplug.cli {run_args}"

    work = Path(tempfile.mkdtemp(prefix="nested-vfio-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        scratch = work / "scratch"
        scratch.mkdir()
        (scratch / "configuration.toml").write_text(KATA_CONFIG)
        t = time.monotonic()
        cpio, mods = build_l1_initramfs(deb, work, podplug_cmd)
        initrd = work / "l1.cpio"
        initrd.write_bytes(cpio)
        say(f"L0: L1 initramfs {len(cpio) / 1e6:.1f} MB with {len(mods)} modules "
            f"({', '.join(m.removesuffix('.ko') for m in mods)}) in {time.monotonic() - t:.1f} s")
        nvme_img = work / "nvme.img"
        with open(nvme_img, "wb") as fh:
            fh.write(b"HELLO-FROM-L0-NVME-IMAGE\n")
            fh.truncate(64 << 20)
        serial = work / "l1-serial.log"
        argv = l0_argv(image.kernel, initrd, scratch, serial, nvme_img)
        say("L0: booting L1: " + shlex.join(argv))
        launched = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        seen: set[str] = set()
        deadline = launched + args.timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                say(f"L0: TIMEOUT after {args.timeout:.0f} s: stopping L1")
                stop(proc)
                break
            for name, up in marks(serial).items():
                if name not in seen:
                    seen.add(name)
                    say(f"L1: {name} (L1 uptime {up:.1f} s, L0 wall {time.monotonic() - launched:.1f} s)")
            time.sleep(1.0)
        wall = time.monotonic() - launched
        qemu_out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        say(f"L0: L1 QEMU exited {proc.returncode} after {wall:.1f} s")
        if qemu_out.strip():
            print("L0 QEMU output:\n" + qemu_out.strip())
        proc = None
        return report(work, scratch / "out", serial, wall, time.monotonic() - t0)
    finally:
        stop(proc)
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(work: Path, out: Path, serial: Path, l1_wall: float, total: float) -> int:
    m = marks(serial)
    irqs = out / "l1-interrupts.txt"
    if irqs.is_file():  # snapshots every 5 s: the last snapshot of each L1 vfio interrupt
        last: dict[str, str] = {}
        for line in irqs.read_text(errors="replace").splitlines():
            last[line.split()[-1] + line.split("]")[1].split(":")[0]] = line
        print("--- L1 /proc/interrupts vfio lines (last seen)\n" + "\n".join(last.values()))
    for name in ("error.txt", "l1-vfio.txt", "l1-vfio-fds.txt"):
        if (out / name).is_file():
            print(f"--- L1 {name}\n" + (out / name).read_text().rstrip())
    err = (out / "podplug.err").read_text(errors="replace") if (out / "podplug.err").is_file() else ""
    text = (out / "podplug.out").read_text(errors="replace") if (out / "podplug.out").is_file() else ""
    rc = (out / "rc").read_text().strip() if (out / "rc").is_file() else "none"
    if (out / "l2-serial.log").is_file():
        l2 = (out / "l2-serial.log").read_text(errors="replace").splitlines()[-15:]
        print("--- L2 serial log (last copy, tail)\n" + "\n".join(l2))
    print("--- podplug stderr (inside L1)\n" + err.rstrip())
    print(f"--- podplug exit code (inside L1): {rc}")
    try:
        data = json.loads(text)
    except ValueError:
        print("--- podplug stdout (not JSON)\n" + text.rstrip())
        tail = serial.read_text(errors="replace").splitlines()[-40:] if serial.is_file() else []
        print("--- L1 serial tail\n" + "\n".join(tail))
        if (out / "dmesg.txt").is_file():
            lines = (out / "dmesg.txt").read_text(errors="replace").splitlines()
            print("--- L1 dmesg (vfio/iommu/DMAR lines)\n" + "\n".join(
                [ln for ln in lines if any(k in ln for k in ("vfio", "DMAR", "iommu", "9p"))][-40:]))
        return 1
    print("--- podplug JSON report (inside L1)\n" + json.dumps(data, indent=2))
    print("--- summary")
    ok = rc == "0" and data.get("all_usable") is True and data.get("emulated_vfio") is False
    for row in data.get("devices", []):
        print(f"{'OK  ' if row['usable'] else 'FAIL'} {row['path']:<16} {row['bucket']:<10} "
              f"planned {row['planned_guest_path'] or '-'} actual {row['actual_guest_path'] or '-'} "
              f"guest {row['guest_node'] or '-'}: {row['check'] or row['error']}")
    timings = data.get("timings", {})
    l1_boot = m.get("init")
    print(f"emulated_vfio={data.get('emulated_vfio')} accel={data.get('accel')} "
          f"all_usable={data.get('all_usable')}")
    print("timings: L1 kernel to /init {}, L1 /init to podplug start {}, podplug in L1 {}, "
          "L2 launch-to-agent-ready {} s, podplug phases {}, L1 QEMU wall {:.1f} s, "
          "script total {:.1f} s".format(
              f"{l1_boot:.1f} s" if l1_boot is not None else "?",
              f"{m['podplug-start'] - m['init']:.1f} s" if {'init', 'podplug-start'} <= m.keys() else "?",
              f"{m['podplug-end'] - m['podplug-start']:.1f} s"
              if {'podplug-start', 'podplug-end'} <= m.keys() else "?",
              timings.get("boot", "?"), timings, l1_wall, total))
    print("RESULT: " + ("PASS: real VFIO (no emulation), every device usable in L2" if ok
                        else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
