"""Gather the planner's three inputs from files: the one wiring point for reading.

Thin shell: Kata configuration (with the spec's annotation overrides applied), the OCI
spec with CDI device nodes merged in, and a host snapshot from sysfs. Every error names the
file it came from (the loaders add the path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from podplug.errors import ConfigError
from podplug.host.sysfs import scan_host
from podplug.inputs.cdi import DEFAULT_CDI_DIRS, apply_cdi, cdi_references, load_cdi_dirs
from podplug.inputs.kata import RuntimeConfig, apply_annotations, load_kata_config
from podplug.inputs.oci import load_oci_spec
from podplug.model.host import HostInventory
from podplug.model.request import ContainerRequest


@dataclass(frozen=True)
class Inputs:
    """Everything :func:`podplug.plan.plan.plan` takes."""

    config: RuntimeConfig
    request: ContainerRequest
    inventory: HostInventory


def load_inputs(
    config_path: str | Path,
    spec_path: str | Path,
    *,
    cdi_dirs: Sequence[str | Path] = DEFAULT_CDI_DIRS,
    sysfs_root: str | Path = "/sys",
) -> Inputs:
    """Read and validate every input.

    :raises InputError: for a bad configuration, spec, annotation or CDI file.
    :raises HostError: when sysfs cannot be read.
    """
    config = load_kata_config(config_path)
    request = load_oci_spec(spec_path)
    try:
        config = apply_annotations(config, request.annotations)
    except ConfigError as exc:
        raise exc.with_path(str(spec_path)) from exc
    if cdi_references(request.annotations):
        request = apply_cdi(request, load_cdi_dirs(cdi_dirs))
    return Inputs(config, request, scan_host(sysfs_root))
