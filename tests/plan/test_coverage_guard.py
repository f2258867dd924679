"""Fails when a configuration value has no golden scenario (virtinst's test_checkprops)."""

from __future__ import annotations

import itertools

from podplug.model.enums import BlockDriver, PortKind, VfioMode
from tests.plan.scenarios import ALL, DRIVERS, MODES, PORTS


def test_axes_spelled_out_match_the_enums() -> None:
    assert set(MODES) == {m.value for m in VfioMode}
    assert set(PORTS) == {p.value for p in PortKind}
    assert set(DRIVERS) == {d.value for d in BlockDriver}


def test_every_combination_has_a_scenario() -> None:
    covered = {(s.vfio_mode, s.cold, s.hot, s.driver) for s in ALL}
    wanted = set(itertools.product((m.value for m in VfioMode), (p.value for p in PortKind),
                                   (p.value for p in PortKind), (d.value for d in BlockDriver)))
    missing = sorted(wanted - covered)
    assert not missing, f"combinations without a scenario: {missing}"


def test_seed_scenarios_keep_every_device() -> None:
    for scenario in ALL[:4]:
        result = scenario.run()
        paths = {d.request.path for d in result.container_devices}
        assert {"/dev/vfio/12", "/dev/xda"} <= paths, scenario.name
        assert "/dev/vfio/12" in {a.container_path for a in result.agent_devices}, scenario.name
        assert "/dev/xda" in {a.container_path for a in result.agent_devices}, scenario.name
