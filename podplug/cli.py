"""The ``podplug`` command line. Argument parsing, output formats and exit codes; no logic.

Exit codes: 0 success; 2 bad input (configuration, spec, CDI); 3 host (sysfs); 4 plan
(a topology budget, an unsupported platform); 5 guest image; 6 VM/QMP/agent; 7 ``run``:
a requested device is not usable in the guest; 8 ``plan``: the plan was made but at least one
requested device was rejected (each one is listed with its reason); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from podplug.errors import PodplugError
from podplug.model.enums import Bucket

EXIT_REJECTED = 8
FORMATS = ("tree", "json", "argv", "qmp", "dot")
DEMO_DIR = Path(__file__).parent / "demo"
FAKE_HOSTS = ("demo", "eight-gpu")


def _render(fmt: str) -> Callable[..., str]:
    from podplug.render.argv import render_argv
    from podplug.render.dot import render_dot
    from podplug.render.json_plan import plan_json
    from podplug.render.qmp import render_qmp
    from podplug.render.tree import render_tree

    renderers: dict[str, Callable[..., str]] = {
        "tree": render_tree,
        "json": lambda p: json.dumps(plan_json(p), indent=2) + "\n",
        "argv": lambda p: _argv_lines(render_argv(p)),
        "qmp": lambda p: json.dumps(render_qmp(p), indent=2) + "\n",
        "dot": render_dot,
    }
    return renderers[fmt]


def _argv_lines(argv: list[str]) -> str:
    """One ``-flag value`` pair per line, shell-continued."""
    pairs = [f"{argv[i]} {argv[i + 1]}" for i in range(0, len(argv), 2)]
    return " \\\n".join(pairs) + "\n"


def cmd_plan(args: argparse.Namespace) -> int:
    from podplug.inputs.load import load_inputs
    from podplug.plan.plan import plan

    inputs = load_inputs(args.config, args.spec, cdi_dirs=args.cdi_dir or _default_cdi(),
                         sysfs_root=args.sysfs)
    result = plan(inputs.config, inputs.request, inputs.inventory)
    sys.stdout.write(_render(args.format)(result))
    rejected = result.in_bucket(Bucket.REJECTED)
    for device in rejected:
        print(f"podplug: rejected {device.request.path}: {device.reason}", file=sys.stderr)
    return EXIT_REJECTED if rejected else 0


def _default_cdi() -> list[str]:
    from podplug.inputs.cdi import DEFAULT_CDI_DIRS

    return list(DEFAULT_CDI_DIRS)


def cmd_fake_host(args: argparse.Namespace) -> int:
    from podplug.host.fakesysfs import demo_host, eight_gpu_host, write_fake_sysfs

    root = Path(args.dir)
    backing = str((root.parent / f"{root.name}-disk.img").resolve())
    host = demo_host(backing) if args.host == "demo" else eight_gpu_host(backing)
    write_fake_sysfs(root, host)
    print(f"wrote a FAKE sysfs tree (stand-in for a real host, {args.host}) to {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podplug",
        description="Plan, plug and prove every device of a VM-isolated container.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="plan the topology and route every device (no VM)")
    p.add_argument("--config", required=True, help="Kata configuration.toml")
    p.add_argument("--spec", required=True, help="OCI runtime spec config.json")
    p.add_argument("--cdi-dir", action="append", metavar="DIR",
                   help="CDI spec directory (repeatable; default /etc/cdi and /var/run/cdi)")
    p.add_argument("--sysfs", default="/sys", metavar="DIR",
                   help="the directory that stands for /sys (default /sys)")
    p.add_argument("--format", choices=FORMATS, default="tree")
    p.set_defaults(func=cmd_plan)

    f = sub.add_parser("fake-host", help="write a FAKE sysfs tree (a stand-in host) to DIR")
    f.add_argument("dir")
    f.add_argument("--host", choices=FAKE_HOSTS, default="demo")
    f.set_defaults(func=cmd_fake_host)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except PodplugError as exc:
        if args.debug:
            raise
        print(f"podplug: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("podplug: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
