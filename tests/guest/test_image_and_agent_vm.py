"""The guest image builder and the guest agent, for real.

The tests marked ``vm`` build the image from Debian packages (the cache makes later runs
fast) and boot one QEMU VM with ``-accel tcg``, never /dev/kvm. The VM is a q35 machine
with a vIOMMU (``intel-iommu`` plus ``intel_iommu=on``) and these devices:

* the agent's virtio-serial port at root-bus slot 1;
* a file-backed virtio-blk disk on root port ``rp0`` (slot 3), guest path ``03/00``;
* an NVMe controller on ``rp1`` (slot 4), the stand-in for a VFIO device;
* a virtio-scsi controller on ``rp2`` (slot 5), with one ``scsi-hd`` at target 1, LUN 2.

These tests FAIL, never skip, when QEMU or the image cannot be built. The builder's parts
are tested without a VM in ``tests/image/``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from podplug.errors import AgentError, HotplugTimeout
from podplug.guest.agent_client import AgentClient
from podplug.guest.protocol import AGENT_PORT_NAME, UNKNOWN_ID, parse_devnum, parse_lspci
from podplug.image.build import GuestImage, build_image
from podplug.vm.process import SANDBOX, SETPRIV
from tests.support import QEMU

vm = pytest.mark.vm

DISK_MIB = 64
#: what the host writes at the start of the virtio-blk disk; the guest must read it back
PATTERN = (b"PODPLUG-HOST-PATTERN-" * 200)[:4096]

# ---------------------------------------------------------------- the real image


@pytest.fixture(scope="module")
def image() -> GuestImage:
    """The cached guest image (built on first use; a failure here fails the tests)."""
    return build_image()


@vm
def test_image_is_cached_and_complete(image: GuestImage) -> None:
    again = build_image()  # from the cache: the same image (timings: bench/bench_run.py)
    assert again == image
    assert image.kernel.read_bytes()[:4] == b"\x7fELF"
    assert image.kernel_version in image.package
    listing = subprocess.run(
        ["busybox", "cpio", "-t"], input=gzip.decompress(image.initramfs.read_bytes()),
        capture_output=True, check=True,
    ).stdout.decode().split()  # fmt: skip
    for member in ("init", "bin/busybox", "sbin/mke2fs", "etc/podplug/modules", "dev/console"):
        assert member in listing
    for module in ("virtio_pci.ko", "virtio_console.ko", "nvme.ko", "vfio-pci.ko", "ext4.ko"):
        assert f"lib/modules/podplug/{module}" in listing
    assert image.fs_type in ("ext2", "ext4")


# ---------------------------------------------------------------- the VM


@dataclass
class Guest:
    agent: AgentClient
    workdir: Path
    ready_s: float

    def serial_tail(self) -> str:
        log = self.workdir / "serial.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else "(no serial log)"


def qemu_argv(image: GuestImage, d: Path) -> list[str]:
    """The VM of this module's docstring, under QEMU's sandbox, started through ``setpriv
    --pdeathsig`` as :class:`podplug.vm.process.Vm` starts it (no ``preexec_fn``)."""
    return [
        SETPRIV, "--pdeathsig", "KILL", QEMU, *SANDBOX,
        "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1",
        "-m", "512", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-device", "intel-iommu,intremap=on,caching-mode=on",
        "-kernel", str(image.kernel), "-initrd", str(image.initramfs),
        "-append", f"{image.cmdline} intel_iommu=on iommu=pt",
        "-serial", f"file:{d}/serial.log",
        "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off",
        "-device", "virtio-serial-pci,id=vser0,bus=pcie.0,addr=0x1",
        "-chardev", f"socket,id=agentch,path={d}/agent.sock,server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev=agentch,name={AGENT_PORT_NAME}",
        "-device", "pcie-root-port,id=rp0,bus=pcie.0,addr=0x3,chassis=1,slot=1",
        "-device", "pcie-root-port,id=rp1,bus=pcie.0,addr=0x4,chassis=2,slot=2",
        "-device", "pcie-root-port,id=rp2,bus=pcie.0,addr=0x5,chassis=3,slot=3",
        "-blockdev", f"file,node-name=f0,filename={d}/vda.img",
        "-blockdev", "raw,node-name=d0,file=f0",
        "-device", "virtio-blk-pci,id=blk0,bus=rp0,addr=0,drive=d0,serial=PODPLUG-VDA",
        "-blockdev", f"file,node-name=f1,filename={d}/nvme.img",
        "-blockdev", "raw,node-name=d1,file=f1",
        "-device", "nvme,id=nvme0,bus=rp1,addr=0,drive=d1,serial=PODPLUG-NVME",
        "-device", "virtio-scsi-pci,id=scsi0,bus=rp2,addr=0",
        "-blockdev", f"file,node-name=f2,filename={d}/sda.img",
        "-blockdev", "raw,node-name=d2,file=f2",
        "-device", "scsi-hd,bus=scsi0.0,channel=0,scsi-id=1,lun=2,drive=d2,serial=PODPLUG-SCSI",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def guest(image: GuestImage) -> Iterator[Guest]:
    """One booted VM with a ready agent; QEMU is killed and its directory removed after."""
    if not os.access(QEMU, os.X_OK):
        pytest.fail(f"{QEMU} not found (apt-get install qemu-system-x86)")
    d = Path(tempfile.mkdtemp(prefix="podplug-guest-"))
    proc: subprocess.Popen[bytes] | None = None
    agent: AgentClient | None = None
    try:
        for name in ("vda.img", "nvme.img", "sda.img"):
            with open(d / name, "wb") as fh:
                fh.truncate(DISK_MIB << 20)
        with open(d / "vda.img", "r+b") as fh:
            fh.write(PATTERN)
        start = time.monotonic()
        proc = subprocess.Popen(
            qemu_argv(image, d), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        agent = AgentClient.connect(d / "agent.sock", timeout=30)
        try:
            agent.wait_ready(timeout=120)
        except AgentError as exc:
            log = (d / "serial.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"{exc}; QEMU exit code {proc.poll()}; serial log tail:\n{log}")
        yield Guest(agent, d, time.monotonic() - start)
    finally:
        if agent is not None:
            agent.close()
        if proc is not None:
            proc.kill()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(d, ignore_errors=True)


@vm
def test_ping(guest: Guest) -> None:
    reply = guest.agent.call("ping", timeout=10)
    fields = reply.fields
    assert reply.words[0] == "pong"
    assert fields["version"] == "1"
    assert fields["kernel"]
    assert float(fields["uptime"]) > 0


@vm
def test_lspci_shows_the_devices_with_their_ids_and_parents(guest: Guest) -> None:
    devices = {d.bdf: d for d in parse_lspci(guest.agent.call("lspci", timeout=10))}
    by_id: dict[str, list[str]] = {}
    for dev in devices.values():
        by_id.setdefault(dev.vendor_device, []).append(dev.bdf)
    assert by_id["1af4:1003"] == ["0000:00:01.0"]  # virtio-serial at addr 0x1
    assert len(by_id["1b36:000c"]) == 3  # the root ports
    (blk,) = by_id["1af4:1042"]
    (nvme,) = by_id["1b36:0010"]
    (scsi,) = by_id["1af4:1048"]
    assert devices[blk].parents == ("0000:00:03.0",)
    assert devices[nvme].parents == ("0000:00:04.0",)
    assert devices[scsi].parents == ("0000:00:05.0",)
    assert devices[blk].driver == "virtio-pci"
    assert devices[blk].pci_class == 0x010000
    assert devices[nvme].pci_class == 0x010802
    assert devices["0000:00:03.0"].driver == "pcieport"


@vm
def test_wait_pci_resolves_a_guest_pci_path(guest: Guest) -> None:
    chain = guest.agent.call("wait-pci", "03/00", "5000", timeout=10).words
    assert chain[0] == "0000:00:03.0"
    assert len(chain) == 2
    lspci = {d.bdf: d for d in parse_lspci(guest.agent.call("lspci", timeout=10))}
    assert lspci[chain[1]].vendor_device == "1af4:1042"


@vm
def test_serial_identifies_nvme_and_virtio_blk(guest: Guest) -> None:
    nvme = guest.agent.call("wait-pci", "04/00", "5000", timeout=10).words[-1]
    blk = guest.agent.call("wait-pci", "03/00", "5000", timeout=10).words[-1]
    assert guest.agent.call("serial", nvme, timeout=10).fields == {"serial": "PODPLUG-NVME"}
    assert guest.agent.call("serial", blk, timeout=10).fields == {"serial": "PODPLUG-VDA"}
    with pytest.raises(AgentError, match="not-found"):
        guest.agent.call("serial", "0000:00:01.0", timeout=10)  # virtio-serial: no serial


@vm
def test_wait_pci_times_out_for_an_absent_device(guest: Guest) -> None:
    start = time.monotonic()
    with pytest.raises(HotplugTimeout, match="guest wait-pci 06/00: PCI device"):
        guest.agent.call("wait-pci", "06/00", "300", timeout=10)
    assert time.monotonic() - start < 5
    with pytest.raises(AgentError, match=r"not-found .*not a bridge"):
        guest.agent.call("wait-pci", "01/00", "300", timeout=10)  # virtio-serial, no bus


@vm
def test_block_node_of_pci_path_reads_the_host_pattern(guest: Guest) -> None:
    assert guest.agent.call("blk-of-pci", "03/00", "2000", timeout=10).words == ("vda",)
    major, minor = parse_devnum(guest.agent.call("devnum", "vda", timeout=10).fields["devnum"])
    assert guest.agent.call("devnum", "/dev/vda", timeout=10).fields == {
        "devnum": f"{major}:{minor}",
        "type": "b",
    }
    fields = guest.agent.call("rw", "/dev/vda", timeout=30).fields
    assert fields["read"] == "4096"
    assert fields["md5"] == hashlib.md5(PATTERN).hexdigest()
    assert fields["write"] == "ok"
    assert fields["restored"] == "ok"
    offset = int(fields["offset"])
    image = (guest.workdir / "vda.img").read_bytes()
    assert image[offset : offset + 4096] == b"\0" * 4096  # restored on the host file too


@vm
def test_mknod_in_container_dir_uses_guest_numbers(guest: Guest) -> None:
    devnum = guest.agent.call("devnum", "vda", timeout=10).fields["devnum"]
    major, minor = parse_devnum(devnum)
    reply = guest.agent.call(
        "mknod", "/run/podplug/c1", "/dev/xvda", "b", str(major), str(minor), "0660", timeout=10
    )
    assert reply.fields == {
        "path": "/run/podplug/c1/dev/xvda",
        "type": "b",
        "devnum": devnum,
        "mode": "660",
    }
    node = guest.agent.call("rw", "/run/podplug/c1/dev/xvda", timeout=30).fields
    assert node["md5"] == hashlib.md5(PATTERN).hexdigest()
    for bad in (
        ("/tmp/x", "/dev/a", "b", "1", "2", "0600"),  # DIR outside /run/podplug
        ("/run/podplug/c1", "/dev/../../etc/x", "b", "1", "2", "0600"),
        ("/run/podplug/c1", "/dev/a", "p", "1", "2", "0600"),
        ("/run/podplug/c1", "/dev/a", "b", "x", "2", "0600"),
        ("/run/podplug/c1", "/dev/a", "b", "1", "2", "0999"),
    ):
        with pytest.raises(AgentError, match="invalid"):
            guest.agent.call("mknod", *bad, timeout=10)


@vm
def test_scsi_address_resolves_and_fs_check_passes(guest: Guest) -> None:
    assert guest.agent.call("blk-of-scsi", "1:2", "2000", timeout=10).words == ("sda",)
    assert guest.agent.call("blk-of-scsi", "0:0:1:2", timeout=10).words == ("sda",)
    assert guest.agent.call("blk-of-pci", "05/00", timeout=10).words == ("sda",)
    with pytest.raises(AgentError, match="not-found"):
        guest.agent.call("blk-of-scsi", "7:7", timeout=10)
    with pytest.raises(HotplugTimeout, match="SCSI disk"):
        guest.agent.call("blk-of-scsi", "7:7", "100", timeout=10)
    fields = guest.agent.call("fs-check", "/dev/sda", timeout=60).fields
    assert fields == {"fs": fields["fs"], "write": "ok", "readback": "ok"}
    assert fields["fs"] in ("ext2", "ext4")
    with open(guest.workdir / "sda.img", "rb") as fh:  # the superblock reached the host file
        fh.seek(1024 + 56)
        assert fh.read(2) == b"\x53\xef"


@vm
def test_vfio_bind_of_the_nvme_stand_in(guest: Guest) -> None:
    (nvme,) = guest.agent.call("wait-pci", "04/00", "2000", timeout=10).words[-1:]
    fields = guest.agent.call("vfio-bind", nvme, timeout=60).fields
    group = int(fields["group"])
    assert fields["dev"] == f"/dev/vfio/{group}"
    assert fields["driver"] == "vfio-pci"
    assert fields["previous"] == "nvme"
    assert guest.agent.call("devnum", fields["dev"], timeout=10).fields == {
        "devnum": fields["devnum"],
        "type": "c",
    }
    devices = {d.bdf: d for d in parse_lspci(guest.agent.call("lspci", timeout=10))}
    assert devices[nvme].driver == "vfio-pci"
    again = guest.agent.call("vfio-bind", nvme, timeout=30).fields  # idempotent
    assert again["group"] == fields["group"]
    assert again["previous"] == "vfio-pci"
    with pytest.raises(AgentError, match="not-found"):
        guest.agent.call("vfio-bind", "0000:0f:00.0", timeout=10)


@vm
@pytest.mark.parametrize(
    ("verb", "args", "code"),
    [
        ("frobnicate", (), "unknown-verb"),
        ("wait-pci", (), "usage"),
        ("wait-pci", ("zz/00", "10"), "invalid"),
        ("wait-pci", ("03/00", "soon"), "invalid"),
        ("ping", ("extra",), "usage"),
        ("rw", ("relative/path",), "invalid"),
        ("rw", ("/dev/../etc/passwd",), "invalid"),
        ("rw", ("/dev/nonexistent",), "not-found"),
        ("devnum", ("nothing-like-this",), "not-found"),
        ("vfio-bind", ("01:00.0",), "invalid"),
        ("fs-check", ("/dev/null",), "not-found"),
        ("blk-of-scsi", ("a:b",), "invalid"),
    ],
)
def test_bad_requests_get_err_replies(
    guest: Guest, verb: str, args: tuple[str, ...], code: str
) -> None:
    with pytest.raises(AgentError, match=f"guest agent {verb}: {code}"):
        guest.agent.call(verb, *args, timeout=10)
    assert guest.agent.call("ping", timeout=10).words[0] == "pong"


@vm
def test_garbage_bytes_get_an_err_line_and_the_agent_keeps_serving(guest: Guest) -> None:
    agent = guest.agent
    for raw in (b"\xff\xfe\x00\x01garbage\n", b"bad!id ping\n", b"x" * 40 + b" ping\n"):
        agent.send_raw(raw)
        deadline = time.monotonic() + 10
        line = agent.read_line(deadline, "garbage")
        while line is None:
            line = agent.read_line(deadline, "garbage")
        assert line.request_id == UNKNOWN_ID
        assert line.kind == "err"
        assert line.text.startswith("malformed")
    agent.send_raw(b"\n\r\n   \n")  # blank lines: no reply
    agent.send_raw(b"onlyid\n")
    deadline = time.monotonic() + 10
    line = agent.read_line(deadline, "garbage")
    assert line is not None
    assert (line.request_id, line.kind) == ("onlyid", "err")
    assert line.text.startswith("malformed")
    assert agent.call("ping", timeout=10).words[0] == "pong"

