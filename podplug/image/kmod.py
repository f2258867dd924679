"""Kernel-module dependency solving (pure: names, mappings and bytes in; no files).

A ``dpkg -x`` tree has no ``modules.dep`` or ``modules.alias`` (``depmod`` writes those on
install), so the load order comes from each module's own metadata, as modprobe(8) would
use it:

* the ``.modinfo`` ELF section: NUL-separated ``key=value`` strings (Linux
  ``MODULE_INFO``). ``depends=`` is written by modpost as a comma-separated list of
  module names, ``softdep=`` by ``MODULE_SOFTDEP``;
* a ``softdep`` value has modprobe.d(5) syntax, ``pre: A B post: C``: the ``pre`` modules
  load before the module, the ``post`` modules after it. A softdep names a module or an
  alias (:data:`SOFTDEP_ALIASES` stands in for ``modules.alias``); one that resolves to
  neither is skipped, as modprobe does;
* module names treat ``-`` and ``_`` alike (modprobe(8)).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence

from podplug.errors import GuestImageError
from podplug.image.elf import is_elf64, section

#: loaded before a module although no depends= names them (crypto back ends found by
#: name through the crypto API, which would otherwise need modprobe)
IMPLIED_PRE: dict[str, tuple[str, ...]] = {
    "crc_t10dif": ("crct10dif_generic",),
    "crc64_rocksoft": ("crc64_rocksoft_generic",),
}
#: softdep aliases -> module (there is no modules.alias in a dpkg -x tree)
SOFTDEP_ALIASES = {
    "crypto_crc32c": "crc32c_generic",
    "crc32c": "crc32c_generic",
    "crct10dif": "crct10dif_generic",
    "crypto_crct10dif": "crct10dif_generic",
    "crypto_crc64_rocksoft": "crc64_rocksoft_generic",
}

Modinfo = Mapping[str, list[str]]


def norm(name: str) -> str:
    """Module names treat ``-`` and ``_`` alike."""
    return name.replace("-", "_")


def read_modinfo(data: bytes) -> dict[str, list[str]]:
    """The ``key=value`` pairs of a module's ``.modinfo`` section (values listed per key)."""
    if not is_elf64(data):
        raise GuestImageError("not a 64-bit ELF module")
    body = section(data, b".modinfo")
    if body is None:
        return {}
    out: dict[str, list[str]] = {}
    for item in body.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            out.setdefault(key, []).append(value)
    return out


def parse_softdep(values: Iterable[str]) -> tuple[list[str], list[str]]:
    """``softdep=pre: a b post: c`` values -> (pre, post) module names."""
    pre: list[str] = []
    post: list[str] = []
    target = pre
    for value in values:
        for word in value.split():
            if word == "pre:":
                target = pre
            elif word == "post:":
                target = post
            else:
                target.append(word)
    return pre, post


def load_order(
    wanted: Sequence[str],
    available: Container[str],
    modinfo_of: Callable[[str], Modinfo],
) -> tuple[list[str], list[str]]:
    """Dependency-first load order of ``wanted`` and the softdeps skipped.

    ``available`` holds the normalised names of the modules there are; ``modinfo_of(name)``
    gives one's ``.modinfo`` fields, asked only for the modules visited, when first
    visited. Hard dependencies must exist (else GuestImageError, as does a cycle of them);
    softdeps that resolve neither to a module nor through :data:`SOFTDEP_ALIASES` are
    skipped and reported.
    """
    order: list[str] = []
    state: dict[str, str] = {}
    skipped: list[str] = []

    def resolve_soft(name: str) -> str | None:
        key = norm(name)
        if key in available:
            return key
        alias = SOFTDEP_ALIASES.get(key)
        if alias is not None and alias in available:
            return alias
        skipped.append(name)
        return None

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            raise GuestImageError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in available:
            raise GuestImageError(
                f"module {name} (needed by {' -> '.join(chain) or 'podplug'}) "
                "is not in the kernel package"
            )
        state[name] = "active"
        meta = modinfo_of(name)
        pre, post = parse_softdep(meta.get("softdep", []))
        deps = [d for v in meta.get("depends", []) for d in v.split(",") if d]
        before = [*IMPLIED_PRE.get(name, ()), *pre]
        for dep in before:
            resolved = resolve_soft(dep)
            if resolved is not None and state.get(resolved) != "active":
                visit(resolved, (*chain, name))
        for dep in deps:
            visit(norm(dep), (*chain, name))
        state[name] = "done"
        order.append(name)
        for dep in post:
            resolved = resolve_soft(dep)
            if resolved is not None and state.get(resolved) is None:
                visit(resolved, (*chain, name))

    for name in wanted:
        visit(norm(name), ())
    return order, skipped
