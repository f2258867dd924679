"""podplug.image.kmod: .modinfo fields, softdep syntax and the module load order."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from podplug.errors import GuestImageError
from podplug.image.kmod import load_order, norm, parse_softdep, read_modinfo
from tests.image.elves import make_elf

Info = dict[str, dict[str, list[str]]]


def order_of(wanted: list[str], info: Info) -> tuple[list[str], list[str]]:
    """load_order over the modules of ``info`` (all of them available)."""
    return load_order(wanted, info, info.__getitem__)


# ---------------------------------------------------------------- .modinfo and softdep


def test_read_modinfo_lists_the_values_of_each_key() -> None:
    body = (b"license=GPL\0depends=vfio,irqbypass\0softdep=pre: crc32c\0alias=pci:v1\0"
            b"alias=pci:v2\0\0\0vermagic=6.1.0 SMP mod_unload\0parm=x:a=b\0noequals\0")
    elf = make_elf([(b".text", b"\x90"), (b".modinfo", body)])
    assert read_modinfo(elf) == {
        "license": ["GPL"],
        "depends": ["vfio,irqbypass"],
        "softdep": ["pre: crc32c"],
        "alias": ["pci:v1", "pci:v2"],
        "vermagic": ["6.1.0 SMP mod_unload"],
        "parm": ["x:a=b"],  # split at the first "=" only
    }


def test_read_modinfo_of_a_module_without_the_section_is_empty() -> None:
    assert read_modinfo(make_elf([(b".text", b"\x90")])) == {}


def test_read_modinfo_refuses_what_is_no_elf64() -> None:
    with pytest.raises(GuestImageError, match="not a 64-bit ELF module"):
        read_modinfo(b"\x1f\x8b compressed, say")
    with pytest.raises(GuestImageError, match="not a 64-bit ELF module"):
        read_modinfo(make_elf([(b".modinfo", b"a=b\0")], elf_class=1))


def test_parse_softdep() -> None:
    assert parse_softdep(["pre: a b post: c", "pre: d"]) == (["a", "b", "d"], ["c"])
    assert parse_softdep([]) == ([], [])
    assert parse_softdep(["post: x", "y"]) == ([], ["x", "y"])  # the last target carries on
    assert parse_softdep(["a"]) == (["a"], [])  # before any "pre:"/"post:": pre


def test_norm_treats_dash_as_underscore() -> None:
    assert norm("vfio-pci-core") == "vfio_pci_core"
    assert norm("crc32c_generic") == "crc32c_generic"


# ---------------------------------------------------------------- load order


def test_load_order_puts_dependencies_and_softdeps_first() -> None:
    info: Info = {
        "vfio_pci": {"depends": ["vfio-pci-core,vfio"]},
        "vfio_pci_core": {"depends": ["vfio,irqbypass"]},
        "vfio": {"depends": [""], "softdep": ["post: vfio_iommu_type1 vfio_iommu_spapr_tce"]},
        "vfio_iommu_type1": {"depends": ["vfio"]},
        "irqbypass": {"depends": [""]},
        "ext4": {"depends": ["jbd2"], "softdep": ["pre: crypto-crc32c"]},
        "jbd2": {"depends": [""]},
        "crc32c_generic": {},
    }
    order, skipped = order_of(["vfio_pci", "ext4"], info)
    assert order.index("vfio") < order.index("vfio_pci_core") < order.index("vfio_pci")
    assert order.index("irqbypass") < order.index("vfio_pci_core")
    assert "vfio_iommu_type1" in order
    assert order.index("crc32c_generic") < order.index("ext4")
    assert order.index("jbd2") < order.index("ext4")
    assert skipped == ["vfio_iommu_spapr_tce"]


def test_load_order_is_exactly_depth_first() -> None:
    info: Info = {
        "top": {"depends": ["b,a"], "softdep": ["pre: p post: q"]},
        "a": {"depends": ["c"]},
        "b": {"depends": ["c"]},
        "c": {},
        "p": {},
        "q": {"depends": ["top"]},
    }
    assert order_of(["top"], info) == (["p", "c", "b", "a", "top", "q"], [])


def test_load_order_reports_a_missing_hard_dependency() -> None:
    info: Info = {"a": {"depends": ["b"]}}
    with pytest.raises(GuestImageError, match=r"module b \(needed by a\) is not in"):
        order_of(["a"], info)


def test_a_missing_wanted_module_is_needed_by_podplug() -> None:
    with pytest.raises(GuestImageError, match=r"^module nvme \(needed by podplug\) is not in the "
                                              r"kernel package$"):
        order_of(["nvme"], {})


def test_the_chain_to_a_missing_module_is_named() -> None:
    info: Info = {"a": {"depends": ["b"]}, "b": {"depends": ["c-d"]}}
    with pytest.raises(GuestImageError, match=r"module c_d \(needed by a -> b\)"):
        order_of(["a"], info)


def test_a_hard_dependency_cycle_is_an_error_naming_it() -> None:
    info: Info = {"a": {"depends": ["b"]}, "b": {"depends": ["c"]}, "c": {"depends": ["a"]}}
    with pytest.raises(GuestImageError, match=r"^module dependency cycle: a -> b -> c -> a$"):
        order_of(["a"], info)


def test_a_softdep_back_to_a_module_being_visited_is_no_cycle() -> None:
    # pre: each names the other; the one in progress is not visited again
    pre: Info = {"a": {"softdep": ["pre: b"]}, "b": {"softdep": ["pre: a"]}}
    assert order_of(["a"], pre) == (["b", "a"], [])
    # post: b needs a, whose post-softdep b is still in progress
    post: Info = {"a": {"softdep": ["post: b"]}, "b": {"depends": ["a"]}}
    assert order_of(["b"], post) == (["a", "b"], [])


def test_a_pre_softdep_with_a_hard_dependency_back_is_a_cycle() -> None:
    info: Info = {"a": {"softdep": ["pre: b"]}, "b": {"depends": ["a"]}}
    with pytest.raises(GuestImageError, match="module dependency cycle: a -> b -> a"):
        order_of(["a"], info)


def test_softdeps_resolve_by_name_then_alias_else_are_skipped() -> None:
    info: Info = {
        "m": {"softdep": ["pre: crc32c crypto-crct10dif no-such-mod post: crc64-rocksoft"]},
        "crc32c": {},  # a module of that very name wins over the alias
        "crc32c_generic": {},
        "crct10dif_generic": {},
    }
    order, skipped = order_of(["m"], info)
    assert order == ["crc32c", "crct10dif_generic", "m"]
    assert skipped == ["no-such-mod", "crc64-rocksoft"]  # as spelled, in the order met


def test_implied_crypto_back_ends_load_first() -> None:
    info: Info = {"crc_t10dif": {}, "crct10dif_generic": {}, "crc64_rocksoft": {}}
    order, skipped = order_of(["crc_t10dif", "crc64_rocksoft"], info)
    assert order == ["crct10dif_generic", "crc_t10dif", "crc64_rocksoft"]
    assert skipped == ["crc64_rocksoft_generic"]  # implied, but not in this kernel


def test_wanted_names_are_normalised_and_each_module_placed_once() -> None:
    info: Info = {"vfio_pci": {"depends": ["vfio"]}, "vfio": {}}
    assert order_of(["vfio-pci", "vfio", "vfio_pci"], info) == (["vfio", "vfio_pci"], [])


def test_modinfo_is_asked_once_for_each_module_visited_only() -> None:
    info: Info = {"a": {"depends": ["b"]}, "b": {}, "c": {"depends": ["b"]}, "unused": {}}
    asked: list[str] = []

    def modinfo_of(name: str) -> Mapping[str, list[str]]:
        asked.append(name)
        return info[name]

    assert load_order(["a", "c"], set(info), modinfo_of) == (["b", "a", "c"], [])
    assert asked == ["a", "b", "c"]
