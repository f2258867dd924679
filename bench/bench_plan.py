"""Planning benchmark for podplug, run by hand (not a test): ``python3 bench/bench_plan.py``.

Prints markdown tables (copy them into BENCHMARKS.md). Every figure comes from this one run:

1. plan + render (argv, QMP, tree) of a pod with 8 two-function GPU groups and 32 block
   volumes, for cold root-port, cold switch-port and hot root-port x virtio-blk/virtio-scsi;
2. the largest topology the planner accepts (bisection on the number of single-function GPU
   groups) in switch-port and root-port mode, the time to plan it and the error one beyond;
3. whole-process ``podplug plan`` wall time against ``python3 -c pass`` and
   ``python3 -c "import podplug.cli"``, with an import breakdown and the in-process phases.

Timings are medians (plus min and the number of runs) from ``time.perf_counter``. The
scenarios of a table are measured in interleaved rounds, so a burst of load on this shared
machine hits all of them alike and their ratios stay meaningful.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # ``python3 bench/bench_plan.py`` puts bench/ first, not REPO
    sys.path.insert(0, str(REPO))

from podplug.errors import TopologyExhausted  # noqa: E402
from podplug.inputs.kata import RuntimeConfig  # noqa: E402
from podplug.inputs.load import load_inputs  # noqa: E402
from podplug.model.host import (  # noqa: E402
    IORESOURCE_MEM,
    Bar,
    CharNode,
    HostInventory,
    PciFunction,
)
from podplug.model.pci import CLASS_DISPLAY_3D, Bdf  # noqa: E402
from podplug.model.request import ContainerRequest  # noqa: E402
from podplug.plan.model import Plan  # noqa: E402
from podplug.plan.plan import plan  # noqa: E402
from podplug.render.argv import render_argv  # noqa: E402
from podplug.render.json_plan import plan_json  # noqa: E402
from podplug.render.qmp import render_qmp  # noqa: E402
from podplug.render.tree import render_tree  # noqa: E402
from tests.support import (  # noqa: E402
    PREF64,
    VFIO_GROUP_MAJOR,
    block,
    config,
    inventory,
    request,
    vfio_group,
)

DEMO = REPO / "podplug" / "demo"
MS = 1e3


@dataclass(frozen=True)
class Stats:
    """Timings of one measured thing, in seconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def runs(self) -> int:
        return len(self.samples)


def ms(seconds: float) -> str:
    return f"{seconds * MS:.3f}" if seconds < 0.01 else f"{seconds * MS:.1f}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- 1. plan + render of 8 two-function GPU groups and 32 volumes ---------------------------

MODES = (  # (label, cold_plug_vfio, hot_plug_vfio)
    ("cold root-port", "root-port", "no-port"),
    ("cold switch-port", "switch-port", "no-port"),
    ("hot root-port", "no-port", "root-port"),
)
DRIVERS = ("virtio-blk", "virtio-scsi")


@dataclass
class Scenario:
    label: str
    config: RuntimeConfig
    request: ContainerRequest
    inventory: HostInventory
    plan_times: list[float]
    render_times: list[float]
    plan: Plan | None = None


def pod_scenarios() -> list[Scenario]:
    inv = inventory(8, 2, blocks=32)
    req = request(*(vfio_group(12 + g) for g in range(8)),
                  *(block(i, f"/dev/vol{i:02d}") for i in range(32)))
    return [Scenario(f"{label}, {driver}", config(cold=cold, hot=hot, driver=driver), req, inv,
                     [], [])
            for label, cold, hot in MODES for driver in DRIVERS]


def render_all(p: Plan) -> int:
    return len(render_argv(p)) + len(render_qmp(p)["hotplug"]) + len(render_tree(p))


