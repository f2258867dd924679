"""Read the planner's inputs from files: the one place input files are opened.

Thin shell over the pure parsers of :mod:`podplug.inputs.kata`, :mod:`.oci` and :mod:`.cdi`,
which take text only. Every file goes through :func:`read_input`: opened without blocking
(a FIFO or a device named by mistake, or by someone else, is refused at once rather than
read or waited on), required to be a regular file, at most :data:`MAX_INPUT_BYTES`, and
UTF-8. Every error names the file. A directory of CDI specs yields only its regular
``*.json`` / ``*.yaml`` files, never following a link (as the reference scans them).

The CDI half (:mod:`.cdi` and :mod:`podplug.host.devnodes`) is imported by the functions
that use it, so a spec asking for no CDI device does not pay for importing it.

What the planner gets: the Kata configuration (with the spec's annotation overrides
applied), the OCI spec with CDI device nodes merged in (completed from the host's ``/dev``),
and a host snapshot from sysfs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from podplug.errors import CdiError, ConfigError, InputError, SpecError
from podplug.host.sysfs import scan_host
from podplug.inputs.cdi_defaults import DEFAULT_CDI_DIRS, DEV, requests_cdi
from podplug.inputs.kata import RuntimeConfig, apply_annotations, parse_kata_text
from podplug.inputs.oci import parse_oci_text
from podplug.model.enums import NodeType
from podplug.model.host import HostInventory
from podplug.model.request import ContainerRequest

if TYPE_CHECKING:
    from podplug.inputs.cdi import CdiRegistry, CdiSpec

MAX_INPUT_BYTES = 16 << 20  # far above any real configuration, spec or CDI file

_E = TypeVar("_E", ConfigError, SpecError, CdiError)


def read_input(path: str | os.PathLike[str]) -> str:
    """The text of one input file, or an :class:`InputError` saying why not (one line).

    Links are followed (``/etc/kata-containers/configuration.toml`` often is one); what
    they lead to must be a regular file. Nothing else is read, and nothing blocks.
    """
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise InputError(f"{where}: cannot open: {err.strerror}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{where}: not a regular file; refused without reading")
        if info.st_size > MAX_INPUT_BYTES:
            raise InputError(f"{where}: {info.st_size} bytes, more than the "
                             f"{MAX_INPUT_BYTES >> 20} MiB an input file may have")
        data = os.read(fd, MAX_INPUT_BYTES + 1)
        while len(data) <= MAX_INPUT_BYTES and (chunk := os.read(fd, 1 << 20)):
            data += chunk
    except OSError as err:
        raise InputError(f"{where}: cannot read: {err.strerror}") from err
    finally:
        os.close(fd)
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{where}: more than {MAX_INPUT_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{where}: not UTF-8 (byte {err.start}: {data[err.start]:#04x})") \
            from err


def _named(path: str | os.PathLike[str], parse: Callable[[str], object],
           kind: type[_E]) -> object:
    where = str(path)
    text = read_input(path)
    try:
        return parse(text)
    except kind as err:
        raise err.with_path(where) from err


def load_kata_config(path: str | os.PathLike[str]) -> RuntimeConfig:
    """Read and parse a Kata ``configuration.toml``; errors name the file.

    :raises InputError: for an unreadable file, ``ConfigError`` for a bad key,
        ``UnsupportedPlatform`` for a platform podplug does not plan.
    """
    from podplug.errors import UnsupportedPlatform

    where = str(path)
    text = read_input(path)
    try:
        return parse_kata_text(text)
    except (ConfigError, UnsupportedPlatform) as err:
        raise err.with_path(where) from err


def load_oci_spec(path: str | os.PathLike[str]) -> ContainerRequest:
    """Read ``config.json``; every error names the file."""
    result = _named(path, parse_oci_text, SpecError)
    assert isinstance(result, ContainerRequest)
    return result


def load_cdi_file(path: str | os.PathLike[str]) -> CdiSpec:
    """Read and validate one CDI spec file; errors name it."""
    from podplug.inputs.cdi import parse_cdi_text

    where = str(path)
    text = read_input(path)
    try:
        return parse_cdi_text(text, source=where)
    except CdiError as err:
        raise CdiError(err.subject, err.problem, path=where) from err


def spec_files(folder: Path) -> list[Path]:
    """The spec files of one directory, as the reference scans it: regular files (not
    symbolic links) directly in it, named ``*.json`` or ``*.yaml``, in name order."""
    from podplug.inputs.cdi import SPEC_FILE_SUFFIXES

    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise CdiError(str(folder), f"cannot list the directory: {err.strerror}") from err
    return [Path(e.path) for e in entries
            if e.name.endswith(SPEC_FILE_SUFFIXES) and e.is_file(follow_symlinks=False)]


def load_cdi_dirs(dirs: Sequence[str | Path] = DEFAULT_CDI_DIRS) -> CdiRegistry:
    """Load every spec file of each directory; later directories take precedence
    (``/var/run/cdi`` over ``/etc/cdi``). A missing directory is skipped; a bad file is
    recorded against it (``CdiRegistry.errors``) and the others still load."""
    from podplug.inputs.cdi import CdiRegistry

    layers: list[list[CdiSpec]] = []
    errors: list[tuple[str, str]] = []
    for folder in map(Path, dirs):
        if not folder.exists():
            continue
        if not folder.is_dir():
            raise CdiError(str(folder), "is not a directory")
        layer = []
        for spec_file in spec_files(folder):
            try:
                layer.append(load_cdi_file(spec_file))
            except CdiError as err:
                errors.append((str(spec_file), f"{err.subject}: {err.problem}"))
            except InputError as err:
                errors.append((str(spec_file), str(err).removeprefix(f"{spec_file}: ")))
        layers.append(layer)
    return CdiRegistry.from_layers(layers, searched=[str(d) for d in dirs], errors=errors)


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
    if requests_cdi(request.annotations):
        from podplug.inputs.cdi import cdi_references

        cdi_references(request.annotations)  # a malformed name: refused before any CDI file
        registry = load_cdi_dirs(cdi_dirs)
        warnings = cdi_warnings(registry)
        request = with_cdi(request, registry, dev_root)
    return Inputs(config, request, with_vhost_user_store(scan_host(sysfs_root), config,
                                                         request), warnings)


def with_vhost_user_store(inventory: HostInventory, config: RuntimeConfig,
                          request: ContainerRequest) -> HostInventory:
    """The inventory with Kata's vhost-user store read, when the configuration enables it
    and the spec names a vhost-user-blk node (major 241); else as it was."""
    from podplug.host.vhost_store import scan_store
    from podplug.plan.route import VHOST_USER_BLK_MAJOR

    keys = config.hypervisor.block
    wanted = any(d.type is NodeType.BLOCK and d.major == VHOST_USER_BLK_MAJOR
                 for d in request.devices)
    if not (keys.enable_vhost_user_store and wanted):
        return inventory
    store = keys.vhost_user_store_path
    return replace(inventory, vhost_user_nodes=scan_store(store), vhost_user_store=store)


def cdi_warnings(registry: CdiRegistry) -> tuple[str, ...]:
    """One line per CDI spec file the reference would skip, as it skips them."""
    return tuple(f"CDI spec {source} skipped: {problem}" for source, problem in registry.errors)


def with_cdi(request: ContainerRequest, registry: CdiRegistry,
             dev_root: str | Path = DEV) -> ContainerRequest:
    """The request with its CDI devices' nodes, completed from the host's ``/dev``."""
    from podplug.host.devnodes import read_nodes
    from podplug.inputs.cdi import apply_cdi, host_paths

    return apply_cdi(request, registry, read_nodes(host_paths(request, registry), dev_root))
