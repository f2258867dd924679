"""The floor: the same work done by raw QEMU and a guest that does nothing else (bench only).

Every podplug figure in ``BENCHMARKS.md`` stands beside the figure of this floor, measured in
the same run, on the same kernel, initramfs bytes and QEMU command line:

* **boot**: QEMU started with the very argv podplug renders for the plan (``guest_argv`` and
  :func:`podplug.vm.process.build_argv`), but ``/init`` replaced by :data:`FLOOR_INIT`, which
  loads only the modules its channel needs (the virtio transport and ``virtio_console``),
  opens the same virtio-serial port and announces itself at once. The host starts QEMU with
  ``subprocess`` (no ``Vm``, no setpriv, no QMP client) and reads the socket until the
  announcement: launch -> ready.
* **hot-plug**: ``device_add`` over QMP (``qemu.qmp``, nothing read back), then the floor
  guest polls sysfs every 10 ms until the new device's entry exists (``wait GLOB N``: at
  least N matches), nothing else;
* **unplug**: ``device_del`` to ``DEVICE_DELETED``.

The replacement ``/init`` is a second cpio archive appended to podplug's own initramfs
(Linux unpacks concatenated archives in order, later entries replacing earlier ones), so
the kernel unpacks the same bytes plus one small file.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from podplug.image.build import GuestImage
from podplug.image.cpio import NewcArchive
from podplug.vm.process import SANDBOX, Accel, build_argv

#: loaded by the floor's /init (in this order, each only if the image has it): what the
#: agent's channel needs, nothing else
CHANNEL_MODULES = ("virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio",
                   "virtio_pci", "virtio_console")

FLOOR_INIT = r"""#!/bin/sh
# podplug benchmark floor (not podplug's agent): the least an init does to answer on the
# agent's virtio-serial port. Extra modules: floor.modules=a,b on the kernel command line.
PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
read -r CMDLINE </proc/cmdline
WANT=",virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio,virtio_pci,virtio_console,"
for word in $CMDLINE; do
    case $word in floor.modules=*) WANT="$WANT${word#floor.modules=}," ;; esac
done
while read -r grp file name; do
    case $WANT in *",$name,"*) [ -d /sys/module/$name ] || insmod /lib/modules/podplug/$file ;; esac
done </etc/podplug/modules
PORT=
while [ -z "$PORT" ]; do
    for p in /sys/class/virtio-ports/*; do
        [ -e "$p/name" ] && read -r n <"$p/name" && [ "$n" = podplug.agent ] && PORT=/dev/${p##*/}
    done
    [ -n "$PORT" ] || sleep 0.01
done
count() { N=0; for f in $1; do [ -e "$f" ] && N=$((N + 1)); done; }
exec 3<>"$PORT"
read -r up _ </proc/uptime
echo "hello OK floor uptime=$up" >&3
while :; do
    if ! read -r id verb a b <&3; then sleep 0.01; continue; fi
    case $verb in
        ping) echo "$id OK pong" >&3 ;;
        count) count "$a"; echo "$id OK $N" >&3 ;;
        wait) count "$a"; while [ "$N" -lt "$b" ]; do sleep 0.01; count "$a"; done
              echo "$id OK $N" >&3 ;;
        load) for m in $(echo "$a" | tr , ' '); do
                  while read -r grp file name; do
                      [ "$name" = "$m" ] && [ ! -d /sys/module/$m ] \
                          && insmod /lib/modules/podplug/$file
                  done </etc/podplug/modules
              done
              echo "$id OK" >&3 ;;
        settle) for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
                    busy=; for st in /sys/class/nvme/nvme*/state; do
                        [ -e "$st" ] && read -r v <"$st" && [ "$v" != live ] && busy=1
                    done
                    [ -z "$busy" ] && break; sleep 0.1
                done
                echo "$id OK" >&3 ;;
        *) echo "$id ERR unknown" >&3 ;;
    esac
done
"""


def floor_initrd(image: GuestImage, into: Path) -> Path:
    """podplug's initramfs with :data:`FLOOR_INIT` appended as ``/init``."""
    extra = NewcArchive()
    extra.add_file("init", FLOOR_INIT.encode(), 0o755)
    path = into / "floor-initramfs.cpio.gz"
    path.write_bytes(image.initramfs.read_bytes() + gzip.compress(extra.finish(), 6, mtime=0))
    return path


def floor_tail(tail: Sequence[str], initrd: Path, sock: Path, modules: Sequence[str] = ()
               ) -> list[str]:
    """podplug's argv tail for the same plan, with the floor's initrd, channel socket and
    extra modules (``-initrd``, ``-chardev ...path=``, ``-append`` changed, nothing else)."""
    out = list(tail)
    out[out.index("-initrd") + 1] = str(initrd)
    i = next(i for i, a in enumerate(out) if a.startswith("socket,id=agentch,"))
    out[i] = f"socket,id=agentch,path={sock},server=on,wait=off"
    if modules:
        j = out.index("-append") + 1
        out[j] = f"{out[j]} floor.modules={','.join(modules)}"
    return out


@dataclass
class FloorVm:
    """A raw QEMU with the floor's init; ``boot_s`` is Popen -> the guest's hello."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    sock: socket.socket
    boot_s: float
    uptime: float
    _buf: bytes = b""
    _n: int = 0

    def call(self, verb: str, *args: str, timeout: float = 30.0) -> str:
        self._n += 1
        rid = f"f{self._n}"
        self.sock.sendall(f"{rid} {verb} {' '.join(args)}\n".encode())
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline)
            if line.startswith(f"{rid} OK"):
                return line[len(rid) + 4:]
            if line.startswith(f"{rid} ERR"):
                raise RuntimeError(f"floor guest: {line}")

    def _line(self, deadline: float) -> str:
        while b"\n" not in self._buf:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("floor guest: channel closed")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\n")
        return raw.decode(errors="replace")


@contextlib.contextmanager
def floor_vm(qemu: str, accel: Accel, tail: Sequence[str], image: GuestImage, root: Path,
             modules: Sequence[str] = (), sandbox: bool = True,
             timeout: float = 120.0) -> Iterator[FloorVm]:
    """Boot the floor for ``tail`` (podplug's argv tail for a plan); killed on exit."""
    with tempfile.TemporaryDirectory(prefix="floor-", dir=root) as tmp:
        work = Path(tmp)
        sock_path = work / "agent.sock"
        argv = build_argv(qemu, accel, work, [*(SANDBOX if sandbox else ()),
                                              *floor_tail(tail, floor_initrd(image, work),
                                                          sock_path, modules)])
        started = time.monotonic()
        with open(work / "qemu.log", "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        try:
            sock = _connect(sock_path, proc, started + timeout)
            vm = FloorVm(proc, work, sock, 0.0, 0.0)
            hello = vm._line(started + timeout)
            vm.boot_s = time.monotonic() - started
            assert hello.startswith("hello OK"), hello
            vm.uptime = float(hello.rpartition("uptime=")[2])
            yield vm
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _connect(path: Path, proc: subprocess.Popen[bytes], deadline: float) -> socket.socket:
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"floor QEMU exited ({proc.returncode}) or no socket") from exc
            time.sleep(0.002)
