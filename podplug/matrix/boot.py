"""``podplug matrix --boot``: run chosen combinations for real through ``podplug run``.

Shell. Each chosen combination boots a VM with the matrix's stand-in host (its loop volumes
backed by temporary files, its VFIO functions emulated: the host snapshot is marked as not
the real ``/sys``), and reports booted / guest saw N of N / time.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from podplug.errors import PodplugError
from podplug.inputs.load import Inputs
from podplug.matrix.check import (
    BlockIo,
    Combination,
    Mix,
    Outcome,
    Result,
    config_for,
    matrix_host,
    request_for,
)
from podplug.model.enums import BlockDriver, ContainerType, Hypervisor, PortKind, VfioMode
from podplug.run.session import RunOptions, run
from podplug.vm.process import Accel

SEED = "seed"


def _is_sample(c: Combination) -> bool:
    """The booted sample: the seed's four scenarios, one per block driver, one hot-plug
    combination per port type (with Kata's default block I/O); and a raw volume beside a
    vhost-user-blk one, once per block driver (virtio-scsi with aio=native and
    cache.direct, so O_DIRECT is opened for real)."""
    if c.hypervisor is not Hypervisor.QEMU or c.container is not ContainerType.CONTAINER:
        return False
    if c.mix is Mix.BLOCK_VHOST_USER:
        return (c.vfio_mode, c.cold, c.hot) == (
            VfioMode.GUEST_KERNEL, PortKind.ROOT_PORT, PortKind.NO_PORT) and c.aio is (
            BlockIo.IO_URING if c.driver is BlockDriver.VIRTIO_BLK else BlockIo.NATIVE_DIRECT)
    if c.aio is not BlockIo.IO_URING:
        return False
    if c.mix is not Mix.VFIO_BLOCK:
        return False
    seed = c.hot is PortKind.NO_PORT and c.driver is BlockDriver.VIRTIO_BLK and (
        (c.vfio_mode is VfioMode.VFIO and c.cold is not PortKind.NO_PORT)
        or (c.vfio_mode is VfioMode.GUEST_KERNEL and c.cold is PortKind.ROOT_PORT))
    scsi = (c.vfio_mode, c.cold, c.hot, c.driver) == (
        VfioMode.GUEST_KERNEL, PortKind.ROOT_PORT, PortKind.NO_PORT, BlockDriver.VIRTIO_SCSI)
    hot = c.cold is PortKind.NO_PORT and c.hot is not PortKind.NO_PORT and (
        c.driver is BlockDriver.VIRTIO_SCSI) == (c.hot is PortKind.SWITCH_PORT) and (
        c.vfio_mode is VfioMode.VFIO)
    return seed or scsi or hot


def choose(results: Sequence[Result], sample: str) -> list[int]:
    """Indices to boot: ``seed`` (the sample above), ``all`` (every planned QEMU one), or
    comma-separated indices."""
    bootable = [i for i, r in enumerate(results) if r.outcome is Outcome.PLANNED
                and r.combination.hypervisor is Hypervisor.QEMU]
    if sample == "all":
        return bootable
    if sample == SEED:
        return [i for i in bootable if _is_sample(results[i].combination)]
    picked = [int(x) for x in sample.split(",")]
    bad = [i for i in picked if i not in bootable]
    if bad:
        raise ValueError(f"not bootable (rejected, or not QEMU): {bad}")
    return picked


def boot_one(c: Combination, cache_dir: Path | None, qemu: str | None = None) -> str:
    """Run one combination (under ``qemu``, ``--qemu``, else the configuration's binary);
    'booted, guest saw N of N, T s' or the failure."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="podplug-matrix-") as tmp:
        host = matrix_host()
        blocks = {}
        for key, node in host.block_nodes.items():
            backing = Path(tmp) / f"{node.name}.img"
            with open(backing, "wb") as handle:
                handle.truncate(32 << 20)
            blocks[key] = replace(node, loop_backing_file=str(backing))
        host = replace(host, block_nodes=blocks, sysfs_root="(matrix stand-in host)")
        try:
            report = run(Inputs(config_for(c), request_for(c), host),
                         RunOptions(accel=Accel.TCG, cache_dir=cache_dir, qemu=qemu))
        except PodplugError as exc:
            return f"FAILED to boot: {exc}"
    usable = sum(r.usable for r in report.rows)
    return (f"booted, guest saw {usable} of {len(report.rows)}, "
            f"{time.monotonic() - started:.1f} s")


def boot(results: Sequence[Result], indices: Sequence[int], cache_dir: Path | None,
         progress: Callable[[str], None], qemu: str | None = None) -> dict[int, str]:
    out = {}
    for n, index in enumerate(indices, 1):
        out[index] = boot_one(results[index].combination, cache_dir, qemu)
        progress(f"[{n}/{len(indices)}] #{index} {results[index].combination.label}: "
                 f"{out[index]}")
    return out
