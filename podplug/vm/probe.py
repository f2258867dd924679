"""Which QEMU binary runs a plan, and what it can do: asked once over QMP, cached per binary.

The binary is the Kata configuration's ``[hypervisor.qemu] path`` (Kata's own default,
``/usr/bin/qemu-system-x86_64``, when the file has none), or ``--qemu``, which wins. It is
never looked up in ``$PATH``. :func:`resolve_qemu` checks that it exists and is an
executable file, and names the key it came from when it is not.

:func:`probe_qemu` starts the binary once with ``-machine none`` and asks it over QMP:
``query-version``; ``qom-list-types`` (is there an ``iommufd`` object type?);
``device-list-properties`` of the devices podplug renders (does ``vfio-pci`` take
``iommufd``, ``pcie-root-port`` take ``pref64-reserve``, ``nvme`` take ``pmrdev``?) and
``qom-list-properties`` of the objects (``memory-backend-ram`` ``reserve``);
``query-command-line-options`` (is there ``-sandbox``, that is, seccomp?); and a real
``blockdev-add`` of a small file in its own directory with ``aio=io_uring`` (does this binary,
on this kernel, open a volume with io_uring?), removed at once. The probe itself
runs without the sandbox, since it asks whether there is one. About
0.2 s; the answer is cached under ``<cache>/qemu/`` keyed by the binary's path, inode, size
and modification time, so a changed binary is probed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from podplug.errors import ConfigError, QemuLacksFeature, QmpCommandError, VmError
from podplug.model.qemu import QemuCapabilities, QemuFeature
from podplug.vm.process import Accel, Confinement, Vm

KATA_DEFAULT_QEMU = "/usr/bin/qemu-system-x86_64"  # Kata Makefile QEMUPATH, PREFIX=/usr
PROBE_VERSION = 3

#: feature -> (what to ask, type name, property name or None for "the type exists")
FEATURE_PROBES: dict[QemuFeature, tuple[str, str, str | None]] = {
    QemuFeature.IOMMUFD_OBJECT: ("type", "iommufd", None),
    QemuFeature.VFIO_IOMMUFD: ("device", "vfio-pci", "iommufd"),
    QemuFeature.PREF64_RESERVE: ("device", "pcie-root-port", "pref64-reserve"),
    QemuFeature.MEM_RESERVE: ("device", "pcie-root-port", "mem-reserve"),
    QemuFeature.NVME_PMR: ("device", "nvme", "pmrdev"),
    QemuFeature.MEMORY_NORESERVE: ("object", "memory-backend-ram", "reserve"),
    QemuFeature.SANDBOX: ("option", "sandbox", None),
    QemuFeature.AIO_IO_URING: ("blockdev", "file", "aio=io_uring"),
    QemuFeature.VHOST_USER_BLK: ("device", "vhost-user-blk-pci", None),
    QemuFeature.SHARED_RAM: ("object", "memory-backend-memfd", None),
}
_AIO_PROBE_NODE = "podplug-aio-probe"


def resolve_qemu(configured: str, override: str | None, section: str) -> Path:
    """The QEMU binary to run: ``override`` (``--qemu``), else the configuration's ``path``,
    else Kata's default.

    :raises ConfigError: naming ``--qemu`` or ``[section] path`` when the file is missing,
        not a regular file, or not executable.
    """
    key = "--qemu" if override else f"{section}.path"
    chosen = override or configured or KATA_DEFAULT_QEMU
    path = Path(chosen)
    if not path.is_absolute():
        raise ConfigError(key, "must be an absolute path to the QEMU binary", value=chosen)
    where = "" if override or configured else " (Kata's default; the file sets no path)"
    fix = "set path in the configuration, or pass --qemu"
    if not path.exists():
        raise ConfigError(key, f"no such file{where}; {fix}", value=chosen)
    if not path.is_file():
        raise ConfigError(key, f"not a regular file{where}; {fix}", value=chosen)
    if not os.access(path, os.X_OK):
        raise ConfigError(key, f"not executable{where}; {fix}", value=chosen)
    return path


def _cache_key(binary: Path) -> str:
    """The binary (path, inode, size, mtime) and the questions asked: a new feature to probe
    makes every cached answer stale."""
    st = binary.stat()
    asked = sorted(f"{f.value}:{q}" for f, q in FEATURE_PROBES.items())
    text = "\0".join((str(PROBE_VERSION), str(binary.resolve()), str(st.st_ino),
                      str(st.st_size), str(st.st_mtime_ns), *asked))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _load(path: Path) -> QemuCapabilities | None:
    try:
        doc = json.loads(path.read_text())
        major, minor, micro = (int(v) for v in doc["version"])
        return QemuCapabilities(str(doc["binary"]), (major, minor, micro), str(doc["package"]),
                                frozenset(QemuFeature(f) for f in doc["features"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: probe again


def _save(path: Path, caps: QemuCapabilities) -> None:
    doc = {"binary": caps.binary, "version": list(caps.version), "package": caps.package,
           "features": sorted(f.value for f in caps.features)}
    with contextlib.suppress(OSError):  # a read-only cache only costs a probe next time
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".probe-")
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle)
        os.replace(tmp, path)


def probe_qemu(binary: Path, cache_dir: Path | None = None) -> QemuCapabilities:
    """What ``binary`` can do (cached when ``cache_dir`` is given).

    :raises QemuLaunchError: the binary does not start or offer QMP.
    """
    cached = cache_dir / "qemu" / f"{_cache_key(binary)}.json" if cache_dir else None
    if cached is not None and (caps := _load(cached)) is not None:
        return caps
    with Vm(("-machine", "none"), accel=Accel.TCG, qemu_binary=str(binary),
            name="qemu-probe", confinement=Confinement(sandbox=False)) as vm:
        version = vm.execute("query-version")
        offered = _offered(vm)
    if not isinstance(version, dict) or not isinstance(version.get("qemu"), dict):
        raise VmError(f"{binary}: query-version returned {version!r}")
    qemu = version["qemu"]
    features = frozenset(feature for feature, (what, typename, prop) in FEATURE_PROBES.items()
                         if (what, typename, prop) in offered)
    caps = QemuCapabilities(str(binary), (int(qemu["major"]), int(qemu["minor"]),
                                          int(qemu["micro"])),
                            str(version.get("package", "")).strip(), features)
    if cached is not None:
        _save(cached, caps)
    return caps


def _names(listed: object, key: str) -> set[str]:
    return {item[key] for item in listed if isinstance(item, dict)} \
        if isinstance(listed, list) else set()


def _offered(vm: Vm) -> set[tuple[str, str, str | None]]:
    """Which of :data:`FEATURE_PROBES`' questions the running binary answers yes to."""
    types = _names(vm.execute("qom-list-types"), "name")
    offered: set[tuple[str, str, str | None]] = set()
    properties: dict[str, set[str]] = {}
    for what, typename, prop in FEATURE_PROBES.values():
        if what == "blockdev":
            if _opens_with_io_uring(vm):
                offered.add((what, typename, prop))
        elif what == "option":
            with contextlib.suppress(QmpCommandError):  # "invalid option name"
                listed = vm.execute("query-command-line-options", {"option": typename})
                if typename in _names(listed, "option"):
                    offered.add((what, typename, prop))
        elif prop is None:
            if typename in types:
                offered.add((what, typename, prop))
        elif typename in types:
            if typename not in properties:
                command = "device-list-properties" if what == "device" else \
                    "qom-list-properties"
                properties[typename] = _names(vm.execute(command, {"typename": typename}),
                                              "name")
            if prop in properties[typename]:
                offered.add((what, typename, prop))
    return offered


def _opens_with_io_uring(vm: Vm) -> bool:
    """Open a 4 KiB file of the probe's own directory with ``aio=io_uring``, then close it."""
    if vm.workdir is None:
        return False
    image = vm.workdir / "aio-probe.img"
    image.write_bytes(bytes(4096))
    try:
        vm.execute("blockdev-add", {"driver": "file", "node-name": _AIO_PROBE_NODE,
                                    "filename": str(image), "aio": "io_uring"})
    except QmpCommandError:  # "Unable to use io_uring" or an aio enum without it
        return False
    vm.execute("blockdev-del", {"node-name": _AIO_PROBE_NODE})
    return True


def require(caps: QemuCapabilities, needed: frozenset[QemuFeature]) -> None:
    """:raises QemuLacksFeature: naming what ``caps`` lacks of ``needed``."""
    missing = caps.lacks(needed)
    if missing:
        raise QemuLacksFeature([f.value for f in missing], caps.binary, caps.version_text)
