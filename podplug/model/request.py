"""What the container asks for: its device nodes and annotations, from the OCI spec and CDI.

Built by :mod:`podplug.inputs.oci` and :mod:`podplug.inputs.cdi`; consumed by the planner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from podplug.model.enums import ContainerType, NodeType


@dataclass(frozen=True)
class ContainerDevice:
    """One OCI ``linux.devices`` entry (or a CDI ``deviceNodes`` entry merged into it).

    ``path`` is the path inside the container; ``host_path`` is where the node lives on the
    host when a CDI spec said so (``hostPath``), else ``None`` (then it is found by
    major:minor, as Kata's ``GetHostPath`` does).
    """

    path: str
    type: NodeType
    major: int
    minor: int
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    host_path: str | None = None
    source: str = "oci"  # "oci", or the CDI device name "vendor.com/class=name"


@dataclass(frozen=True)
class ContainerRequest:
    """Everything the planner needs to know about one container."""

    devices: tuple[ContainerDevice, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    container_type: ContainerType = ContainerType.CONTAINER

    @property
    def is_sandbox(self) -> bool:
        return self.container_type is ContainerType.SANDBOX
