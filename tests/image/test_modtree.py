"""podplug.image.modtree: a module tree on disk, as dpkg -x leaves it."""

from __future__ import annotations

import lzma
from pathlib import Path

from podplug.image.kmod import load_order
from podplug.image.modtree import index_modules, modinfo_reader, read_module
from tests.image.elves import make_elf


def _module(depends: str) -> bytes:
    return make_elf([(b".modinfo", f"license=GPL\0depends={depends}\0".encode())])


def _tree(root: Path) -> dict[str, bytes]:
    elves = {"vfio": _module(""), "vfio_pci": _module("vfio,irqbypass"),
             "irqbypass": _module("")}
    (root / "drivers/vfio/pci").mkdir(parents=True)
    (root / "virt/lib").mkdir(parents=True)
    (root / "drivers/vfio/vfio.ko").write_bytes(elves["vfio"])
    (root / "drivers/vfio/pci/vfio-pci.ko.xz").write_bytes(lzma.compress(elves["vfio_pci"]))
    (root / "virt/lib/irqbypass.ko").write_bytes(elves["irqbypass"])
    (root / "drivers/vfio/README").write_text("not a module\n")
    (root / "drivers/vfio/vfio.ko.sig").write_bytes(b"")
    return elves


def test_index_modules_by_normalised_name(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert index_modules(tmp_path) == {
        "vfio": tmp_path / "drivers/vfio/vfio.ko",
        "vfio_pci": tmp_path / "drivers/vfio/pci/vfio-pci.ko.xz",
        "irqbypass": tmp_path / "virt/lib/irqbypass.ko",
    }


def test_read_module_decompresses_xz_only(tmp_path: Path) -> None:
    elves = _tree(tmp_path)
    index = index_modules(tmp_path)
    assert read_module(index["vfio_pci"]) == elves["vfio_pci"]
    assert read_module(index["vfio"]) == elves["vfio"]


def test_modinfo_reader_reads_each_file_once(tmp_path: Path) -> None:
    _tree(tmp_path)
    index = index_modules(tmp_path)
    modinfo_of = modinfo_reader(index)
    assert modinfo_of("vfio_pci") == {"license": ["GPL"], "depends": ["vfio,irqbypass"]}
    index["vfio_pci"].unlink()
    assert modinfo_of("vfio_pci")["depends"] == ["vfio,irqbypass"]  # remembered, not re-read


def test_load_order_from_the_tree(tmp_path: Path) -> None:
    _tree(tmp_path)
    index = index_modules(tmp_path)
    assert load_order(["vfio-pci"], index, modinfo_reader(index)) == (
        ["vfio", "irqbypass", "vfio_pci"], [])
