"""The ``podplug`` command line. Argument parsing, output formats and exit codes; no logic.

Exit codes: 0 success; 2 bad input (configuration, spec, CDI); 3 host (sysfs); 4 plan
(a topology budget, an unsupported platform); 5 guest image; 6 VM/QMP/agent; 7 ``run``:
a requested device is not usable in the guest; 8 ``plan``: the plan was made but at least one
requested device was rejected (each one is listed with its reason); 10/11 ``doctor``: the
worst finding is a warning / an error; 1 ``matrix``: a defect or a failed boot; 130
interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from podplug.errors import PodplugError
from podplug.model.enums import Bucket

if TYPE_CHECKING:
    from podplug.doctor import Severity
    from podplug.errors import ConfigError
    from podplug.inputs.kata import RuntimeConfig
    from podplug.model.qemu import QemuCapabilities
    from podplug.plan.model import Plan
    from podplug.plan.windows import Window

EXIT_UNUSABLE = 7
EXIT_DOCTOR_WARNING = 10
EXIT_DOCTOR_ERROR = 11
EXIT_REJECTED = 8
FORMATS = ("tree", "json", "argv", "qmp", "dot")
DEMO_DIR = Path(__file__).parent / "demo"
FAKE_HOSTS = ("demo", "eight-gpu")
HOTPLUG_MODES = ("acpi", "native")
QEMU_HELP = ("the QEMU binary (default: the configuration's [hypervisor.qemu] path, else "
             "/usr/bin/qemu-system-x86_64); its features are probed and the plan checked")
HOTPLUG_HELP = ("how the guest learns of hot-plugged devices (default acpi, the q35 default); "
                "native moves volumes to root ports and refuses hot bridge-port VFIO")


def _render(fmt: str, result: Plan) -> str:
    """The plan in one output format. Only that format's renderer is imported: json, argv
    and qmp bring in the plug sequence and QMP forms, which the default tree does not need."""
    if fmt == "json":
        from podplug.render.json_plan import plan_json

        return json.dumps(plan_json(result), indent=2) + "\n"
    if fmt == "argv":
        from podplug.render.argv import render_argv

        return _argv_lines(render_argv(result))
    if fmt == "qmp":
        from podplug.render.qmp import render_qmp

        return json.dumps(render_qmp(result), indent=2) + "\n"
    if fmt == "dot":
        from podplug.render.dot import render_dot

        return render_dot(result)
    from podplug.render.tree import render_tree

    return render_tree(result)


def _argv_lines(argv: list[str]) -> str:
    """One ``-flag value`` pair per line, shell-continued."""
    pairs = [f"{argv[i]} {argv[i + 1]}" for i in range(0, len(argv), 2)]
    return " \\\n".join(pairs) + "\n"


def cmd_plan(args: argparse.Namespace) -> int:
    from podplug.inputs.load import load_inputs
    from podplug.model.enums import HotplugMode
    from podplug.plan.plan import plan

    inputs = load_inputs(args.config, args.spec, cdi_dirs=args.cdi_dir or _default_cdi(),
                         sysfs_root=args.sysfs, dev_root=args.dev_root)
    for warning in inputs.warnings:
        print(f"podplug: warning: {warning}", file=sys.stderr)
    io_uring = True
    if args.qemu:  # the binary says whether io_uring is there (podplug.plan.blockdev)
        from podplug.model.qemu import QemuFeature

        caps = _probe(inputs.config, args.qemu)
        if isinstance(caps, PodplugError):
            raise caps
        io_uring = QemuFeature.AIO_IO_URING in caps.features
    result = plan(inputs.config, inputs.request, inputs.inventory,
                  hotplug=HotplugMode(args.hotplug), spare_floor=args.spare_window,
                  io_uring=io_uring)
    if args.qemu:
        _check_qemu(inputs.config, args.qemu, result)
    sys.stdout.write(_render(args.format, result))
    rejected = result.in_bucket(Bucket.REJECTED)
    for device in rejected:
        print(f"podplug: rejected {device.request.path}: {device.reason}", file=sys.stderr)
    return EXIT_REJECTED if rejected else 0


def _check_qemu(config: RuntimeConfig, override: str, result: Plan) -> None:
    """``plan --qemu``: refuse a plan the binary cannot run (a real assignment, no stand-ins)."""
    from podplug.errors import ConfigError
    from podplug.plan.needs import qemu_needs
    from podplug.vm.probe import require

    caps = _probe(config, override)
    if isinstance(caps, ConfigError):
        raise caps
    require(caps, qemu_needs(result))


def _default_cdi() -> list[str]:
    from podplug.inputs.cdi_defaults import DEFAULT_CDI_DIRS

    return list(DEFAULT_CDI_DIRS)


def cmd_fake_host(args: argparse.Namespace) -> int:
    from podplug.errors import InputError
    from podplug.host.fakesysfs import demo_host, eight_gpu_host, publish_fake_sysfs

    root = Path(args.dir)
    backing = root.absolute().parent / f"{root.name}-disk.img"
    if backing.is_symlink() or (backing.exists() and not backing.is_file()):
        raise InputError(f"{backing}: exists and is not a regular file; fake-host writes its "
                         "loop volume's backing file only as a new file")
    host = demo_host(str(backing)) if args.host == "demo" else eight_gpu_host(str(backing))
    publish_fake_sysfs(root, host)
    if not backing.exists():  # sparse: the loop device's backing file, made new, no link
        fd = os.open(backing, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.truncate(64 << 20)
    print(f"wrote a FAKE sysfs tree (stand-in for a real host, {args.host}) to {root}; "
          f"its loop0 is backed by {backing}")
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    from podplug.image.build import build_image

    image = build_image(Path(args.cache) if args.cache else None, force=args.force)
    print(f"kernel    {image.kernel} ({image.kernel_version})")
    print(f"initramfs {image.initramfs}")
    print(f"cmdline   {image.cmdline}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import tempfile
    from dataclasses import replace

    from podplug.inputs.load import load_inputs
    from podplug.model.enums import HotplugMode
    from podplug.run.report import render_table
    from podplug.run.session import RunOptions, run
    from podplug.run.volumes import VolumePolicy
    from podplug.vm.process import Accel

    def progress(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    options = RunOptions(
        accel=Accel(args.accel), emulate_vfio=args.emulate_vfio,
        hotplug=HotplugMode(args.hotplug), keep_running=args.keep_running, qemu=args.qemu,
        spare_window=args.spare_window,
        cache_dir=Path(args.cache) if args.cache else None, progress=progress,
        boot_timeout=args.boot_timeout,
    )
    with tempfile.TemporaryDirectory(prefix="podplug-demo-") as tmp:
        scratch: frozenset[str] = frozenset()
        if args.config is None and args.spec is None:
            config, spec, sysfs = _demo(Path(tmp), progress)
            scratch = frozenset({str(Path(tmp) / "xda.img")})  # made here, for this run
        elif args.config is None or args.spec is None:
            print("podplug: error: run takes both --config and --spec, or neither (demo)",
                  file=sys.stderr)
            return 2
        else:
            config, spec, sysfs = args.config, args.spec, args.sysfs
        inputs = load_inputs(config, spec, cdi_dirs=args.cdi_dir or _default_cdi(),
                             sysfs_root=sysfs, dev_root=args.dev_root)
        for warning in inputs.warnings:
            progress(f"warning: {warning}")
        options = replace(options, volumes=VolumePolicy(
            scratch=scratch, destructive=frozenset(args.destructive_check or ()),
            force=args.force))
        report = run(inputs, options)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        sys.stdout.write(render_table(report))
    return 0 if report.all_usable else EXIT_UNUSABLE


def _demo(tmp: Path, progress: Callable[[str], None]) -> tuple[str, str, str]:
    """The seed scenario against a FAKE host shipped with podplug (a stand-in host)."""
    from podplug.host.fakesysfs import demo_host, write_fake_sysfs

    disk = tmp / "xda.img"
    with open(disk, "wb") as handle:
        handle.truncate(64 << 20)
    sysfs = write_fake_sysfs(tmp / "sys", demo_host(str(disk)))
    progress("demo: Kata issue #11288's scenario (vfio_mode=vfio, cold_plug_vfio=root-port, "
             "GPU group 12 of two functions + raw block volume /dev/xda)")
    progress(f"demo: FAKE host sysfs (stand-in) in {sysfs}; /dev/xda = loop0 backed by {disk}")
    return str(DEMO_DIR / "configuration.toml"), str(DEMO_DIR / "spec.json"), str(sysfs)


def cmd_matrix(args: argparse.Namespace) -> int:
    from podplug.matrix.boot import boot, choose
    from podplug.matrix.check import Outcome, run_matrix
    from podplug.matrix.compare import losses
    from podplug.matrix.kata_models import era_by_name
    from podplug.matrix.render import render_json, render_markdown, render_table

    results = run_matrix()
    lost = None
    era_name = ""
    if args.compare:
        try:
            era = era_by_name(args.compare)
        except ValueError as exc:
            print(f"podplug: error: --compare: {exc}", file=sys.stderr)
            return 2
        era_name = era.value
        lost = {i: losses(r, era) for i, r in enumerate(results)}
    boots = None
    if args.boot:
        try:
            indices = choose(results, args.boot)
        except ValueError as exc:
            print(f"podplug: error: --boot: {exc}", file=sys.stderr)
            return 2
        boots = boot(results, indices, None, lambda t: print(t, file=sys.stderr, flush=True),
                     qemu=args.qemu)
    if args.format == "json":
        print(json.dumps(render_json(results, lost, era_name, boots), indent=2))
    elif args.format == "markdown":
        sys.stdout.write(render_markdown(results, lost, era_name, boots))
    else:
        sys.stdout.write(render_table(results, lost, era_name, boots))
    defects = [r for r in results if r.outcome is Outcome.DEFECT]
    failed_boots = [b for b in (boots or {}).values() if not _boot_ok(b)]
    return 1 if defects or failed_boots else 0


def _boot_ok(text: str) -> bool:
    if not text.startswith("booted, guest saw "):
        return False
    seen, _, total = text.removeprefix("booted, guest saw ").partition(" of ")
    return seen == total.split(",")[0]


def _doctor_exit(level: Severity) -> int:
    from podplug.doctor import Severity

    return {Severity.WARNING: EXIT_DOCTOR_WARNING, Severity.ERROR: EXIT_DOCTOR_ERROR}.get(
        level, 0)


def cmd_doctor_node(args: argparse.Namespace) -> int:
    from podplug.host.sysfs import scan_host
    from podplug.model.host import HostInventory
    from podplug.node.discover import discover
    from podplug.node.podresources import pod_resources_below
    from podplug.node.report import diagnose_node, node_json, node_text, node_worst

    node = discover(args.root, kata_version=args.kata_version or "",
                    env_kata_conf=os.environ.get("KATA_CONF_FILE", ""))
    sysfs = node.sysfs if args.sysfs == "/sys" else args.sysfs
    inventory = scan_host(sysfs) if os.path.isdir(sysfs) else HostInventory(sysfs_root=sysfs)
    own, reports = diagnose_node(node, inventory, pod_resources_below(args.root))
    if args.format == "json":
        print(json.dumps(node_json(node, own, reports), indent=2))
    else:
        sys.stdout.write(node_text(node, own, reports))
    return _doctor_exit(node_worst(own, reports))


def cmd_doctor(args: argparse.Namespace) -> int:
    from podplug.doctor import Finding, Severity, diagnose, worst
    from podplug.errors import ConfigError, UnsupportedPlatform
    from podplug.host.sysfs import scan_host
    from podplug.inputs.cdi import cdi_references
    from podplug.inputs.kata import RuntimeConfig, apply_annotations
    from podplug.inputs.load import (
        cdi_warnings,
        load_cdi_dirs,
        load_kata_config,
        load_oci_spec,
        with_cdi,
    )
    from podplug.matrix.kata_models import era_for_version
    from podplug.model.enums import HotplugMode, Hypervisor

    if args.node:
        return cmd_doctor_node(args)
    if not args.config:
        print("podplug: error: doctor needs --config FILE, or --node", file=sys.stderr)
        return 2
    config: RuntimeConfig | ConfigError | UnsupportedPlatform
    try:
        config = load_kata_config(args.config)
    except (ConfigError, UnsupportedPlatform) as exc:
        config = exc
    request = None
    notes: tuple[str, ...] = ()
    if args.spec:
        request = load_oci_spec(args.spec)
        if isinstance(config, RuntimeConfig):
            try:
                config = apply_annotations(config, request.annotations)
            except ConfigError as exc:
                config = exc.with_path(args.spec)
        if cdi_references(request.annotations):
            registry = load_cdi_dirs(args.cdi_dir or _default_cdi())
            notes = cdi_warnings(registry)
            request = with_cdi(request, registry, args.dev_root)
    era = None
    if args.kata_version:
        try:
            era = era_for_version(args.kata_version)
        except ValueError as exc:
            print(f"podplug: error: --kata-version: {exc}", file=sys.stderr)
            return 2
    inventory = scan_host(args.sysfs)
    qemu = None  # podplug boots QEMU only: a Cloud Hypervisor plan is for checking
    if isinstance(config, RuntimeConfig) and config.hypervisor.kind is Hypervisor.QEMU:
        qemu = _probe(config, args.qemu)
    findings = diagnose(config, request=request, inventory=inventory, era=era,
                        version=args.kata_version or "", hotplug=HotplugMode(args.hotplug),
                        qemu=qemu, spare_floor=args.spare_window)
    findings += [Finding(Severity.WARNING, "cdi", note, "the reference library skips this file "
                         "too: fix it or remove it") for note in notes]
    for f in findings:
        fix = f"  -> {f.fix}" if f.fix and f.severity >= Severity.WARNING else ""
        print(f"{f.severity.name:<7} {f.check:<12} {f.message}{fix}")
    level = worst(findings)
    print(f"doctor: worst finding {level.name}")
    return _doctor_exit(level)


def _probe(config: RuntimeConfig, override: str | None) -> QemuCapabilities | ConfigError:
    """The configured QEMU binary's capabilities, or why there is none (for doctor)."""
    from podplug.errors import ConfigError
    from podplug.image.cache import default_cache_dir
    from podplug.vm.probe import probe_qemu, resolve_qemu

    hv = config.hypervisor
    try:
        binary = resolve_qemu(hv.path, override, hv.section)
    except ConfigError as exc:
        return exc
    return probe_qemu(binary, default_cache_dir())


