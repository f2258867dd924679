"""The installed Kata release (:mod:`podplug.node.release`): kata-deploy's VERSION file, or
``kata-runtime --version`` run only when only root could have installed the binary."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from podplug.host.confined import Confined
from podplug.node.release import installed_release

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="ownership by root needs root")


@pytest.fixture
def node() -> Iterator[Path]:
    """A node root others can traverse (``nobody`` runs the binary), root's alone."""
    with tempfile.TemporaryDirectory(prefix="pp-node-", dir="/tmp") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        (root / "usr" / "bin").mkdir(parents=True, mode=0o755)
        for d in (root / "usr", root / "usr" / "bin"):
            d.chmod(0o755)
        yield root


def _binary(root: Path, body: str) -> Path:
    path = root / "usr" / "bin" / "kata-runtime"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_the_version_file_wins_and_a_given_version_over_it(node: Path) -> None:
    (node / "opt" / "kata").mkdir(parents=True)
    (node / "opt" / "kata" / "VERSION").write_text("3.16.0\n")
    _binary(node, 'echo "kata-runtime  : 3.99.0"')
    assert installed_release(Confined(node))[:2] == ("3.16.0", "/opt/kata/VERSION")
    assert installed_release(Confined(node), "3.17.0")[:2] == ("3.17.0", "--kata-version")


@needs_root
def test_a_root_owned_binary_is_asked_as_nobody(node: Path) -> None:
    # prints its version only when run as nobody (65534) with no HOME (an empty environment)
    _binary(node, '[ "$(/usr/bin/id -u)" = 65534 ] && [ -z "$HOME" ] && '
            'echo "kata-runtime  : 3.16.0"')
    version, source, problems = installed_release(Confined(node))
    assert (version, source) == ("3.16.0", "/usr/bin/kata-runtime --version"), problems


@needs_root
def test_a_binary_others_could_have_written_is_not_run(node: Path) -> None:
    marker = node / "ran"
    binary = _binary(node, f'touch {marker}; echo "kata-runtime  : 3.16.0"')
    (node / "usr" / "bin").chmod(0o777)
    version, _, problems = installed_release(Confined(node))
    assert version == "" and not marker.exists()
    assert any("writable by others than root" in p for p in problems)
    (node / "usr" / "bin").chmod(0o755)
    os.chown(binary, 65534, 65534)
    version, _, problems = installed_release(Confined(node))
    assert version == "" and not marker.exists()
    assert any("owned by uid 65534" in p for p in problems)


@needs_root
def test_a_binary_that_hangs_is_cut_off(node: Path) -> None:
    _binary(node, "sleep 30")
    version, _, problems = installed_release(Confined(node))
    assert version == "" and any("TimeoutExpired" in p for p in problems)
