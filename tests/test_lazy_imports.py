"""``podplug plan`` imports only what planning needs (issue 12: its start-up time).

What the other commands use (QEMU and QMP, asyncio, subprocesses and sockets, the guest
image, the matrix, doctor, the fuzzer), the CDI model with its YAML decoder (only a spec
asking for a CDI device needs them), importlib.metadata (``--version`` only) and the
renderers of formats not asked for stay out of the process. Checked by what a real
``podplug plan`` process imported, not by timing it: the figures are in
``bench/bench_plan.py`` (BENCHMARKS.md, "Whole process").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from podplug.host.fakesysfs import demo_host, write_fake_sysfs
from tests.support import KATA_MAIN, REPO

DEMO = REPO / "podplug" / "demo"

#: run as ``python3 -c PROBE plan ...`` from the repository (``-c`` puts it first on
#: sys.path): the modules ``main`` imported, one per line on stderr after a marker. What
#: the interpreter and site loaded before is left out: not podplug's doing, and free to it.
PROBE = """
import sys
before = set(sys.modules)
from podplug.cli import main
code = main(sys.argv[1:])
print("imported:", *sorted(set(sys.modules) - before), sep="\\n", file=sys.stderr)
sys.exit(code)
"""

#: never on ``plan``'s import path (a name covers its submodules)
NOT_FOR_PLAN = (
    "asyncio", "qemu", "subprocess", "socket", "selectors", "tempfile", "email",
    "importlib.metadata", "yaml", "jsonschema",
    "podplug.vm", "podplug.run", "podplug.guest", "podplug.image", "podplug.matrix",
    "podplug.doctor", "podplug.fuzz", "podplug.host.fakesysfs",
    "podplug.inputs.cdi", "podplug.inputs.cdi_decode", "podplug.inputs.strict_yaml",
    "podplug.host.devnodes",
)
#: what only the other output formats need (json, argv, qmp, dot)
OTHER_FORMATS = ("podplug.render.json_plan", "podplug.render.argv", "podplug.render.qmp",
                 "podplug.render.dot", "podplug.plan.sequence")


def imported_by(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stderr.split("imported:\n", 1)[1].split()


def among(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in names)]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lazy")
    return write_fake_sysfs(tmp / "sys", demo_host(str(tmp / "disk.img")))


def plan_args(host: Path, *more: str) -> tuple[str, ...]:
    return ("plan", "--config", str(DEMO / "configuration.toml"), "--spec",
            str(DEMO / "spec.json"), "--sysfs", str(host), *more)


def test_plan_tree_imports_nothing_it_does_not_use(host: Path) -> None:
    modules = imported_by(*plan_args(host))
    assert "podplug.plan.plan" in modules and "podplug.render.tree" in modules  # it ran
    assert among(modules, NOT_FOR_PLAN + OTHER_FORMATS) == []


def test_plan_json_imports_its_renderers_only(host: Path) -> None:
    modules = imported_by(*plan_args(host, "--format", "json"))
    assert {"podplug.render.json_plan", "podplug.render.qmp"} <= set(modules)
    assert among(modules, (*NOT_FOR_PLAN, "podplug.render.tree", "podplug.render.dot")) == []


def test_a_spec_asking_for_cdi_imports_the_cdi_model(host: Path, tmp_path: Path) -> None:
    """The other side of the lazy CDI import (and proof the probe sees imports at all)."""
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "nvidia.yaml").write_text(
        'cdiVersion: "0.6.0"\nkind: nvidia.com/pgpu\ndevices:\n- name: "0"\n'
        "  containerEdits:\n    deviceNodes:\n    - path: /dev/vfio/12\n      type: c\n"
        "      major: 236\n      minor: 12\n")
    spec = tmp_path / "config.json"
    spec.write_text(json.dumps({"annotations": {"cdi.k8s.io/vfio12": "nvidia.com/pgpu=0"},
                                "linux": {"devices": []}}))
    modules = imported_by(
        "plan", "--config", str(KATA_MAIN / "go" / "configuration-qemu-nvidia-gpu.toml"),
        "--spec", str(spec), "--sysfs", str(host), "--cdi-dir", str(cdi))
    assert {"podplug.inputs.cdi", "podplug.host.devnodes", "yaml"} <= set(modules)
    assert among(modules, ("asyncio", "qemu", "subprocess", "podplug.vm", "podplug.run")) == []