def _window(text: str) -> Window:
    from podplug.plan.windows import parse_window

    try:
        return parse_window(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_planning_options(sub: argparse.ArgumentParser) -> None:
    """The planning inputs plan, run and doctor share."""
    from podplug.plan.windows import DEFAULT_SPARE_WINDOW, size_text

    sub.add_argument("--dev-root", default="/dev", metavar="DIR",
                     help="the directory that stands for /dev, where CDI device nodes are "
                     "completed from (default /dev)")
    sub.add_argument("--hotplug", choices=HOTPLUG_MODES, default="acpi", help=HOTPLUG_HELP)
    sub.add_argument("--spare-window", type=_window, default=DEFAULT_SPARE_WINDOW,
                     metavar="mem=SIZE,pref64=SIZE",
                     help="the least window a spare port gets when VFIO is hot-plugged "
                     f"(default mem={size_text(DEFAULT_SPARE_WINDOW.mem)},pref64="
                     f"{size_text(DEFAULT_SPARE_WINDOW.pref64)}; the host's largest device "
                     "bound to vfio-pci raises it)")


class _VersionAction(argparse.Action):
    """``--version``, looking the version up only when asked: importlib.metadata, with the
    email, csv and socket modules it brings in, cost every command ~25 ms of start-up."""

    def __init__(self, option_strings: Sequence[str], dest: str) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                         nargs=0, help="show program's version number and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"podplug {_version()}")
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("podplug")
    except PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podplug",
        description="Plan, plug and prove every device of a VM-isolated container.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="plan the topology and route every device (no VM)")
    p.add_argument("--config", required=True, help="Kata configuration.toml")
    p.add_argument("--spec", required=True, help="OCI runtime spec config.json")
    p.add_argument("--cdi-dir", action="append", metavar="DIR",
                   help="CDI spec directory (repeatable; default /etc/cdi and /var/run/cdi)")
    p.add_argument("--sysfs", default="/sys", metavar="DIR",
                   help="the directory that stands for /sys (default /sys)")
    p.add_argument("--format", choices=FORMATS, default="tree")
    _add_planning_options(p)
    p.add_argument("--qemu", metavar="BINARY", help="check the plan against this QEMU "
                   "binary's probed features (a plan it cannot run is refused, exit 4)")
    p.set_defaults(func=cmd_plan)

    r = sub.add_parser("run", help="boot a VM from the plan, plug every device, prove each "
                       "one in the guest (no arguments: the built-in demo)")
    r.add_argument("--config", help="Kata configuration.toml")
    r.add_argument("--spec", help="OCI runtime spec config.json")
    r.add_argument("--cdi-dir", action="append", metavar="DIR")
    r.add_argument("--sysfs", default="/sys", metavar="DIR")
    r.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="auto probes KVM with a short boot and falls back to TCG")
    r.add_argument("--emulate-vfio", action=argparse.BooleanOptionalAction, default=None,
                   help="emulated stand-ins for VFIO devices (default: when no host IOMMU)")
    _add_planning_options(r)
    r.add_argument("--keep-running", action="store_true")
    r.add_argument("--qemu", metavar="BINARY", help=QEMU_HELP)
    r.add_argument("--destructive-check", action="append", metavar="CONTAINER_PATH",
                   help="ALSO write to this volume and make a filesystem on it (DESTROYS its "
                   "data; repeatable). Volumes are otherwise proven read-only, but for the "
                   "demo's scratch volume")
    r.add_argument("--force", action="store_true",
                   help="with --destructive-check: even when the volume is mounted on the "
                   "host or holds a filesystem or partition signature")
    r.add_argument("--boot-timeout", type=float, default=60.0, metavar="S",
                   help="seconds to wait for the guest agent (default 60; nested TCG "
                   "guests need minutes)")
    r.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    r.add_argument("--cache", metavar="DIR", help="guest image cache (~/.cache/podplug)")
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("image", help="the guest kernel + initramfs")
    isub = i.add_subparsers(dest="image_command", required=True)
    ib = isub.add_parser("build", help="build (or load from cache) the guest image")
    ib.add_argument("--cache", metavar="DIR")
    ib.add_argument("--force", action="store_true")
    ib.set_defaults(func=cmd_image_build)

    m = sub.add_parser("matrix", help="plan every configuration combination; with --compare, "
                       "show where an upstream Kata era loses devices")
    m.add_argument("--boot", metavar="SAMPLE", help="boot combinations for real: 'seed' (the "
                   "seed's four + one per block driver and port type), 'all', or indices")
    m.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    m.add_argument("--compare", metavar="ERA", help="kata-3.14-3.16 (kata-3.16), "
                   "kata-3.17-3.31, kata-3.32-4.0, kata-head")
    m.add_argument("--qemu", metavar="BINARY", help="with --boot: " + QEMU_HELP)
    m.set_defaults(func=cmd_matrix)

    d = sub.add_parser("doctor", help="check a real deployment: configuration, Kata version, "
                       "host")
    d.add_argument("--config")
    d.add_argument("--spec")
    d.add_argument("--node", action="store_true",
                   help="every Kata pod of this node, found on it (podplug.node.discover)")
    d.add_argument("--root", default="/", metavar="DIR",
                   help="with --node: the directory standing for / (default /)")
    d.add_argument("--format", choices=("text", "json"), default="text")
    d.add_argument("--kata-version", metavar="X.Y.Z")
    d.add_argument("--cdi-dir", action="append", metavar="DIR")
    d.add_argument("--sysfs", default="/sys", metavar="DIR")
    _add_planning_options(d)
    d.add_argument("--qemu", metavar="BINARY", help=QEMU_HELP)
    d.set_defaults(func=cmd_doctor)

    f = sub.add_parser("fake-host", help="write a FAKE sysfs tree (a stand-in host) to DIR")
    f.add_argument("dir")
    f.add_argument("--host", choices=FAKE_HOSTS, default="demo")
    f.set_defaults(func=cmd_fake_host)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from podplug.interrupts import Interrupted, handled

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with handled():
            code: int = args.func(args)
        return code
    except PodplugError as exc:
        if args.debug:
            raise
        print(f"podplug: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        signame = f" by {exc}" if isinstance(exc, Interrupted) else ""
        print(f"podplug: interrupted{signame}; everything it started is stopped and removed",
              file=sys.stderr)
        return exc.exit_code if isinstance(exc, Interrupted) else 130
    except BrokenPipeError:  # the reader went away (podplug plan | head): say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
