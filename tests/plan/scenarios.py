"""The planner's scenarios: every golden file is one of these.

The configuration axes are spelled out here as strings, NOT derived from podplug's enums, so
the coverage guard (``test_coverage_guard.py``) fails when an enum grows a value that no
scenario exercises.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from podplug.errors import PodplugError
from podplug.model.enums import HotplugMode
from podplug.model.host import Bar, HostInventory
from podplug.model.request import ContainerDevice, ContainerRequest
from podplug.plan.model import Plan
from podplug.plan.plan import plan
from podplug.render.argv import render_argv
from podplug.render.qmp import render_qmp
from podplug.render.tree import render_tree
from tests.support import (
    PREF64,
    VHOST_ON,
    block,
    config,
    inventory,
    iommufd_dev,
    request,
    vfio_control,
    vfio_group,
    vhost_user,
    with_store,
)

MODES = ("vfio", "guest-kernel")
PORTS = ("no-port", "root-port", "switch-port", "bridge-port")
DRIVERS = ("virtio-blk", "virtio-scsi")


@dataclass(frozen=True)
class Scenario:
    name: str
    vfio_mode: str = "vfio"
    cold: str = "no-port"
    hot: str = "no-port"
    driver: str = "virtio-blk"
    devices: tuple[ContainerDevice, ...] = ()
    host: Callable[[], HostInventory] = field(default=lambda: inventory(1, 2, blocks=2))
    sandbox: bool = False
    root_ports: int = 0
    switch_ports: int = 0
    bridges: int = 1
    hotplug: HotplugMode = HotplugMode.ACPI
    hypervisor: str = "qemu"
    keys: tuple[tuple[str, object], ...] = ()  # more [hypervisor.*] keys (the block keys)
    runtime_rs: bool = False
    io_uring: bool = True  # can the QEMU that runs the plan use aio=io_uring here?

    def request(self) -> ContainerRequest:
        return request(*self.devices, sandbox=self.sandbox)

    def run(self) -> Plan:
        cfg = config(self.vfio_mode, self.cold, self.hot, self.driver,
                     root_ports=self.root_ports, switch_ports=self.switch_ports,
                     bridges=self.bridges, hypervisor=self.hypervisor,
                     machine="q35" if self.hypervisor == "qemu" else "",
                     extra=dict(self.keys), runtime_rs=self.runtime_rs)
        return plan(cfg, self.request(), self.host(), hotplug=self.hotplug,
                    io_uring=self.io_uring)


GPU_AND_XDA = (vfio_control(), vfio_group(12), block(0, "/dev/xda"))


def _big_bar_host() -> HostInventory:
    """Groups 12 and 13: GPU (BAR0 16 MiB, BAR1 128 GiB prefetchable) + audio function."""
    host = inventory(2, 2, blocks=1)
    functions = {bdf: replace(f, bars=(f.bars[0], Bar(1, 128 << 30, PREF64)))
                 if f.bdf.function == 0 else f for bdf, f in host.functions.items()}
    return replace(host, functions=functions)

# The seed's scenarios (issue #11288 and its guest-kernel mirror).
SEED = (
    Scenario("seed-vfio-root-port", "vfio", cold="root-port", devices=GPU_AND_XDA),
    Scenario("seed-vfio-switch-port", "vfio", cold="switch-port", devices=GPU_AND_XDA),
    Scenario("seed-vfio-bridge-port", "vfio", cold="bridge-port", devices=GPU_AND_XDA),
    Scenario("seed-guest-kernel-root-port", "guest-kernel", cold="root-port",
             devices=GPU_AND_XDA),
)


def _matrix() -> tuple[Scenario, ...]:
    out = []
    for mode, cold, hot, driver in itertools.product(MODES, PORTS, PORTS, DRIVERS):
        name = f"matrix-{mode}-cold-{cold}-hot-{hot}-{driver}"
        out.append(Scenario(name, mode, cold, hot, driver, devices=GPU_AND_XDA))
    return tuple(out)


MATRIX = _matrix()

EXTRA = (
    Scenario("sandbox-cold-vfio", "vfio", cold="root-port", devices=GPU_AND_XDA, sandbox=True),
    Scenario("sandbox-hot-vfio", "vfio", hot="root-port", devices=GPU_AND_XDA, sandbox=True),
    Scenario("two-function-group-two-blocks-hot-switch", "vfio", hot="switch-port",
             devices=(vfio_control(), vfio_group(12), block(0), block(1))),
    Scenario("iommufd-and-block-cold-root", "guest-kernel", cold="root-port",
             devices=(iommufd_dev(0), block(0)), host=lambda: inventory(0, iommufd=1)),
    Scenario("eight-gpus-four-nvswitches-cold-root", "guest-kernel", cold="root-port",
             root_ports=8,
             devices=tuple(vfio_group(12 + g) for g in range(8))
             + tuple(vfio_group(100 + n) for n in range(4)) + (block(0),),
             host=lambda: inventory(8, 2, blocks=1, nvswitches=4)),
    Scenario("unknown-group-and-missing-block-rejected", "vfio", cold="root-port",
             devices=(vfio_group(77), block(5))),
    Scenario("no-bridges-virtio-blk-on-root-ports", "vfio", hot="root-port", bridges=0,
             devices=(vfio_group(12), block(0), block(1))),
    Scenario("native-hotplug-volumes-get-root-ports", "vfio", hot="root-port",
             devices=GPU_AND_XDA, hotplug=HotplugMode.NATIVE),
    Scenario("native-hotplug-hot-bridge-port-rejected", "vfio", hot="bridge-port",
             devices=GPU_AND_XDA, hotplug=HotplugMode.NATIVE),
    Scenario("clh-cold-root-port-gpu-and-block", "vfio", cold="root-port", hypervisor="clh",
             devices=GPU_AND_XDA),
    Scenario("clh-hot-switch-port-rejected-config", "vfio", hot="switch-port",
             hypervisor="clh", devices=GPU_AND_XDA),
    Scenario("spare-switch-ports-block-only", "guest-kernel", switch_ports=4,
             driver="virtio-scsi", devices=(block(0), block(1))),
    # hot-plug windows: a 128 GiB BAR on a switch downstream port (a boot-time keeper of
    # 128 GiB, plus one for the spare), and on a root port with a spare (reserves of 257G)
    Scenario("hot-switch-port-128g-gpu-and-spare", "vfio", hot="switch-port", switch_ports=2,
             devices=GPU_AND_XDA, host=_big_bar_host),
    Scenario("hot-root-port-128g-gpu-and-spare", "guest-kernel", hot="root-port",
             root_ports=2, devices=GPU_AND_XDA, host=_big_bar_host),
)

_SCSI_AND_BLK = (block(0, "/dev/xda"), block(1, "/dev/xdb"))

# The Kata block keys (issue 14): what reaches blockdev-add in each runtime, and QEMU's
# fallbacks (native without cache.direct; io_uring where the host has none).
BLOCK_KEYS = (
    Scenario("block-aio-threads", "guest-kernel", devices=_SCSI_AND_BLK,
             keys=(("block_device_aio", "threads"),)),
    Scenario("block-aio-native-cache-direct", "guest-kernel", devices=_SCSI_AND_BLK,
             driver="virtio-scsi",
             keys=(("block_device_aio", "native"), ("block_device_cache_set", True),
                   ("block_device_cache_direct", True))),
    Scenario("block-aio-native-without-direct-falls-back", "guest-kernel",
             devices=_SCSI_AND_BLK, keys=(("block_device_aio", "native"),)),
    Scenario("block-aio-io-uring-unavailable-falls-back", "guest-kernel",
             devices=_SCSI_AND_BLK, io_uring=False),
    Scenario("block-cache-set-noflush", "guest-kernel", devices=_SCSI_AND_BLK,
             keys=(("block_device_cache_set", True), ("block_device_cache_noflush", True))),
    Scenario("block-cache-direct-without-set-not-sent", "guest-kernel",
             devices=_SCSI_AND_BLK, keys=(("block_device_cache_direct", True),)),
    Scenario("block-runtime-rs-cache-direct-on-file-node", "guest-kernel", cold="root-port",
             devices=_SCSI_AND_BLK, runtime_rs=True,
             keys=(("block_device_aio", "native"), ("block_device_cache_set", True),
                   ("block_device_cache_direct", True), ("block_device_cache_noflush", True))),
)

# vhost-user-blk (issue 14): a raw volume, and a vhost-user-blk one from Kata's store.
_RAW_AND_VHOST = (block(0, "/dev/xda"), block(1, "/dev/xdb"), vhost_user(0, "/dev/vub0"))
VHOST_USER = (
    Scenario("vhost-user-blk-seed-virtio-blk", "vfio", cold="root-port",
             devices=(*GPU_AND_XDA, vhost_user(0)), keys=VHOST_ON,
             host=lambda: with_store(inventory(1, 2, blocks=1))),
    Scenario("vhost-user-blk-beside-scsi-volumes", "guest-kernel", driver="virtio-scsi",
             devices=_RAW_AND_VHOST, keys=(*VHOST_ON, ("vhost_user_reconnect_timeout_sec", 5)),
             host=lambda: with_store(inventory(0, blocks=2))),
    Scenario("vhost-user-blk-no-bridges-own-root-port", "guest-kernel", bridges=0,
             devices=_RAW_AND_VHOST, keys=(("enable_vhost_user_store", True),),
             host=lambda: with_store(inventory(0, blocks=2), present=False)),
    Scenario("vhost-user-blk-store-disabled-rejected", "guest-kernel", devices=_RAW_AND_VHOST,
             host=lambda: with_store(inventory(0, blocks=2))),
    Scenario("vhost-user-blk-not-in-store-rejected", "guest-kernel", devices=_RAW_AND_VHOST,
             keys=VHOST_ON, host=lambda: inventory(0, blocks=2)),
    Scenario("vhost-user-blk-runtime-rs-rejected", "guest-kernel", cold="root-port",
             devices=_RAW_AND_VHOST, keys=VHOST_ON, runtime_rs=True,
             host=lambda: with_store(inventory(0, blocks=2))),
)

ALL = SEED + MATRIX + EXTRA + BLOCK_KEYS + VHOST_USER


def golden(scenario: Scenario) -> dict[str, object]:
    """What a scenario's golden file holds: argv, QMP, agent entries and buckets."""
    try:
        result = scenario.run()
    except PodplugError as exc:
        return {"error": str(exc), "exit_code": exc.exit_code}
    return {
        "buckets": {d.request.path: d.bucket.value for d in result.devices},
        "reasons": {d.request.path: d.reason for d in result.devices},
        "container_devices": [d.request.path for d in result.container_devices],
        "agent": [a.as_json() for a in result.agent_devices],
        "argv": render_argv(result) if scenario.hypervisor == "qemu" else None,
        "qmp": render_qmp(result) if scenario.hypervisor == "qemu" else None,
        "tree": render_tree(result).splitlines(),
        "notes": {d.request.path: list(d.notes) for d in result.devices if d.notes},
    }
