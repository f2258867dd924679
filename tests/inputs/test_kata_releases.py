"""Every Kata configuration file of every release from 3.13.0 to main, both runtimes, as
Kata ships it (``tests/fixtures/kata``: the tables, keys and values of each file rendered
with upstream's own Makefiles for x86_64, comments left out; ``manifest.json`` says which
release, runtime and upstream name each is), read and planned."""

from __future__ import annotations

import json

import pytest

from podplug.errors import UnsupportedPlatform
from podplug.inputs.load import load_kata_config
from podplug.model.enums import Bucket, KataRuntime
from podplug.plan.plan import plan
from tests.support import KATA_FIXTURES, block, inventory, request, vfio_control, vfio_group

MANIFEST = json.loads((KATA_FIXTURES / "manifest.json").read_text())
PLANNED = {"qemu", "clh", "cloud-hypervisor"}
POD = request(vfio_control(), vfio_group(12), block(0))
HOST = inventory(1, 2, blocks=1)


def test_the_fixtures_cover_every_release_and_both_runtimes() -> None:
    releases = {e["release"] for e in MANIFEST}
    assert {"3.13.0", "3.20.0", "3.30.0", "4.1.0"} <= releases
    assert any(r.startswith("main@") for r in releases) and len(releases) >= 23
    assert {e["runtime"] for e in MANIFEST} == {"go", "rs"}
    assert {s for e in MANIFEST for s in e["hypervisor_sections"]} >= (
        PLANNED | {"firecracker", "dragonball", "remote", "stratovirt"})


@pytest.mark.parametrize("entry", MANIFEST,
                         ids=lambda e: f"{e['release']}-{e['runtime']}-{e['name']}")
def test_read_as_kata_reads_it_and_planned(entry: dict[str, object]) -> None:
    path = KATA_FIXTURES / str(entry["file"])
    (section,) = entry["hypervisor_sections"]  # type: ignore[misc]
    if section not in PLANNED:
        with pytest.raises(UnsupportedPlatform) as err:
            load_kata_config(path)
        assert f"hypervisor = '{section}'" in str(err.value)
        return
    cfg = load_kata_config(path)
    hv = cfg.hypervisor
    assert hv.section == f"hypervisor.{section}"
    assert cfg.runtime is (KataRuntime.RUST if entry["runtime"] == "rs" else KataRuntime.GO)
    assert cfg.vfio_mode.value == (entry["vfio_mode"] or "guest-kernel")
    assert hv.cold_plug_vfio.value == (entry["cold_plug_vfio"] or "no-port")
    hot = entry["hot_plug_vfio"] if cfg.runtime is KataRuntime.GO else None
    assert hv.hot_plug_vfio.value == (hot or "no-port")
    assert hv.pcie_root_port == (entry["pcie_root_port"] or 0)
    result = plan(cfg, POD, HOST)
    kept = {d.request.path: d.bucket for d in result.devices}
    assert kept["/dev/xda"] is Bucket.HOT_BLOCK  # the volume is never lost (Kata #11288)
    vfio_port = hv.cold_plug_vfio.value != "no-port" or hv.hot_plug_vfio.value != "no-port"
    assert (kept["/dev/vfio/12"] is not Bucket.REJECTED) == vfio_port
