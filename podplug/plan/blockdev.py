"""How a volume's block node is opened: the Kata block keys, as each runtime sends them.

Pure. Facts (Kata main, 2026-08; QEMU ``qapi/block-core.json``):

* Both runtimes put ``block_device_aio`` on the protocol node (``file: {"aio": ...}``;
  ``io_uring`` when unset).
* The Go runtime adds ``"cache": {"direct": D, "no-flush": N}`` to the ``raw`` node only
  when ``block_device_cache_set = true`` (govmm ``ExecuteBlockdevAddWithCache``).
  runtime-rs always sends ``"cache": {"direct": D}`` on the protocol node
  (``hotplug_block_device``) and reads neither ``block_device_cache_set`` nor
  ``block_device_cache_noflush``.
* QEMU refuses ``aio=native`` without ``cache.direct=on`` ("aio=native was specified, but
  it requires cache.direct=on", measured with QEMU 7.2 here), so Kata's hot-plug of such a
  volume fails. podplug plans ``threads`` instead and says so, naming the keys that keep
  ``native``.
* ``io_uring`` needs QEMU built with liburing and a kernel that lets QEMU set up a ring
  (``kernel.io_uring_disabled``, seccomp). :func:`podplug.vm.probe.probe_qemu` asks the
  binary for real; where it cannot, podplug plans ``threads`` (QEMU's own default) and says
  so. Kata has no such fallback: its hot-plug fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from podplug.inputs.kata import RuntimeConfig
from podplug.model.enums import BlockAio, KataRuntime
from podplug.plan.model import cache_is_direct


@dataclass(frozen=True)
class BlockdevShape:
    """The ``aio`` and cache options every planned volume's ``blockdev-add`` carries."""

    aio: BlockAio
    node_cache: tuple[bool, bool] | None = None  # raw node: (direct, no-flush); Go runtime
    file_direct: bool | None = None  # protocol node: cache.direct; runtime-rs
    notes: tuple[str, ...] = ()

    @property
    def direct(self) -> bool:
        """Whether QEMU opens the volume with ``O_DIRECT``."""
        return cache_is_direct(self.node_cache, self.file_direct)


def blockdev_shape(config: RuntimeConfig, *, io_uring: bool = True) -> BlockdevShape:
    """The block node options the configuration asks for, with QEMU's fallbacks named.

    :param io_uring: whether the QEMU binary that runs the plan can use ``aio=io_uring``
        on this host (probed; assumed when no binary is given).
    """
    hv = config.hypervisor
    keys = hv.block
    notes: list[str] = []
    if config.runtime is KataRuntime.RUST:
        node_cache = None
        file_direct: bool | None = keys.cache_direct
        if keys.cache_set or keys.cache_noflush:
            notes.append(f"[{hv.section}] block_device_cache_set/_noflush are not read by "
                         "runtime-rs: only block_device_cache_direct reaches QEMU")
    else:
        node_cache = (keys.cache_direct, keys.cache_noflush) if keys.cache_set else None
        file_direct = None
        if not keys.cache_set and (keys.cache_direct or keys.cache_noflush):
            notes.append(f"[{hv.section}] block_device_cache_direct/_noflush apply only with "
                         "block_device_cache_set = true: not sent")
    aio = keys.aio
    shape = BlockdevShape(aio, node_cache, file_direct)
    if aio is BlockAio.NATIVE and not shape.direct:
        aio = BlockAio.THREADS
        keep = ("block_device_cache_direct = true" if config.runtime is KataRuntime.RUST
                else "block_device_cache_set = true and block_device_cache_direct = true")
        notes.append(f'[{hv.section}] block_device_aio = "native" needs cache.direct=on, '
                     "which QEMU requires (Kata's hot-plug fails): planned with aio=threads; "
                     f"set {keep} to keep native")
    elif aio is BlockAio.IO_URING and not io_uring:
        aio = BlockAio.THREADS
        notes.append("aio=io_uring is not available to this QEMU on this host (probed): "
                     "planned with aio=threads, QEMU's default (Kata has no fallback: its "
                     "hot-plug fails)")
    return BlockdevShape(aio, node_cache, file_direct, tuple(notes))
