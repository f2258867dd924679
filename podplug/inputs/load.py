"""Gather the planner's three inputs from files: the one wiring point for reading.

Thin shell: Kata configuration (with the spec's annotation overrides applied), the OCI
spec with CDI device nodes merged in (completed from the host's ``/dev``), and a host
snapshot from sysfs. Every error names the
file it came from (the loaders add the path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from podplug.errors import ConfigError
from podplug.host.devnodes import DEV, read_nodes
from podplug.host.sysfs import scan_host
from podplug.inputs.cdi import (
    DEFAULT_CDI_DIRS,
    CdiRegistry,
    apply_cdi,
    cdi_references,
    host_paths,
    load_cdi_dirs,
)
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
    warnings: tuple[str, ...] = ()  # inputs skipped as their reader skips them (CDI files)


def load_inputs(
    config_path: str | Path,
    spec_path: str | Path,
    *,
    cdi_dirs: Sequence[str | Path] = DEFAULT_CDI_DIRS,
    sysfs_root: str | Path = "/sys",
    dev_root: str | Path = DEV,
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
    warnings: tuple[str, ...] = ()
    if cdi_references(request.annotations):
        registry = load_cdi_dirs(cdi_dirs)
        warnings = cdi_warnings(registry)
        request = with_cdi(request, registry, dev_root)
    return Inputs(config, request, scan_host(sysfs_root), warnings)


def cdi_warnings(registry: CdiRegistry) -> tuple[str, ...]:
    """One line per CDI spec file the reference would skip, as it skips them."""
    return tuple(f"CDI spec {source} skipped: {problem}" for source, problem in registry.errors)


def with_cdi(request: ContainerRequest, registry: CdiRegistry,
             dev_root: str | Path = DEV) -> ContainerRequest:
    """The request with its CDI devices' nodes, completed from the host's ``/dev``."""
    return apply_cdi(request, registry, read_nodes(host_paths(request, registry), dev_root))
