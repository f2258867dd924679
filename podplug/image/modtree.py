"""The module files of an unpacked kernel package (shell: reads the tree).

``dpkg -x`` leaves them as ``lib/modules/VERSION/kernel/**/NAME.ko``, or ``NAME.ko.xz``
when the kernel compresses its modules with XZ (``CONFIG_MODULE_COMPRESS_XZ``); there is
no ``modules.dep`` beside them, so :func:`podplug.image.kmod.load_order` is given the
index built here and reads each module's ``.modinfo`` through :func:`modinfo_reader`.
"""

from __future__ import annotations

import lzma
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from podplug.image.kmod import norm, read_modinfo


def index_modules(root: Path) -> dict[str, Path]:
    """Normalised module name -> file, for every ``.ko``/``.ko.xz`` below ``root``."""
    out: dict[str, Path] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name.endswith((".ko", ".ko.xz")):
                out[norm(name.split(".ko")[0])] = Path(dirpath) / name
    return out


def read_module(path: Path) -> bytes:
    """The ELF bytes of a module file (a ``.xz`` one decompressed)."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def modinfo_reader(index: Mapping[str, Path]) -> Callable[[str], dict[str, list[str]]]:
    """``name -> .modinfo fields`` of the modules in ``index``, each file read once."""
    cache: dict[str, dict[str, list[str]]] = {}

    def modinfo_of(name: str) -> dict[str, list[str]]:
        if name not in cache:
            cache[name] = read_modinfo(read_module(index[name]))
        return cache[name]

    return modinfo_of
