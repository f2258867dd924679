"""Kata's guest PCI path, with the device's function (the agent's ``SS[.F]`` elements)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podplug.model.pci import GuestPciPath

paths = st.builds(GuestPciPath, st.lists(st.integers(0, 0x1F), min_size=1, max_size=6)
                  .map(tuple), st.integers(0, 7))


@given(paths)
def test_round_trip(path: GuestPciPath) -> None:
    assert GuestPciPath.parse(str(path)) == path


@pytest.mark.parametrize(("text", "slots", "function"), [
    ("03/00", (3, 0), 0), ("03/00.1", (3, 0), 1), ("1f.7", (0x1F,), 7), ("03/00.0", (3, 0), 0),
    ("04/00/01/00", (4, 0, 1, 0), 0),
])
def test_parse(text: str, slots: tuple[int, ...], function: int) -> None:
    path = GuestPciPath.parse(text)
    assert (path.slots, path.function) == (slots, function)


def test_function_zero_keeps_the_short_form_every_agent_reads() -> None:
    assert str(GuestPciPath((3, 0))) == "03/00"
    assert str(GuestPciPath((3, 0)).at_function(1)) == "03/00.1"
    assert GuestPciPath((3, 0), 1).slot_path == GuestPciPath((3, 0))


@pytest.mark.parametrize("text", ["", "20", "03/", "03//00", "xy", "03/00.8", "03.1/00",
                                  "03/00.1.2", "03/00."])
def test_bad_paths(text: str) -> None:
    with pytest.raises(ValueError):
        GuestPciPath.parse(text)
