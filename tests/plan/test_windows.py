"""Window sizing (pure), the measured rules of ``podplug/plan/windows.py``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podplug.model.host import (
    IORESOURCE_MEM,
    IORESOURCE_MEM_64,
    IORESOURCE_PREFETCH,
    Bar,
    PciFunction,
)
from podplug.model.pci import Bdf
from podplug.plan.windows import (
    DEFAULT_SPARE_WINDOW,
    FIRMWARE_WINDOW,
    Window,
    fit,
    keeper_size,
    parse_window,
    shortfall,
    size_text,
    spare_keeper_size,
    spare_window,
    unit_window,
)
from tests.support import PREF64, inventory

GIB, MIB = 1 << 30, 1 << 20
PREF32 = IORESOURCE_MEM | IORESOURCE_PREFETCH


def _function(*bars: Bar) -> PciFunction:
    return PciFunction(Bdf(0, 0x41, 0, 0), 0x10DE, 0x2330, 0x030200, True, bars, "vfio-pci")


def test_a_window_spans_the_bars_total_plus_the_largest() -> None:
    """16 GiB in a 16 GiB window found no space; in 32 GiB it was assigned (measured)."""
    assert fit([16 * GIB]) == 32 * GIB
    assert fit([128 * GIB]) == 256 * GIB
    assert fit([64 * GIB, 32 * MIB]) == 129 * GIB  # rounded up to whole GiB
    assert fit([16 * MIB, 16 << 10]) == 33 * MIB
    assert fit([16 << 10]) == 0  # SeaBIOS's 2 MiB minimum already holds it
    assert fit([]) == 0


@given(st.lists(st.integers(12, 40).map(lambda e: 1 << e), min_size=1, max_size=8),
       st.integers(0, 1 << 20).map(lambda k: k << 20))
def test_fit_holds_the_bars_at_any_1mib_aligned_base(sizes: list[int], base: int) -> None:
    """First-fit of naturally aligned BARs, largest first, from any 1 MiB-aligned base."""
    window = fit(sizes) or 2 * MIB
    cursor, end = base, base + window
    for size in sorted(sizes, reverse=True):
        cursor = -(-cursor // size) * size
        cursor += size
    assert cursor <= end


def test_prefetchable_32bit_bars_count_as_non_prefetchable() -> None:
    gpu = _function(Bar(0, 16 * MIB, IORESOURCE_MEM), Bar(1, 16 * GIB, PREF64),
                    Bar(3, 32 * MIB, PREF32))
    assert unit_window([gpu]) == Window(mem=fit([16 * MIB, 32 * MIB]),
                                        pref64=fit([16 * GIB]))


def test_keeper_holds_the_prefetchable_bars_naturally_aligned() -> None:
    gpu = _function(Bar(0, 16 * MIB, IORESOURCE_MEM), Bar(1, 64 * GIB, PREF64),
                    Bar(3, 32 * MIB, PREF64))
    assert keeper_size([gpu]) == 128 * GIB  # 64 GiB + 32 MiB, as a power of two
    assert keeper_size([_function(Bar(0, 16 << 10, IORESOURCE_MEM | IORESOURCE_MEM_64))]) == 0
    kept = Window(2 * MIB, 128 * GIB, aligned=True)
    assert shortfall(kept, [gpu]) == Window(mem=fit([16 * MIB]) - 2 * MIB)
    assert shortfall(Window(64 * MIB, 128 * GIB), [gpu]).pref64 == 1 * GIB  # unaligned: 129G


def test_spare_ports_take_the_hosts_largest_assignable_unit() -> None:
    host = inventory(2, 2)  # GPUs with a 64 GiB BAR, bound to vfio-pci
    assert spare_window(host).pref64 == 128 * GIB
    assert spare_window(host, Window(256 * MIB, 512 * GIB)).pref64 == 512 * GIB  # the floor
    assert spare_keeper_size(host) == 64 * GIB
    empty = inventory(0, blocks=0)
    assert spare_window(empty) == DEFAULT_SPARE_WINDOW
    assert spare_keeper_size(empty) == DEFAULT_SPARE_WINDOW.pref64
    assert not shortfall(FIRMWARE_WINDOW, []).mem


@pytest.mark.parametrize(("text", "window"), [
    ("mem=8M,pref64=16G", Window(8 * MIB, 16 * GIB)), ("pref64=1T", Window(0, 1 << 40)),
    ("mem=4096", Window(4096, 0)), ("", Window()),
])
def test_parse_window(text: str, window: Window) -> None:
    assert parse_window(text) == window


@pytest.mark.parametrize("text", ["mem", "mem=8X", "io=4K", "mem=-1M", "mem=\u0661M",
                                  "pref64=1.5G"])
def test_bad_windows(text: str) -> None:
    with pytest.raises(ValueError):
        parse_window(text)


def test_size_text() -> None:
    assert [size_text(n) for n in (32 * GIB, 33 * MIB, 1 << 40, 4096, 1000)] == [
        "32G", "33M", "1T", "4K", "1000"]
