"""podplug: plan, plug and prove every device of a VM-isolated container.

Kata Containers' device layer done right: each device the container asks for is routed on
its own (cold-plugged VFIO, hot-plugged VFIO, hot-plugged block, plain node, or rejected
with a reason), the q35 PCIe topology is planned at boot, and ``podplug run`` proves in a
real guest that every device opens and works.

Where to start reading: :mod:`podplug.plan.plan` (the pure planner), then
:mod:`podplug.run.session` (the one place that carries a plan out), then
:mod:`podplug.errors` (the exception tree and its exit codes).
"""

from podplug.errors import (
    ConfigError,
    InputError,
    PlanError,
    PodplugError,
    TopologyExhausted,
    VmError,
)
from podplug.inputs.kata import RuntimeConfig, parse_kata_config
from podplug.model.enums import Bucket, PortKind, VfioMode
from podplug.model.host import HostInventory
from podplug.model.request import ContainerDevice, ContainerRequest
from podplug.plan.model import Plan
from podplug.plan.plan import plan

__all__ = [  # noqa: RUF022 -- most important first (qemu.qmp style), not alphabetical
    "plan",
    "parse_kata_config",
    "Plan",
    "RuntimeConfig",
    "ContainerRequest",
    "ContainerDevice",
    "HostInventory",
    "Bucket",
    "PortKind",
    "VfioMode",
    "PodplugError",
    "InputError",
    "ConfigError",
    "PlanError",
    "TopologyExhausted",
    "VmError",
]
