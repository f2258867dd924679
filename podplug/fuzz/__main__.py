"""``python3 -m podplug.fuzz --count N``: run N generated and mutated cases, report counts
by outcome, exit 1 if any case escaped, hung or forged output (see :mod:`podplug.fuzz`)."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path

from podplug.fuzz.case import Case, Corpus, make_case
from podplug.fuzz.workbench import Outcome, Result, Workbench

_bench: Workbench | None = None
_corpus = Corpus()
_seed = 0
_limit = 1.0

REPO_FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
DEMO = Path(__file__).resolve().parents[1] / "demo"


def load_corpus(dirs: Sequence[Path]) -> Corpus:
    """Seed files: Kata TOML, OCI JSON and CDI specs found under ``dirs`` and the demo."""
    kata, spec, cdi = [(DEMO / "configuration.toml").read_bytes()], \
        [(DEMO / "spec.json").read_bytes()], []
    for folder in dirs:
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.is_symlink() or path.stat().st_size > 1 << 20:
                continue
            if path.suffix == ".toml":
                kata.append(path.read_bytes())
            elif path.suffix in (".yaml", ".yml") or (path.suffix == ".json"
                                                      and "cdi" in path.parts):
                cdi.append((path.name, path.read_bytes()))
            elif path.suffix == ".json" and path.name != "manifest.json":
                spec.append(path.read_bytes())
    return Corpus(tuple(dict.fromkeys(kata)), tuple(dict.fromkeys(spec)), tuple(cdi))


def _init(seed: int, dirs: Sequence[Path], limit: float, parent: str,
          worker: bool = False) -> None:
    global _bench, _corpus, _seed, _limit
    if worker:  # the parent takes the signals and ends the pool; a worker just goes
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _seed, _limit = seed, limit
    _corpus = load_corpus(dirs)
    _bench = Workbench(Path(tempfile.mkdtemp(prefix="worker-", dir=parent)), seed)
    _bench.warm_up()


def case_of(index: int) -> Case:
    assert _bench is not None
    return make_case(_seed, index, _corpus, _bench.entries)


def _one(index: int) -> Result:
    assert _bench is not None
    return _bench.run(case_of(index), _limit)


def _worker(k: int, jobs: int, start: int, count: int, seed: int, dirs: Sequence[Path],
            limit: float, parent: str, conn: Connection) -> None:
    """Worker ``k`` of ``jobs``: the cases ``start + k``, ``start + k + jobs``..."""
    _init(seed, dirs, limit, parent, worker=True)
    for index in range(start + k, start + count, jobs):
        conn.send(_one(index))
    conn.send(None)
    conn.close()


def run_cases(count: int, *, seed: int, jobs: int, limit: float, dirs: Sequence[Path],
              start: int = 0) -> Iterator[Result]:
    """Every result of cases ``start .. start+count-1``, in completion order. The workers
    are forked processes of podplug's own (no pool), each killed and reaped on every exit
    path, an interrupt included."""
    with tempfile.TemporaryDirectory(prefix="podplug-fuzz-") as parent:
        if jobs <= 1:
            _init(seed, dirs, limit, parent)
            yield from (_one(i) for i in range(start, start + count))
            return
        context = multiprocessing.get_context("fork")
        workers = []
        try:
            for k in range(jobs):
                mine, theirs = context.Pipe(duplex=False)
                proc = context.Process(target=_worker, args=(
                    k, jobs, start, count, seed, list(dirs), limit, parent, theirs))
                proc.start()
                theirs.close()
                workers.append((proc, mine))
            open_ends = [conn for _, conn in workers]
            while open_ends:
                for ready in wait(open_ends):
                    assert isinstance(ready, Connection)
                    try:
                        result = ready.recv()
                    except EOFError:
                        result = None  # a worker that died: its cases are missing
                    if result is None:
                        open_ends.remove(ready)
                    else:
                        yield result
        finally:
            for proc, conn in workers:
                if proc.is_alive():
                    proc.kill()
                proc.join()
                conn.close()


def save_case(case: Case, folder: Path) -> None:
    """The case's files, to rerun it by hand with the CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration.toml").write_bytes(case.kata)
    (folder / "config.json").write_bytes(case.spec)
    for name, text in case.cdi:
        (folder / "cdi").mkdir(exist_ok=True)
        (folder / "cdi" / name).write_bytes(text)
    lines = [f"tree {case.tree}; command: {' '.join(case.command)}"]
    lines += [f"sysfs edit: {e.path}: {e.action.value} {e.payload!r}" for e in case.edits]
    (folder / "case.txt").write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m podplug.fuzz", description=__doc__)
    parser.add_argument("--count", type=int, default=1000, help="cases to run (1000)")
    parser.add_argument("--seed", type=int, default=1, help="the run's seed (1)")
    parser.add_argument("--start", type=int, default=0, help="first case index (0)")
    parser.add_argument("--only", type=int, help="run the one case of this index")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--limit", type=float, default=1.0,
                        help="seconds a case may take before it counts as a hang (1.0)")
    parser.add_argument("--corpus", action="append", type=Path,
                        help="a folder of seed files (default: the repository's tests/fixtures)")
    parser.add_argument("--save", type=Path, help="write each failing case's files here")
    args = parser.parse_args(argv)
    dirs = args.corpus if args.corpus else [REPO_FIXTURES] if REPO_FIXTURES.is_dir() else []
    start, count = (args.only, 1) if args.only is not None else (args.start, args.count)
    began = time.monotonic()
    counts: Counter[Outcome] = Counter()
    failures: list[Result] = []
    seconds: list[float] = []
    for result in run_cases(count, seed=args.seed, jobs=1 if args.only is not None else
                            args.jobs, limit=args.limit, dirs=dirs, start=start):
        counts[result.outcome] += 1
        seconds.append(result.seconds)
        if result.outcome.failure:
            failures.append(result)
    wall = time.monotonic() - began
    print(f"podplug fuzz: seed {args.seed}, cases {start}..{start + count - 1}, "
          f"{args.jobs if args.only is None else 1} job(s), {wall:.1f} s wall")
    for outcome in Outcome:
        print(f"  {counts[outcome]:>8}  {outcome.value}")
    if seconds:
        print(f"  per case: median {statistics.median(seconds) * 1000:.1f} ms, "
              f"max {max(seconds) * 1000:.0f} ms")
    missing = count - len(seconds)
    if missing:
        print(f"  {missing:>8}  MISSING (a worker died before reporting them)")
    for result in sorted(failures, key=lambda f: f.index)[:50]:
        print(f"  case {result.index}: {result.outcome.name}: {result.detail}")
    if failures and args.save:
        with tempfile.TemporaryDirectory(prefix="podplug-fuzz-") as parent:
            _init(args.seed, dirs, args.limit, parent)
            for result in failures[:50]:
                save_case(case_of(result.index), args.save / f"case-{result.index}")
        print(f"  failing cases written to {args.save}")
    return 1 if failures or missing else 0


def _main() -> int:
    """``main`` with SIGINT/SIGTERM turned into an orderly stop (the work directory and the
    workers go with it)."""
    from podplug.interrupts import Interrupted, handled

    try:
        with handled():
            return main()
    except Interrupted as exc:
        print(f"podplug fuzz: interrupted by {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(_main())
