"""One fuzz case (pure): the input files, the damage done to a sysfs tree, the command.

A case is a function of ``(seed, index)`` alone (:func:`make_case`), so any case a run
reports is reproduced by its index (``python3 -m podplug.fuzz --seed S --only INDEX``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from podplug.fuzz import gen
from podplug.fuzz.mutate import mutate


class Action(Enum):
    """What a sysfs edit puts where a file (or link) of the tree was."""

    CONTENT = "content"  # other bytes
    FIFO = "fifo"  # a named pipe: a reader that opens it blocks
    LINK_OUT = "link-out"  # an absolute link out of the tree
    LINK_UP = "link-up"  # a relative link climbing above the root
    LINK_LOOP = "link-loop"  # a link to itself
    LINK_DEVICE = "link-device"  # a link to /dev/zero (endless)
    DIRECTORY = "directory"  # a directory
    REMOVE = "remove"  # nothing


@dataclass(frozen=True)
class SysfsEdit:
    path: str  # relative to the tree's root
    action: Action
    payload: bytes = b""


@dataclass(frozen=True)
class Case:
    index: int
    kata: bytes
    spec: bytes
    cdi: tuple[tuple[str, bytes], ...]
    tree: int  # which of the workbench's base trees
    edits: tuple[SysfsEdit, ...]
    command: tuple[str, ...]  # "plan ..." or "doctor ..."


@dataclass(frozen=True)
class Corpus:
    """Real files to mutate, next to the generated ones."""

    kata: tuple[bytes, ...] = ()
    spec: tuple[bytes, ...] = ()
    cdi: tuple[tuple[str, bytes], ...] = ()


_FORMATS = ("tree", "json", "argv", "qmp", "dot")
_VERSIONS = ("", "", "3.13.0", "3.14.0", "3.17.0", "3.22.0", "9.9")


def case_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"podplug-fuzz:{seed}:{index}")


class Focus(Enum):
    """The one input a case damages; the others are generated nearly clean, so that the
    damaged one reaches the checks deep behind its parser."""

    KATA = "kata"
    SPEC = "spec"
    CDI = "cdi"
    SYSFS = "sysfs"
    NONE = "none"


EDGE, CLEAN = 0.3, 0.01


def _document(r: random.Random, generated: bytes, corpus: Sequence[bytes],
              damaged: bool) -> bytes:
    base = corpus[r.randrange(len(corpus))] if corpus and r.random() < 0.4 else generated
    return mutate(r, base) if damaged and r.random() < 0.5 else base


def make_case(seed: int, index: int, corpus: Corpus, trees: Sequence[Sequence[str]]) -> Case:
    """The case ``index`` of the run ``seed``; ``trees`` lists each base tree's entries."""
    r = case_rng(seed, index)
    focus = r.choice(tuple(Focus))

    def edge(target: Focus) -> float:
        return EDGE if focus is target else CLEAN

    kata = _document(r, gen.kata_toml(r, edge(Focus.KATA)), corpus.kata, focus is Focus.KATA)
    spec = _document(r, gen.oci_json(r, edge(Focus.SPEC)), corpus.spec, focus is Focus.SPEC)
    cdi: list[tuple[str, bytes]] = []
    for n in range(r.choice((0, 1, 1, 2))):
        if corpus.cdi and r.random() < 0.3:
            name, text = corpus.cdi[r.randrange(len(corpus.cdi))]
        else:
            name, text = gen.cdi_text(r, edge(Focus.CDI))
        damaged = focus is Focus.CDI and r.random() < 0.4
        cdi.append((f"{n}-{name}", mutate(r, text) if damaged else text))
    tree = r.randrange(len(trees))
    edits = []
    for _ in range(r.choice((1, 1, 2, 3)) if focus is Focus.SYSFS else 0):
        action = r.choice(tuple(Action))
        payload = mutate(r, r.choice((b"0x10de\n", b"12\n", b"236:12\n", b"MAJOR=236\n",
                                      b"/tmp/x.img\n", b"0x0000000000001000 0x1fff 0x200\n")))
        edits.append(SysfsEdit(r.choice(trees[tree]), action, payload))
    if r.random() < 0.6:
        command = ("plan", "--format", r.choice(_FORMATS), "--hotplug",
                   r.choice(("acpi", "native")))
    else:
        version = r.choice(_VERSIONS) if r.random() < 0.95 else r.choice(("3.x", "٣.14.0"))
        command = ("doctor", *(("--kata-version", version) if version else ()))
    return Case(index, kata, spec, tuple(cdi), tree, tuple(edits), command)
