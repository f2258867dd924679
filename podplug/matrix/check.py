"""Every configuration combination, planned and classified (pure).

Axes (issue: ``podplug matrix``): ``vfio_mode`` (2) x ``cold_plug_vfio`` (4) x
``hot_plug_vfio`` (4; the both-set pairs must come out rejected by validation) x
``block_device_driver`` (2) x hypervisor (QEMU q35, Cloud Hypervisor) x device mix (6) x
container type (workload, sandbox): 1,536 combinations, all from the enums, so a new value
anywhere is enumerated at once.

Each combination comes out as one of:

* ``planned``: counts per bucket (devices the plan rejects, each with its reason, count as
  ``rejected`` inside a planned combination: a refusal said out loud is not a loss);
* ``rejected``: the configuration or the plan as a whole is refused, with the message;
* ``DEFECT``: a requested device is missing from the plan, or kept without what it needs
  (a VFIO or block device with no QEMU device, an agent entry missing for a workload
  container, a rejection without a reason). Must never happen; it is checked from the plan's
  output, not assumed.

The host the devices come from is a fixed in-memory stand-in (:func:`matrix_host`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

from podplug.errors import PodplugError
from podplug.inputs.kata import RuntimeConfig, parse_kata_config
from podplug.model.enums import (
    BlockDriver,
    Bucket,
    ContainerType,
    Hypervisor,
    NodeType,
    PortKind,
    VfioMode,
)
from podplug.model.host import (
    IORESOURCE_MEM,
    IORESOURCE_MEM_64,
    IORESOURCE_PREFETCH,
    Bar,
    BlockNode,
    CharNode,
    HostInventory,
    PciFunction,
)
from podplug.model.pci import CLASS_AUDIO, CLASS_DISPLAY_3D, Bdf
from podplug.model.request import ContainerDevice, ContainerRequest
from podplug.plan.model import Plan
from podplug.plan.plan import plan

HYPERVISORS = (Hypervisor.QEMU, Hypervisor.CLOUD_HYPERVISOR)


class Mix(Enum):
    """The device mixes of the matrix."""

    NONE = "none"
    BLOCK = "block"
    VFIO = "vfio-group"
    VFIO_BLOCK = "vfio-group+block"
    TWO_FUNCTION_TWO_BLOCKS = "2fn-group+2-blocks"
    IOMMUFD_BLOCK = "iommufd+block"


class Outcome(Enum):
    PLANNED = "planned"
    REJECTED = "rejected"
    DEFECT = "DEFECT"


@dataclass(frozen=True)
class Combination:
    vfio_mode: VfioMode
    cold: PortKind
    hot: PortKind
    driver: BlockDriver
    hypervisor: Hypervisor
    mix: Mix
    container: ContainerType

    @property
    def label(self) -> str:
        return (f"{self.hypervisor.value} {self.vfio_mode.value} cold={self.cold.value} "
                f"hot={self.hot.value} {self.driver.value} {self.mix.value} "
                f"{self.container.value}")


@dataclass(frozen=True)
class Result:
    combination: Combination
    outcome: Outcome
    counts: Mapping[Bucket, int]
    reason: str = ""
    plan: Plan | None = None


def combinations() -> Iterator[Combination]:
    for values in itertools.product(VfioMode, PortKind, PortKind, BlockDriver, HYPERVISORS,
                                    Mix, ContainerType):
        yield Combination(*values)


def _function(bus: int, fn: int, group: int) -> PciFunction:
    pref = IORESOURCE_MEM | IORESOURCE_MEM_64 | IORESOURCE_PREFETCH
    bars = (Bar(0, 16 << 20, IORESOURCE_MEM), Bar(1, 32 << 30, pref))
    return PciFunction(Bdf(0, bus, 0, fn), 0x10DE, 0x2330 + fn,
                       CLASS_AUDIO if fn else CLASS_DISPLAY_3D, True, bars if fn == 0 else (),
                       "vfio-pci", 0, group)


def matrix_host() -> HostInventory:
    """A stand-in host: group 12 (one GPU function), group 13 (GPU + audio), iommufd cdev
    vfio0 (a GPU in group 14), loop devices 7:0 and 7:1."""
    functions = [_function(0x41, 0, 12), _function(0x42, 0, 13), _function(0x42, 1, 13),
                 _function(0x43, 0, 14)]
    groups = {12: (functions[0].bdf,), 13: (functions[1].bdf, functions[2].bdf),
              14: (functions[3].bdf,)}
    chars = {(236, 12): CharNode(236, 12, "vfio/12"), (236, 13): CharNode(236, 13, "vfio/13"),
             (237, 0): CharNode(237, 0, "vfio/devices/vfio0", functions[3].bdf),
             (10, 196): CharNode(10, 196, "vfio/vfio")}
    blocks = {(7, i): BlockNode(7, i, f"loop{i}", f"/srv/pv{i}.img") for i in range(2)}
    return HostInventory({f.bdf: f for f in functions}, groups, blocks, chars)


_GROUP = ContainerDevice("/dev/vfio/12", NodeType.CHAR, 236, 12, 0o666)
_GROUP2 = ContainerDevice("/dev/vfio/13", NodeType.CHAR, 236, 13, 0o666)
_CDEV = ContainerDevice("/dev/vfio/devices/vfio0", NodeType.CHAR, 237, 0, 0o666)
_XDA = ContainerDevice("/dev/xda", NodeType.BLOCK, 7, 0, 0o660)
_XDB = ContainerDevice("/dev/xdb", NodeType.BLOCK, 7, 1, 0o660)

MIX_DEVICES: Mapping[Mix, tuple[ContainerDevice, ...]] = {
    Mix.NONE: (),
    Mix.BLOCK: (_XDA,),
    Mix.VFIO: (_GROUP,),
    Mix.VFIO_BLOCK: (_GROUP, _XDA),
    Mix.TWO_FUNCTION_TWO_BLOCKS: (_GROUP2, _XDA, _XDB),
    Mix.IOMMUFD_BLOCK: (_CDEV, _XDA),
}


def config_for(c: Combination) -> RuntimeConfig:
    """The combination's configuration, through the real parser (so it validates)."""
    table: dict[str, object] = {
        "cold_plug_vfio": c.cold.value, "hot_plug_vfio": c.hot.value,
        "block_device_driver": c.driver.value, "pcie_root_port": 2, "default_bridges": 1,
    }
    if c.hypervisor is Hypervisor.QEMU:
        table["machine_type"] = "q35"
    return parse_kata_config({"hypervisor": {c.hypervisor.value: table},
                              "runtime": {"vfio_mode": c.vfio_mode.value}})


