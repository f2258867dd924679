"""The fuzzer (issue 10): a few thousand cases in the suite with zero escapes, hangs or
forged output; and proof that it would see each of those if they happened."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import podplug.fuzz.__main__ as fuzz
from podplug.fuzz.case import make_case
from podplug.fuzz.workbench import Outcome, output_problem
from podplug.inputs import load
from tests.support import REPO

FIXTURES = [REPO / "tests" / "fixtures"]


def test_two_thousand_cases_reach_every_layer_without_a_failure() -> None:
    results = list(fuzz.run_cases(2000, seed=7, jobs=2, limit=2.0, dirs=FIXTURES))
    counts = Counter(r.outcome for r in results)
    failures = [r for r in results if r.outcome.failure]
    assert not failures, failures[:5]
    assert len(results) == 2000
    # the cases get past the parsers: plans made and rendered, doctor run, hosts refused
    for reached in (Outcome.OK, Outcome.REJECTED, Outcome.DOCTOR_ERROR, Outcome.INPUT_ERROR,
                    Outcome.HOST_ERROR, Outcome.PLAN_ERROR):
        assert counts[reached] >= 20, counts


def test_a_case_is_a_function_of_seed_and_index() -> None:
    corpus = fuzz.load_corpus(FIXTURES)
    trees = [["bus/pci/devices/0000:41:00.0", "devices/virtual/block/loop0/dev"]]
    assert make_case(3, 99, corpus, trees) == make_case(3, 99, corpus, trees)
    assert make_case(3, 99, corpus, trees) != make_case(3, 100, corpus, trees)
    assert len(corpus.kata) > 100 and corpus.spec and corpus.cdi  # the real fixtures


def _run_patched(monkeypatch: pytest.MonkeyPatch, misbehave: Callable[[], object],
                 limit: float = 1.0) -> Counter[Outcome]:
    """Cases run with the spec loader made to misbehave on the cases' own files (the
    workers' untimed warm-up on the demo still passes)."""
    original = load.load_oci_spec

    def patched(path: str) -> object:
        return misbehave() if "worker-" in str(path) else original(path)

    monkeypatch.setattr(load, "load_oci_spec", patched)
    return Counter(r.outcome for r in fuzz.run_cases(30, seed=1, jobs=1, limit=limit,
                                                     dirs=FIXTURES))


def test_it_sees_an_exception_that_is_not_a_podplug_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> object:
        raise KeyError("a bug")

    assert _run_patched(monkeypatch, broken)[Outcome.ESCAPE] >= 10  # those that reach it


def test_it_sees_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    def stuck() -> object:
        time.sleep(5)
        raise AssertionError("not reached")

    assert _run_patched(monkeypatch, stuck, limit=0.05)[Outcome.HANG] >= 10


@pytest.mark.parametrize(("code", "stdout", "stderr", "found"), [
    (0, "rp0\n", "", ""),
    (2, "", "podplug: error: x.toml: bad\n", ""),
    (8, "plan\n", "podplug: rejected /dev/x: no port\n", ""),
    (2, "", "podplug: error: x.toml: bad\nforged line\n", "stderr line not podplug's"),
    (2, "", "podplug: error: one\npodplug: error: two\n", "2 error lines"),
    (3, "", "podplug: warning: w\n", "0 error lines"),
    (0, "rp0 \x1b[31m\n", "", "control character '\\x1b'"),
    (0, "", "podplug: warning: a\rb\n", "control character '\\r'"),
])
def test_output_judgement(code: int, stdout: str, stderr: str, found: str) -> None:
    problem = output_problem(code, stdout, stderr)
    assert (found in problem and problem) if found else problem == ""


def test_failing_cases_are_saved_to_rerun(tmp_path: Path) -> None:
    corpus = fuzz.load_corpus(FIXTURES)
    case = make_case(1, 5, corpus, [["a/b"]])
    fuzz.save_case(case, tmp_path / "case-5")
    assert (tmp_path / "case-5" / "configuration.toml").read_bytes() == case.kata
    assert (tmp_path / "case-5" / "config.json").read_bytes() == case.spec
    assert "command:" in (tmp_path / "case-5" / "case.txt").read_text()
