"""Where a fuzz case runs (the shell): its files written, its sysfs damage applied and
undone, the CLI run in-process with a time bound, and the outcome judged.

The command goes through :func:`podplug.cli.main`, the path a user's input takes: loading
(:mod:`podplug.inputs.load`, the confined sysfs reader), planning, rendering, ``doctor``.
``doctor`` always gets ``--qemu`` (the distribution's binary), so that a fuzzed ``path`` key
is never executed.

Judged, for every case:

* ESCAPE: anything but a podplug error left ``main`` (a traceback: a bug);
* HANG: the case ran past its time bound (SIGALRM);
* BAD_OUTPUT: a line of stderr that is not podplug's own (``podplug: ...``: a value forged a
  line), an error that is not exactly one line, or a control character other than a newline
  in stdout or stderr;
* otherwise the exit code names the outcome (0, 8 rejected, 10/11 doctor, 2 input, 3 host,
  4 plan...).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import signal
import time
import traceback
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import FrameType

from podplug.fuzz import gen
from podplug.fuzz.case import Action, Case, SysfsEdit
from podplug.host.fakesysfs import demo_host, eight_gpu_host, write_fake_sysfs
from podplug.model.text import shown

QEMU = "/usr/bin/qemu-system-x86_64"


class Outcome(Enum):
    OK = "ok (0)"
    REJECTED = "plan with a rejected device (8)"
    DOCTOR_WARNING = "doctor warning (10)"
    DOCTOR_ERROR = "doctor error (11)"
    INPUT_ERROR = "input error (2)"
    HOST_ERROR = "host error (3)"
    PLAN_ERROR = "plan error (4)"
    OTHER_EXIT = "other exit code"
    ESCAPE = "ESCAPE (not a podplug error)"
    HANG = "HANG (over the time bound)"
    BAD_OUTPUT = "BAD OUTPUT (forged line, multi-line error, control character)"

    @property
    def failure(self) -> bool:
        return self in (Outcome.ESCAPE, Outcome.HANG, Outcome.BAD_OUTPUT)


_BY_CODE = {0: Outcome.OK, 8: Outcome.REJECTED, 10: Outcome.DOCTOR_WARNING,
            11: Outcome.DOCTOR_ERROR, 2: Outcome.INPUT_ERROR, 3: Outcome.HOST_ERROR,
            4: Outcome.PLAN_ERROR}


@dataclass(frozen=True)
class Result:
    index: int
    outcome: Outcome
    seconds: float
    detail: str = ""


class _Hang(BaseException):
    """Raised by SIGALRM inside the case: a BaseException, so no ``except Exception``
    in the code under test swallows it."""


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise _Hang


class Workbench:
    """A private directory with the base sysfs trees, a fake ``/dev`` and the case files."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        disk = root / "disk.img"
        with open(disk, "wb") as handle:
            handle.truncate(1 << 20)
        hosts = [demo_host(str(disk)), eight_gpu_host(str(disk)),
                 *(gen.fake_host(random.Random(f"{seed}:host:{k}"), str(disk)) for k in range(3))]
        self.trees = [write_fake_sysfs(root / f"sys{k}", host) for k, host in enumerate(hosts)]
        self.entries = [self._entries(tree) for tree in self.trees]
        self.dev = root / "dev"
        (self.dev / "vfio").mkdir(parents=True)
        (self.dev / "fuzz0").write_bytes(b"")
        os.mkfifo(self.dev / "fuzzblk")
        (self.dev / "fuzzlink").symlink_to("/etc/passwd")
        (self.dev / "vfio" / "12").symlink_to("../fuzz0")
        self.cdi = root / "cdi"
        self.cdi.mkdir()
        self.config = root / "configuration.toml"
        self.spec = root / "config.json"

    @staticmethod
    def _entries(tree: Path) -> list[str]:
        found = []
        for directory, dirs, files in os.walk(tree):  # never follows links
            for name in files + [d for d in dirs if (Path(directory) / d).is_symlink()]:
                found.append(os.path.relpath(Path(directory) / name, tree))
        return sorted(found)

    def warm_up(self) -> None:
        """Run each command once on the demo, untimed: every module the CLI imports lazily
        is imported now, not under a case's alarm (an import cut short by it would leave a
        half-made module behind for every later case)."""
        demo = Path(__file__).resolve().parents[1] / "demo"
        for command in (*(("plan", "--format", f) for f in ("tree", "json", "argv", "qmp", "dot")),
                        ("doctor", "--kata-version", "3.14.0", "--qemu", QEMU)):
            from podplug.cli import main

            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                main([*command, "--config", str(demo / "configuration.toml"), "--spec",
                      str(demo / "spec.json"), "--sysfs", str(self.trees[0])])

    def run(self, case: Case, limit: float) -> Result:
        self.config.write_bytes(case.kata)
        self.spec.write_bytes(case.spec)
        for old in self.cdi.iterdir():
            old.unlink()
        for name, text in case.cdi:
            (self.cdi / name).write_bytes(text)
        tree = self.trees[case.tree]
        argv = [*case.command, "--config", str(self.config), "--spec", str(self.spec),
                "--sysfs", str(tree), "--cdi-dir", str(self.cdi), "--dev-root", str(self.dev)]
        if case.command[0] == "doctor":
            argv += ["--qemu", QEMU]
        with _edited(tree, case.edits):
            return _judge(case.index, argv, limit)