def request_for(c: Combination) -> ContainerRequest:
    return ContainerRequest(MIX_DEVICES[c.mix], {}, c.container)


def defects(result: Plan, request: ContainerRequest) -> list[str]:
    """Devices lost or half-kept by a plan, read from its output."""
    problems = []
    if [d.request for d in result.devices] != list(request.devices):
        problems.append("plan devices differ from the request")
    listed = {d.request.path for d in result.container_devices}
    for device in result.devices:
        path = device.request.path
        if device.bucket is Bucket.REJECTED:
            if not device.reason:
                problems.append(f"{path}: rejected without a reason")
            continue
        if path not in listed:
            problems.append(f"{path}: kept but not in the container's device list")
        if device.bucket in (Bucket.COLD_VFIO, Bucket.HOT_VFIO, Bucket.HOT_BLOCK):
            if not device.qemu_devices:
                problems.append(f"{path}: {device.bucket.value} without a QEMU device")
            needs_agent = device.bucket is Bucket.HOT_BLOCK or not request.is_sandbox
            if needs_agent and device.agent is None:
                problems.append(f"{path}: no kata-agent entry")
    return problems


def check(c: Combination, host: HostInventory) -> Result:
    """Plan one combination and classify it."""
    request = request_for(c)
    empty = dict.fromkeys(Bucket, 0)
    try:
        result = plan(config_for(c), request, host)
    except PodplugError as exc:
        return Result(c, Outcome.REJECTED, empty, str(exc))
    problems = defects(result, request)
    if problems:
        return Result(c, Outcome.DEFECT, result.counts(), "; ".join(problems), result)
    rejected = [f"{d.request.path}: {d.reason}" for d in result.in_bucket(Bucket.REJECTED)]
    return Result(c, Outcome.PLANNED, result.counts(), "; ".join(rejected), result)


def run_matrix() -> list[Result]:
    host = matrix_host()
    return [check(c, host) for c in combinations()]


def summary(results: list[Result]) -> str:
    """The one-line summary: combinations by outcome, devices by bucket."""
    by_outcome = {o: sum(r.outcome is o for r in results) for o in Outcome}
    buckets = {b: sum(r.counts[b] for r in results) for b in Bucket}
    return (f"{len(results)} combinations: {by_outcome[Outcome.PLANNED]} planned, "
            f"{by_outcome[Outcome.REJECTED]} rejected, {by_outcome[Outcome.DEFECT]} defects; "
            "devices " + ", ".join(f"{n} {b.value}" for b, n in buckets.items()))