def bench_pod(runs: int, warmup: int) -> str:
    scenarios = pod_scenarios()
    for s in scenarios:  # sanity: every device placed, nothing rejected
        p = plan(s.config, s.request, s.inventory)
        counts = {b.value: n for b, n in p.counts().items()}
        assert counts["rejected"] == 0 and counts["hot-block"] == 32, (s.label, counts)
        s.plan = p
    gc.collect()
    for round_ in range(warmup + runs):
        for s in scenarios:
            t0 = time.perf_counter()
            p = plan(s.config, s.request, s.inventory)
            t1 = time.perf_counter()
            render_all(p)
            t2 = time.perf_counter()
            if round_ >= warmup:
                s.plan_times.append(t1 - t0)
                s.render_times.append(t2 - t1)
    rows = []
    for s in scenarios:
        pl, rd = Stats(tuple(s.plan_times)), Stats(tuple(s.render_times))
        assert s.plan is not None
        rows.append((s.label, len(s.plan.topology.controllers), ms(pl.median), ms(pl.min),
                     ms(rd.median), ms(rd.min), ms(pl.median + rd.median),
                     f"{rd.median / pl.median:.2f}", pl.runs))
    return table(("mode, block driver", "controllers", "plan median ms", "plan min ms",
                  "render median ms", "render min ms", "plan+render ms", "render/plan",
                  "runs"), rows)


def render_breakdown(runs: int) -> str:
    """Which renderer costs what, for one scenario (cold root-port, virtio-blk)."""
    s = pod_scenarios()[0]
    p = plan(s.config, s.request, s.inventory)
    renderers: list[tuple[str, Callable[[Plan], object]]] = [
        ("argv", render_argv), ("qmp", render_qmp), ("tree", render_tree),
        ("json (plan_json, not in the render column)", plan_json)]
    samples: dict[str, list[float]] = {name: [] for name, _ in renderers}
    for _ in range(runs):
        for name, fn in renderers:
            t0 = time.perf_counter()
            fn(p)
            samples[name].append(time.perf_counter() - t0)
    return table(("renderer (cold root-port, virtio-blk)", "median ms", "min ms", "runs"),
                 [(n, ms(Stats(tuple(v)).median), ms(Stats(tuple(v)).min), len(v))
                  for n, v in samples.items()])


# --- 2. the largest topology --------------------------------------------------------------

