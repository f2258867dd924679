"""Every benchmark in one run, each podplug figure beside its floor: ``python3 bench/all.py``.

Rewrites ``BENCHMARKS.md`` (everything above its by-hand marker) and the plots in
``bench/plots/``, and keeps the raw samples in ``bench/results.json``. Real QEMU under the
accelerator these machines have (TCG), podplug's own guest kernel and agent, and the floor
of :mod:`bench.floor` on the same kernel and command line. ``--quick`` cuts the rounds to
check the script itself; its figures are not for the file (it writes to ``--out``).
Benchmarks stay out of the test suite (DESIGN: speed is measured here, never in tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # ``python3 bench/all.py`` puts bench/ first, not REPO
    sys.path.insert(0, str(REPO))

from bench import bench_floor as bf  # noqa: E402
from bench import bench_plan as bp  # noqa: E402
from bench.bench_run import (  # noqa: E402
    HOTPLUG_CONFIG,
    bench_cli,
    fake_host,
    inputs_for,
)
from podplug.image.build import build_image  # noqa: E402
from podplug.model.enums import HotplugMode  # noqa: E402
from podplug.plan.plan import plan as make_plan  # noqa: E402
from podplug.vm.process import DEFAULT_QEMU  # noqa: E402
from tests.support import live_qemu  # noqa: E402

HOTPLUG_HEADER = ("mode", "target", "add -> visible, podplug", "floor", "ratio",
                  "del -> DEVICE_DELETED, podplug", "floor", "ratio", "busy refusals")
BATCH_HEADER = ("volumes", "plug + each proven visible, podplug", "floor", "ratio",
                "unplug, podplug", "floor", "ratio")
MARKER = "<!-- by hand below: bench/all.py keeps everything after this line -->"
PLOTS = REPO / "bench" / "plots"


def cells(samples: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """``median [min-max] (n)``."""
    if not samples:
        return "-"
    m = statistics.median(samples) * scale
    return (f"{m:.{digits}f} [{min(samples) * scale:.{digits}f}-"
            f"{max(samples) * scale:.{digits}f}] ({len(samples)})")


def ratio(p: bf.Pair) -> str:
    return "-" if p.ratio != p.ratio else f"**{p.ratio:.2f}**"


def pair_rows(pairs: Sequence[bf.Pair]) -> list[tuple[str, ...]]:
    return [(p.label, cells(p.podplug), cells(p.floor), ratio(p)) for p in pairs]


# --- plots -------------------------------------------------------------------------------------

def _plt():  # type: ignore[no-untyped-def]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_boot(result: bf.BootResult, path: Path) -> None:
    plt = _plt()
    labels, parts = [], {"pre-kernel (QEMU, firmware, loading)": [], "kernel to /init": [],
                         "/init: channel modules": [], "to the agent's hello": [],
                         "kernel + floor init": []}
    for key, samples in result.breakdown.items():
        labels.append(key.replace(" / ", "\n").replace(" (", "\n("))
        med = {f.name: statistics.median(getattr(s, f.name) for s in samples)
               for f in dataclasses.fields(bf.BootSample)}
        floor = med["kernel"] != med["kernel"]
        parts["pre-kernel (QEMU, firmware, loading)"].append(med["pre_kernel"])
        parts["kernel to /init"].append(0.0 if floor else med["kernel"])
        parts["/init: channel modules"].append(0.0 if floor else med["init"])
        parts["to the agent's hello"].append(0.0 if floor else med["ready"])
        parts["kernel + floor init"].append(med["total"] - med["pre_kernel"] if floor else 0.0)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    bottom = [0.0] * len(labels)
    for name, values in parts.items():
        ax.barh(labels, values, left=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("seconds from QEMU's start (medians)")
    ax.set_title("Boot to a ready agent: podplug and its floor, per phase")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_hotplug(groups: dict[str, list[bf.Target]], path: Path) -> None:
    plt = _plt()
    data, labels = [], []
    for mode, targets in groups.items():
        for t in targets:
            for who, cyc in (("podplug", t.podplug), ("floor", t.floor)):
                data.append([s * 1e3 for s in cyc.add])
                labels.append(f"{mode}: {t.label} / {who}")
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(labels) + 1.2))
    ax.boxplot(data, orientation="horizontal", tick_labels=labels, showfliers=True)
    for i, samples in enumerate(data, start=1):
        ax.plot(samples, [i] * len(samples), "o", ms=3, alpha=0.5)
    ax.set_xlabel("device_add sent -> visible in the guest (ms)")
    ax.set_title("Hot-plug latency per target, podplug beside its floor")
    ax.tick_params(axis="y", labelsize=7)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_batches(results: list[bf.BatchResult], path: Path) -> None:
    plt = _plt()
    sizes = [r.size for r in results]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, get in (("podplug plug + proven visible", lambda r: r.plug.podplug),
                       ("floor plug + visible", lambda r: r.plug.floor),
                       ("podplug unplug", lambda r: r.unplug.podplug),
                       ("floor unplug", lambda r: r.unplug.floor)):
        ax.plot(sizes, [statistics.median(get(r)) for r in results], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("volumes in one request")
    ax.set_ylabel("seconds (median)")
    ax.set_title("Batch time against batch size (virtio-blk on pci-bridge slots, ACPI)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_plan(points: list[tuple[int, float]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([n for n, _ in points], [t * 1e3 for _, t in points], "o-")
    ax.set_xlabel("single-function GPU groups (cold switch-port)")
    ax.set_ylabel("plan, median ms")
    ax.set_title("Plan time against device count")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- measurements not in the other modules --------------------------------------------------------

def plan_points(runs: int) -> list[tuple[int, float]]:
    cfg = bp.config("guest-kernel", cold="switch-port")
    points = []
    for n in (1, 8, 16, 32, 64, 128, 192, 238):
        inv, req = bp.gpu_groups(n)
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            make_plan(cfg, req, inv)
            samples.append(time.perf_counter() - t0)
        points.append((n, statistics.median(samples)))
    return points


def proof_steps(rounds: int, image, root: Path, host: bf.Host) -> list[tuple[str, list[float]]]:  # type: ignore[no-untyped-def]
    """Each step of a volume's proof, timed on its own in the guest (the volume hot-plugged
    once), and the whole read-only proof as ``podplug run`` does it."""
    from bench.bench_run import hot
    from podplug.model.enums import Bucket
    from podplug.plan.sequence import plug_steps
    from podplug.run.volumes import drive_for
    from podplug.vm.hotplug import carry_batch
    inputs = inputs_for(bf.DEMO / "configuration.toml", host)
    plan = make_plan(inputs.config, inputs.request, inputs.inventory)
    volume = hot(plan, Bucket.HOT_BLOCK)
    assert volume.agent is not None
    path = str(volume.guest_paths[0])
    samples: dict[str, list[float]] = {}
    with bf.booted(plan, image, root) as (vm, agent, _b):
        carry_batch(vm, plug_steps([volume], drive=lambda n: drive_for(
            n, inputs.inventory, fake_host=True, read_only=False)))
        agent.call("wait-blks", "10000", path)
        entry = volume.agent
        node = "/run/podplug/bench" + entry.container_path
        calls = {
            "`ping` (round trip, nothing else)": ("ping",),
            "`device` entry resolved (blk: disk below the PCI path, node made)":
                ("device", "/run/podplug/bench", "660", "3000", entry.type.value, entry.id,
                 entry.vm_path or "-", entry.container_path),
            "`serial DISK`": ("serial", "vda"),
            "`ro-check NODE` (size, first and last 4 KiB, direct I/O)": ("ro-check", node),
            "`rw NODE` (4 KiB saved, written, read back, restored)": ("rw", node),
            "`blk-sums NODE 0 8` (SHA-256 of 8 MiB, direct I/O)": ("blk-sums", node, "0", "8"),
            "`fs-check NODE` (mkfs, mount, write, remount, read back)": ("fs-check", node),
        }
        for _ in range(rounds):
            for label, call in calls.items():
                t0 = time.monotonic()
                agent.call(*call, timeout=60.0)
                samples.setdefault(label, []).append(time.monotonic() - t0)
    ro = [sum(samples[k][i] for k in list(calls)[1:4]) for i in range(rounds)]
    return [*samples.items(), ("read-only proof (device + serial + ro-check)", ro)]


# --- the file ----------------------------------------------------------------------------------

@dataclasses.dataclass
class State:
    """Everything one run measured (pickled with ``--keep`` to re-render with ``--render``)."""

    stamp: str
    qemu: str
    load_start: str
    load_end: str
    git: str
    minutes: float
    boot: bf.BootResult
    variants: list[str]
    hotplug: dict[str, list[bf.Target]]
    batches: list[bf.BatchResult]
    proofs: list[tuple[str, list[float]]]
    scale_text: str
    scale_raw: object
    points: list[tuple[int, float]]
    pod: str
    largest: str
    beyond: list[str]
    process: str
    cli: str
    left_qemu: int
    left_tmp: list[str]


def measure_scale(image: object, root: Path) -> tuple[str, object]:
    """The scale section (:mod:`bench.bench_scale`): its text and raw figures."""
    from bench import bench_scale
    scale = bench_scale.run(image, root)
    return bench_scale.markdown(scale), dataclasses.asdict(scale)


def measure(quick: bool, scale: bool = True) -> State:
    rounds = {"boot": 2 if quick else 7, "acpi": 2 if quick else 9, "native": 1 if quick else 3,
              "batch": 1 if quick else 3, "plan": 30 if quick else 300, "cli": 3 if quick else 15,
              "proof": 2 if quick else 7, "run": 1 if quick else 3}
    sizes = (1, 4, 16) if quick else (1, 2, 4, 8, 16, 32, 64)
    started = time.monotonic()
    stamp = f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    qemu = subprocess.run([DEFAULT_QEMU, "--version"], capture_output=True, text=True,
                          check=True).stdout.splitlines()[0]
    load0 = bp.load()
    image = build_image()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="podplug-bench-") as tmp:
        root = Path(tmp)
        host = fake_host(root)
        say("boot")
        boot = bf.bench_boot(rounds["boot"], image, host, root)
        cfg = root / "hotplug.toml"
        cfg.write_text(HOTPLUG_CONFIG)
        inputs = inputs_for(cfg, host)
        hotplug: dict[str, list[bf.Target]] = {}
        for mode in (HotplugMode.ACPI, HotplugMode.NATIVE):
            say(f"hot-plug {mode.value}")
            hotplug[mode.value] = bf.bench_hotplug(mode, rounds[mode.value], image, inputs, root)
        say("hot-plug scsi")
        hotplug["acpi"].append(bf.bench_scsi(rounds["acpi"], image, host, root))
        say("batches")
        batches = bf.bench_batches(sizes, rounds["batch"], image, root)
        say("proof steps")
        proofs = proof_steps(rounds["proof"], image, root, host)
        scale_text, scale_raw = "(not measured in this run)", None
        if scale and not quick:
            say("scale")
            scale_text, scale_raw = measure_scale(image, root)
        say("plan")
        points = plan_points(max(5, rounds["plan"] // 30))
        pod = bp.bench_pod(rounds["plan"], warmup=10)
        largest, beyond = bp.bench_largest(max(10, rounds["plan"] // 10))
        sysfs = root / "plan-sys"
        subprocess.run([sys.executable, "-m", "podplug.cli", "fake-host", str(sysfs), "--host",
                        "demo"], check=True, stdout=subprocess.DEVNULL, cwd=REPO)
        process = bp.bench_process(rounds["cli"], sysfs)
        say("podplug run")
        (root / "cli-tmp").mkdir()
        for traversed in (root, root / "cli-tmp"):  # QEMU runs as nobody below them
            traversed.chmod(0o711)
        cli = bench_cli(rounds["run"], root / "cli-tmp")
        left_tmp = sorted(p.name for p in (root / "cli-tmp").iterdir())
        variants = [label for label, _, _ in bf.boot_variants(host)]
    return State(stamp, qemu, load0, bp.load(), bp.git_state(),
                 (time.monotonic() - started) / 60, boot, variants, hotplug, batches, proofs,
                 scale_text, scale_raw, points, pod, largest, beyond, process, cli,
                 len(live_qemu(os.getpid())), left_tmp)


def render(st: State, out: Path, plots: Path) -> str:
    """The file's generated part; the plots are written into ``plots``."""
    plots.mkdir(parents=True, exist_ok=True)
    plot_boot(st.boot, plots / "boot.png")
    plot_hotplug(st.hotplug, plots / "hotplug.png")
    plot_batches(st.batches, plots / "batches.png")
    plot_plan(st.points, plots / "plan.png")
    rel = os.path.relpath(plots, out.parent)
    b = {p.label: p for p in st.boot.pairs}
    seed, eight, none = (b[label] for label in st.variants)
    eight_p = statistics.median(eight.podplug) / statistics.median(none.podplug)
    eight_f = statistics.median(eight.floor) / statistics.median(none.floor)
    sec: list[str] = []
    sec.append(f"""# Benchmarks

Generated by `python3 bench/all.py` (about {st.minutes:.0f} minutes);
do not edit above the by-hand marker. Raw samples: `bench/results.json`.

- **Run:** {st.stamp}, {st.git}.
- **Machine:** {platform.machine()}, {os.cpu_count()} cores (shared), {platform.platform()},
  Python {platform.python_version()}, {st.qemu}, accelerator **TCG** (no usable KVM here).
  Load average {st.load_start} at the start, {st.load_end} at the end.
- **Method.** Every podplug figure stands beside its **floor**: the same work done by raw
  QEMU with nothing of podplug in it, on the same kernel, initramfs bytes and QEMU command
  line (`bench/floor.py`): boot with a minimal `/init` that loads only its channel's modules
  and answers at once on the same virtio-serial port; `device_add` with a guest-side probe
  that polls sysfs every 10 ms for the new entry and nothing else; `device_del` to
  `DEVICE_DELETED`. podplug and floor run in interleaved rounds (both VMs alive together for
  hot-plug), so load bursts hit both. Cells are `median [min-max] (runs)` in seconds; the
  ratio is podplug's median over the floor's.
""")
    sec.append(f"""## 1. Boot to a ready agent

![boot breakdown]({rel}/boot.png)

{bp.table(("plan", "podplug s", "floor s", "podplug / floor"), pair_rows(st.boot.pairs))}

- 8 two-function groups against none: podplug **{eight_p:.2f}x**, floor {eight_f:.2f}x.
- podplug here is `Vm.launch` (QMP connected) and `AgentClient.wait_ready` (the agent's
  hello), as `podplug run`'s boot; the seed demo is {ratio(seed)} of its floor.
""")
    rows = []
    for mode, targets in st.hotplug.items():
        for t in targets:
            add, dele = bf.Pair("", t.podplug.add, t.floor.add), bf.Pair("", t.podplug.unplug,
                                                                          t.floor.unplug)
            rows.append((mode, t.label, cells(t.podplug.add), cells(t.floor.add), ratio(add),
                         cells(t.podplug.unplug), cells(t.floor.unplug), ratio(dele),
                         t.podplug.busy))
    sec.append(f"""## 2. Hot-plug and unplug per target

![hot-plug latency]({rel}/hotplug.png)

{bp.table(HOTPLUG_HEADER, rows)}

podplug's add is `carry_batch` of the device's steps (pipelined, placement read back over
QOM) and the agent's probe (`wait-blks`, `wait-pcis`, `blk-of-scsi`); its del is `carry`
of the `device_del` (retried every 0.1 s while native hot-plug's power indicator blinks).
""")
    rows = [(r.size, cells(r.plug.podplug), cells(r.plug.floor), ratio(r.plug),
             cells(r.unplug.podplug), cells(r.unplug.floor), ratio(r.unplug)) for r in st.batches]
    sec.append(f"""## 3. Batches of volumes

![batch time]({rel}/batches.png)

{bp.table(BATCH_HEADER, rows)}

podplug: `carry_batch` (every `blockdev-add`/`device_add` in one QMP burst, placements read
back level by level) then one `wait-blks` for all; unplug: `unplug_batch`. The floor sends
the same commands in one burst and polls `/sys/block/vd*`. Its probe is a shell loop
every 10 ms on the guest's one vCPU, where the kernel enumerates the slots: from 8
volumes up it slows the guest more than podplug's `wait-blks` (20 ms, one glob per
disk), so there the floor is no lower bound. The guest's own cost, about 0.1 s a slot
enumerated one after another under TCG, is what both pay.
""")
    sec.append(f"""## 4. Proofs in the guest (the seed's volume, hot-plugged once)

{bp.table(("step", "seconds"), [(label, cells(s)) for label, s in st.proofs])}
""")
    sec.append(f"""## 5. Scale, booted

{st.scale_text}
""")
    sec.append(f"""## 6. Planning

![plan time]({rel}/plan.png)

Plan time by device count (median ms): {", ".join(f"N={n}: {t * 1e3:.2f}" for n, t in st.points)}.

8 two-function GPU groups + 32 volumes, plan + render:

{st.pod}

Largest topologies:

{st.largest}

One step beyond:

{chr(10).join(st.beyond)}

Whole process (`podplug plan` on the demo fake host) against a bare interpreter:

{st.process}
""")
    sec.append(f"""## 7. The whole `podplug run` demo

{st.cli}
""")
    sec.append(f"Left behind: {st.left_qemu} QEMU processes, {len(st.left_tmp)} entries in "
               f"`podplug run`'s TMPDIR {st.left_tmp or ''}.\n")
    return "\n".join(sec)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few rounds: check the script")
    parser.add_argument("--out", type=Path, default=None,
                        help="write here instead of BENCHMARKS.md (default for --quick: /tmp)")
    parser.add_argument("--keep", type=Path, help="also pickle what was measured here")
    parser.add_argument("--render", type=Path, help="render a --keep pickle, measure nothing")
    parser.add_argument("--no-scale", action="store_true", help="leave out the scale boot")
    parser.add_argument("--scale-only", action="store_true",
                        help="with --render: measure the scale section alone and add it")
    args = parser.parse_args(argv)
    out = args.out or (Path(tempfile.gettempdir()) / "BENCHMARKS.quick.md" if args.quick
                       else REPO / "BENCHMARKS.md")
    elsewhere = bool(args.out) or args.quick
    plots = (out.parent / "plots") if elsewhere else PLOTS
    if args.render:
        st = pickle.loads(args.render.read_bytes())  # our own --keep file
        if args.scale_only:
            with tempfile.TemporaryDirectory(prefix="podplug-bench-") as tmp:
                text, raw_scale = measure_scale(build_image(), Path(tmp))
            st = dataclasses.replace(st, scale_text=text, scale_raw=raw_scale)
    else:
        st = measure(args.quick, scale=not args.no_scale)
        if args.keep:  # the cycles' callables do not pickle; their samples do
            bare = {m: [dataclasses.replace(t, podplug_cycle=None, floor_cycle=None)
                        for t in ts] for m, ts in st.hotplug.items()}
            args.keep.write_bytes(pickle.dumps(dataclasses.replace(st, hotplug=bare)))
    kept = ""
    if out.exists() and MARKER in out.read_text():
        kept = out.read_text().split(MARKER, 1)[1]
    out.write_text(render(st, out, plots) + "\n" + MARKER + kept)
    raw = {"boot": [dataclasses.asdict(p) for p in st.boot.pairs],
           "hotplug": {m: [{"label": t.label, "podplug": dataclasses.asdict(t.podplug),
                            "floor": dataclasses.asdict(t.floor)} for t in ts]
                       for m, ts in st.hotplug.items()},
           "batches": [dataclasses.asdict(r) for r in st.batches],
           "proofs": dict(st.proofs), "scale": st.scale_raw, "plan": st.points}
    results = (out.parent / "results.json") if elsewhere else REPO / "bench" / "results.json"
    results.write_text(json.dumps(raw, indent=1, default=str) + "\n")
    print(f"wrote {out}, {results} and {plots}/*.png")
    return 1 if st.left_qemu or st.left_tmp else 0


if __name__ == "__main__":
    sys.exit(main())