def _judge(index: int, argv: list[str], limit: float) -> Result:
    from podplug.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    started = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, limit)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except _Hang:
        return Result(index, Outcome.HANG, time.monotonic() - started, f"over {limit} s")
    except BaseException as exc:  # what the fuzzer looks for
        signal.setitimer(signal.ITIMER_REAL, 0)
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                            for f in reversed(frames))
        return Result(index, Outcome.ESCAPE, time.monotonic() - started,
                      f"{type(exc).__name__}: {shown(str(exc), 200)} at {where}")
    finally:
        signal.signal(signal.SIGALRM, previous)
    seconds = time.monotonic() - started
    problem = output_problem(code, out.getvalue(), err.getvalue())
    if problem:
        return Result(index, Outcome.BAD_OUTPUT, seconds, problem)
    return Result(index, _BY_CODE.get(code, Outcome.OTHER_EXIT), seconds,
                  "" if code in _BY_CODE else f"exit {code}")


def output_problem(code: int, stdout: str, stderr: str) -> str:
    """What is wrong with a command's output, or "" (pure)."""
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        bad = next((c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cs")),
                   None)
        if bad is not None:
            return f"{name} holds control character {bad!r}"
    lines = stderr.splitlines()
    stray = next((line for line in lines if not line.startswith("podplug: ")), None)
    if stray is not None:
        return f"stderr line not podplug's: {shown(stray, 120)}"
    errors = [line for line in lines if line.startswith("podplug: error: ")]
    if code in (1, 2, 3, 4, 5, 6) and (len(errors) != 1 or lines[-1] != errors[0]):
        return f"exit {code} with {len(errors)} error lines"
    return ""


@contextlib.contextmanager
def _edited(tree: Path, edits: tuple[SysfsEdit, ...]) -> Iterator[None]:
    """The tree with ``edits`` applied (the last edit of a path wins), undone after."""
    by_path = {edit.path: edit for edit in edits}
    saved: list[tuple[Path, str, bytes | str | None]] = []
    try:
        for rel, edit in by_path.items():
            path = tree / rel
            if path.is_symlink():
                saved.append((path, "link", os.readlink(path)))
            elif path.is_file():
                saved.append((path, "file", path.read_bytes()))
            else:
                continue
            path.unlink()
            _apply(path, edit)
        yield
    finally:
        for path, kind, original in reversed(saved):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.is_symlink() or path.exists():
                path.unlink()
            if kind == "link":
                assert isinstance(original, str)
                path.symlink_to(original)
            else:
                assert isinstance(original, bytes)
                path.write_bytes(original)


def _apply(path: Path, edit: SysfsEdit) -> None:
    if edit.action is Action.CONTENT:
        path.write_bytes(edit.payload)
    elif edit.action is Action.FIFO:
        os.mkfifo(path)
    elif edit.action is Action.LINK_OUT:
        path.symlink_to("/etc/passwd")
    elif edit.action is Action.LINK_UP:
        path.symlink_to("../" * 12 + "etc/passwd")
    elif edit.action is Action.LINK_LOOP:
        path.symlink_to(path.name)
    elif edit.action is Action.LINK_DEVICE:
        path.symlink_to("/dev/zero")
    elif edit.action is Action.DIRECTORY:
        path.mkdir()