def gpu_groups(n: int) -> tuple[HostInventory, ContainerRequest]:
    """``n`` single-function PCIe GPUs, each its own IOMMU group 12.. (32 per host bus)."""
    funcs: dict[Bdf, PciFunction] = {}
    groups: dict[int, tuple[Bdf, ...]] = {}
    chars: dict[tuple[int, int], CharNode] = {}
    for g in range(n):
        number = 12 + g
        bdf = Bdf(0, 0x41 + g // 32, g % 32, 0)
        funcs[bdf] = PciFunction(bdf, 0x10DE, 0x2330, CLASS_DISPLAY_3D, True,
                                 (Bar(0, 16 << 20, IORESOURCE_MEM), Bar(1, 64 << 30, PREF64)),
                                 "vfio-pci", 0, number)
        groups[number] = (bdf,)
        chars[(VFIO_GROUP_MAJOR, number)] = CharNode(VFIO_GROUP_MAJOR, number, f"vfio/{number}")
    return HostInventory(funcs, groups, {}, chars), request(
        *(vfio_group(12 + g) for g in range(n)))


def plans(cfg: RuntimeConfig, n: int) -> TopologyExhausted | None:
    inv, req = gpu_groups(n)
    try:
        p = plan(cfg, req, inv)
    except TopologyExhausted as exc:
        return exc
    assert len(p.topology.vfio_targets) == n
    return None


def largest(cfg: RuntimeConfig) -> tuple[int, int]:
    """The largest n that plans (bisection after doubling) and the number of probes."""
    probes = 1
    if plans(cfg, 1) is not None:
        return 0, probes
    lo, hi = 1, 2
    while plans(cfg, hi) is None:  # lo plans, hi does not
        probes += 1
        lo, hi = hi, hi * 2
        if hi > 1 << 16:
            raise RuntimeError("no budget reached below 65536 devices")
    probes += 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        probes += 1
        if plans(cfg, mid) is None:
            lo = mid
        else:
            hi = mid
    return lo, probes


def bench_largest(runs: int) -> tuple[str, list[str]]:
    cases = [
        ("cold switch-port", config(cold="switch-port")),
        ("cold root-port", config(cold="root-port")),
        ("hot switch-port", config(hot="switch-port")),
        ("hot root-port", config(hot="root-port")),
    ]
    rows: list[tuple[object, ...]] = []
    errors: list[str] = []
    for label, cfg in cases:
        n, probes = largest(cfg)
        inv, req = gpu_groups(n)
        p = plan(cfg, req, inv)
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            plan(cfg, req, inv)
            samples.append(time.perf_counter() - t0)
        st = Stats(tuple(samples))
        beyond = plans(cfg, n + 1)
        assert beyond is not None
        rows.append((label, n, probes, len(p.topology.controllers), p.topology.bus_numbers,
                     p.topology.root_slots_used, ms(st.median), ms(st.min), st.runs,
                     f"{beyond.budget}"))
        errors.append(f"- {label}, N+1 = {n + 1}: `{beyond}`")
    return table(("mode (default_bridges=1)", "largest N", "probes", "controllers",
                  "bus numbers", "root-bus slots", "plan median ms", "plan min ms", "runs",
                  "budget hit at N+1"), rows), errors


SCALING_N = (30, 60, 120, 238)


def bench_scaling(runs: int) -> str:
    """Plan and each renderer against N (cold switch-port): which phase is not linear."""
    cfg = config(cold="switch-port")
    cases = []
    for n in SCALING_N:
        inv, req = gpu_groups(n)
        cases.append((n, inv, req, plan(cfg, req, inv)))
    phases: list[tuple[str, Callable[[HostInventory, ContainerRequest, Plan], object]]] = [
        ("plan", lambda inv, req, p: plan(cfg, req, inv)),
        ("argv", lambda inv, req, p: render_argv(p)),
        ("qmp", lambda inv, req, p: render_qmp(p)),
        ("tree", lambda inv, req, p: render_tree(p)),
        ("json", lambda inv, req, p: plan_json(p)),
        ("Plan.container_devices", lambda inv, req, p: p.container_devices),
    ]
    samples: dict[tuple[int, str], list[float]] = {
        (n, name): [] for n, *_ in cases for name, _ in phases}
    for _ in range(runs):
        for n, inv, req, p in cases:
            for name, fn in phases:
                t0 = time.perf_counter()
                fn(inv, req, p)
                samples[(n, name)].append(time.perf_counter() - t0)
    rows = []
    for n, *_ in cases:
        med = {name: statistics.median(samples[(n, name)]) for name, _ in phases}
        rows.append((n, *(ms(med[name]) for name, _ in phases),
                     f"{med['plan'] / n * 1e6:.0f}", f"{med['json'] / n * 1e6:.0f}", runs))
    return table(("N", *(f"{name} ms" for name, _ in phases), "plan us/device",
                  "json us/device", "runs"), rows)


# --- 3. the whole process ------------------------------------------------------------------

def podplug_exe() -> str:
    """The console script of this interpreter (not a pyenv shim found on PATH)."""
    beside = Path(sys.executable).parent / "podplug"
    found = str(beside) if beside.exists() else shutil.which("podplug")
    if found is None:
        raise SystemExit("podplug is not installed (pip install -e .)")
    return found


def other_podplug(exe: str) -> str | None:
    """The first other ``podplug`` on PATH (a wrapper such as a pyenv shim), if any."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "podplug"
        if (candidate.is_file() and os.access(candidate, os.X_OK)
                and candidate.resolve() != Path(exe).resolve()):
            return str(candidate)
    return None


IMPORT_PLAN_PATH = ("import podplug.cli, podplug.inputs.load, podplug.plan.plan, "
                    "podplug.render.argv, podplug.render.dot, podplug.render.json_plan, "
                    "podplug.render.qmp, podplug.render.tree")


def time_process(argv: Sequence[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - t0


def bench_process(runs: int, sysfs: Path) -> str:
    py, exe = sys.executable, podplug_exe()
    plan_args = ["plan", "--config", "podplug/demo/configuration.toml", "--spec",
                 "podplug/demo/spec.json", "--sysfs", str(sysfs)]
    commands: list[tuple[str, list[str]]] = [
        ("`python3 -c pass`", [py, "-c", "pass"]),
        ('`python3 -c "import podplug.cli"`', [py, "-c", "import podplug.cli"]),
        ("`python3 -c` import of all `podplug plan` needs", [py, "-c", IMPORT_PLAN_PATH]),
        ("`podplug plan` (tree)", [exe, *plan_args]),
        ("`podplug plan --format json`", [exe, *plan_args, "--format", "json"]),
    ]
    other = other_podplug(exe)
    if other is not None:  # e.g. a pyenv shim: what typing ``podplug`` in a shell runs
        commands.append((f"`podplug plan` via `{other}`", [other, *plan_args]))
    samples: dict[str, list[float]] = {label: [] for label, _ in commands}
    for round_ in range(runs + 2):  # two warm-up rounds (page cache, .pyc)
        for label, argv in commands:
            t = time_process(argv)
            if round_ >= 2:
                samples[label].append(t)
    base = Stats(tuple(samples[commands[0][0]])).median
    rows = []
    for label, _ in commands:
        st = Stats(tuple(samples[label]))
        rows.append((label, ms(st.median), ms(st.min), f"{st.median / base:.2f}",
                     ms(st.median - base), st.runs))
    return table(("command (interpreter: sys.executable)", "median ms", "min ms",
                  "x python3 -c pass", "median - pass ms", "runs"), rows)


def import_breakdown(runs: int) -> str:
    """Cumulative import time of the heavy modules, from ``-X importtime`` (medians)."""
    wanted = ("podplug.cli", "podplug.inputs.load", "podplug.inputs.cdi", "yaml",
              "podplug.inputs.kata", "podplug.host.sysfs", "podplug.plan.plan",
              "podplug.render.argv")
    found: dict[str, list[float]] = {name: [] for name in wanted}
    for _ in range(runs):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", IMPORT_PLAN_PATH],
                             cwd=REPO, capture_output=True, text=True, check=True).stderr
        for line in err.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[2].strip() in found:
                found[parts[2].strip()].append(int(parts[1]) / 1e6)
    return table(("module (cumulative, first import)", "median ms", "min ms", "runs"),
                 [(f"`{n}`", ms(statistics.median(v)), ms(min(v)), len(v))
                  for n, v in found.items() if v])


def in_process(runs: int, sysfs: Path) -> str:
    """The phases of ``podplug plan`` inside one warm process (demo inputs)."""
    cfg, spec = DEMO / "configuration.toml", DEMO / "spec.json"
    phases: dict[str, list[float]] = {"load_inputs (TOML, spec, sysfs scan)": [],
                                      "plan": [], "render tree": []}
    for _ in range(runs):
        t0 = time.perf_counter()
        inputs = load_inputs(cfg, spec, cdi_dirs=[], sysfs_root=sysfs)
        t1 = time.perf_counter()
        p = plan(inputs.config, inputs.request, inputs.inventory)
        t2 = time.perf_counter()
        render_tree(p)
        t3 = time.perf_counter()
        for name, t in zip(phases, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            phases[name].append(t)
    return table(("phase (demo, in process, warm)", "median ms", "min ms", "runs"),
                 [(n, ms(statistics.median(v)), ms(min(v)), len(v)) for n, v in phases.items()])


def git_state() -> str:
    """HEAD and whether podplug/ has uncommitted changes (the figures are for the tree)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else "?"
    dirty = git("status", "--porcelain", "--", "podplug")
    changed = len(dirty.splitlines()) if dirty != "?" else "?"
    return f"git {git('rev-parse', '--short', 'HEAD')}, {changed} changed paths under podplug/"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=300, help="in-process repetitions")
    parser.add_argument("--cli-runs", type=int, default=15, help="subprocess repetitions")
    args = parser.parse_args(argv)

    print(f"# podplug planning benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"\nmachine: {platform.machine()}, nproc {os.cpu_count()}, "
          f"Python {platform.python_version()} ({sys.executable}), {platform.platform()}\n")

    print(f"code: {git_state()}; load average at start: {load()}\n")
    print("## 1. Plan + render: 8 two-function GPU groups + 32 block volumes\n")
    print(bench_pod(args.runs, warmup=20))
    print()
    print(render_breakdown(args.runs))

    print("\n## 2. Largest topology (single-function GPU groups, no volumes)\n")
    text, errors = bench_largest(max(20, args.runs // 10))
    print(text)
    print("\nOne step beyond:\n")
    print("\n".join(errors))
    print("\nScaling with N (cold switch-port; medians):\n")
    print(bench_scaling(max(7, args.runs // 20)))

    print("\n## 3. Whole process: `podplug plan` on the demo fake host\n")
    with tempfile.TemporaryDirectory(prefix="podplug-bench-") as tmp:
        sysfs = Path(tmp) / "sys"
        subprocess.run([podplug_exe(), "fake-host", str(sysfs), "--host", "demo"], check=True,
                       stdout=subprocess.DEVNULL)
        print(bench_process(args.cli_runs, sysfs))
        print()
        print(import_breakdown(max(9, args.cli_runs // 2)))
        print()
        print(in_process(max(20, args.runs // 3), sysfs))
    print(f"\nload average at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
