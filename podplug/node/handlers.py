"""Which Kata configuration a node's pods run under, as Kata finds it (pure).

Kata's Go shim (``containerd-shim-v2/create.go`` ``loadRuntimeConfig``, Kata main
2026-08) takes, in order: the runtime options' ``ConfigPath`` that containerd passes for the
pod's runtime handler; else ``KATA_CONF_FILE``, accepted only when it names one of the
shipped default files; else the first of its default files that exists
(``katautils.GetDefaultConfigFilePaths``): ``/etc/kata-containers/configuration.toml``, then
the build's ``<PREFIX>/share/defaults/kata-containers/configuration.toml`` (``/usr`` for a
distribution's package, ``/opt/kata`` for kata-deploy's). runtime-rs (kata-types
``DEFAULT_RUNTIME_CONFIGURATIONS``) looks in the ``runtime-rs/`` directory of each.

Runtime handlers (:func:`containerd_handlers`, :func:`crio_handlers`):

* containerd, config ``version = 2``: ``[plugins."io.containerd.grpc.v1.cri".containerd.
  runtimes.<name>]``; ``version = 3`` (containerd 2.x): ``[plugins."io.containerd.cri.v1.
  runtime".containerd.runtimes.<name>]``. A Kata handler has ``runtime_type =
  "io.containerd.kata<...>.v2"`` (kata-deploy writes ``io.containerd.<handler>.v2``, e.g.
  ``io.containerd.kata-qemu.v2``) and its file in ``options.ConfigPath``;
* CRI-O: ``[crio.runtime.runtimes.<name>]`` with ``runtime_type = "vm"``, a Kata shim as
  ``runtime_path`` and the file in ``runtime_config_path``.

A handler whose shim lives under a ``runtime-rs`` directory (kata-deploy's
``/opt/kata/runtime-rs/bin/containerd-shim-kata-v2``) is runtime-rs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from podplug.model.enums import KataRuntime


class Engine(Enum):
    CONTAINERD = "containerd"
    CRIO = "cri-o"


GO_DEFAULTS = ("/etc/kata-containers/configuration.toml",
               "/usr/share/defaults/kata-containers/configuration.toml",
               "/opt/kata/share/defaults/kata-containers/configuration.toml")
RUST_DEFAULTS = ("/etc/kata-containers/runtime-rs/configuration.toml",
                 "/usr/share/defaults/kata-containers/runtime-rs/configuration.toml",
                 "/opt/kata/share/defaults/kata-containers/runtime-rs/configuration.toml")
CRI_PLUGINS = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
_KATA_TYPE = re.compile(r"io\.containerd\.kata[A-Za-z0-9._-]*\.v2")
_KATA_SHIM = "containerd-shim-kata-v2"


@dataclass(frozen=True)
class KataHandler:
    """One runtime handler of the node that runs Kata."""

    name: str
    engine: Engine
    config_path: str  # "" when the engine's configuration names none
    runtime: KataRuntime
    source: str  # the file and table it was read from

    @property
    def label(self) -> str:
        return f"{self.engine.value} handler {self.name}"


def _table(doc: Mapping[str, object], *keys: str) -> Mapping[str, object]:
    for key in keys:
        value = doc.get(key)
        if not isinstance(value, Mapping):
            return {}
        doc = value
    return doc


def _runtime(shim: object) -> KataRuntime:
    return KataRuntime.RUST if isinstance(shim, str) and "runtime-rs" in shim \
        else KataRuntime.GO


def containerd_handlers(doc: Mapping[str, object], source: str
                        ) -> tuple[tuple[KataHandler, ...], tuple[str, ...]]:
    """The Kata handlers of one containerd configuration, and what could not be read."""
    version = doc.get("version", 1)
    plugin = CRI_PLUGINS.get(version) if isinstance(version, int) else None
    if plugin is None:
        return (), (f"{source}: containerd config version {version!r}: podplug reads versions "
                    "2 and 3",)
    runtimes = _table(doc, "plugins", plugin, "containerd", "runtimes")
    found = []
    for name, table in sorted(runtimes.items()):
        if not isinstance(table, Mapping):
            continue
        kind = table.get("runtime_type")
        if not (isinstance(kind, str) and _KATA_TYPE.fullmatch(kind)):
            continue
        path = _table(table, "options").get("ConfigPath", "")
        found.append(KataHandler(
            name, Engine.CONTAINERD, path if isinstance(path, str) else "",
            _runtime(table.get("runtime_path")),
            f'{source} [plugins."{plugin}".containerd.runtimes.{name}]'))
    return tuple(found), ()


def crio_handlers(doc: Mapping[str, object], source: str) -> tuple[KataHandler, ...]:
    """The Kata handlers of one CRI-O configuration (``crio.conf`` or a drop-in)."""
    found = []
    for name, table in sorted(_table(doc, "crio", "runtime", "runtimes").items()):
        if not isinstance(table, Mapping) or table.get("runtime_type") != "vm":
            continue
        shim = table.get("runtime_path", "")
        if not (isinstance(shim, str) and shim.endswith(_KATA_SHIM)):
            continue
        path = table.get("runtime_config_path", "")
        found.append(KataHandler(name, Engine.CRIO, path if isinstance(path, str) else "",
                                 _runtime(shim), f"{source} [crio.runtime.runtimes.{name}]"))
    return tuple(found)


def kata_config_path(handler: KataHandler | None, env_file: str,
                     exists: Callable[[str], bool]) -> tuple[str, str] | str:
    """The file Kata reads for ``handler`` (None: a shim with no handler options) and why,
    or why there is none.

    :param env_file: ``KATA_CONF_FILE`` of the shim's environment ("" when unset).
    :param exists: whether a path (of the node) is a file.
    """
    if handler is not None and handler.config_path:
        return handler.config_path, f"ConfigPath of {handler.label} ({handler.source})"
    runtime = handler.runtime if handler is not None else KataRuntime.GO
    defaults = RUST_DEFAULTS if runtime is KataRuntime.RUST else GO_DEFAULTS
    if env_file:
        if env_file in defaults:
            return env_file, "KATA_CONF_FILE (a shipped default file)"
        return (f"KATA_CONF_FILE={env_file} is not a shipped default file: Kata refuses it "
                "(only shipped Kata configuration files are accepted)")
    for path in defaults:
        if exists(path):
            return path, "Kata's default search order (the first that exists)"
    return f"no Kata configuration: none of {', '.join(defaults)} exists"
