"""Golden files: argv, QMP and agent entries per scenario (``pytest --regenerate``)."""

from __future__ import annotations

import json

import pytest

from tests.plan.scenarios import ALL, Scenario, golden
from tests.support import REPO

GOLDEN = REPO / "tests" / "golden"


@pytest.mark.parametrize("scenario", ALL, ids=lambda s: s.name)
def test_golden(scenario: Scenario, regenerate: bool) -> None:
    path = GOLDEN / f"{scenario.name}.json"
    actual = json.dumps(golden(scenario), indent=2, sort_keys=True) + "\n"
    if regenerate:
        path.write_text(actual)
    assert path.exists(), f"no golden file {path.name}: run pytest --regenerate and review it"
    assert actual == path.read_text(), f"{path.name} differs (pytest --regenerate to accept)"


def test_no_orphan_golden_files() -> None:
    names = {f"{s.name}.json" for s in ALL}
    orphans = sorted(p.name for p in GOLDEN.glob("*.json") if p.name not in names)
    assert not orphans, f"golden files without a scenario: {orphans}"
