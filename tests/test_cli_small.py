"""Small CLI behaviours: ``--version``, the dot output as Graphviz renders it, ``fake-host``
replacing only its own trees."""

from __future__ import annotations

import html
import os
import re
import subprocess
from pathlib import Path

import pytest

from podplug.cli import main
from podplug.host.fakesysfs import MARKER
from tests.support import REPO

DEMO = REPO / "podplug" / "demo"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert re.fullmatch(r"podplug \d+\.\d+\.\d+\n", capsys.readouterr().out)


def test_dot_renders_with_real_line_breaks(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    """Each label line is its own <text> element in Graphviz's SVG (a literal ``\\n``
    would show as one line with a backslash)."""
    assert main(["fake-host", str(tmp_path / "sys")]) == 0
    capsys.readouterr()
    assert main(["plan", "--config", str(DEMO / "configuration.toml"), "--spec",
                 str(DEMO / "spec.json"), "--sysfs", str(tmp_path / "sys"),
                 "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    svg = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    texts = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
    assert "rp0" in texts and "pcie-root-port" in texts and "vfio @ 03.0" in texts
    assert "/dev/vfio/12" in texts and "cold-vfio" in texts
    assert not any("\\n" in t for t in texts)


def test_fake_host_replaces_its_own_tree_and_refuses_others(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = tmp_path / "host"
    assert main(["fake-host", str(root)]) == 0
    (root / "stale").write_text("from an earlier run")
    assert main(["fake-host", str(root), "--host", "eight-gpu"]) == 0
    assert (root / MARKER).is_file() and not (root / "stale").exists()
    assert (root / "bus/pci/devices/0000:18:00.0").exists()  # the eight-GPU host now
    capsys.readouterr()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "data").write_text("keep me")
    assert main(["fake-host", str(theirs)]) == 2
    assert "not made by podplug fake-host" in capsys.readouterr().err
    assert (theirs / "data").read_text() == "keep me"
    link = tmp_path / "link"
    link.symlink_to(theirs)
    assert main(["fake-host", str(link)]) == 2
    assert "symbolic link" in capsys.readouterr().err
    disk_link = tmp_path / "new-disk.img"
    disk_link.symlink_to(theirs / "data")
    assert main(["fake-host", str(tmp_path / "new")]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert (theirs / "data").read_text() == "keep me"
    assert not (tmp_path / "new").exists()  # refused before anything was written
    if os.geteuid() == 0:  # another user's empty directory (podplug as root on a node)
        other = tmp_path / "other"
        other.mkdir()
        os.chown(other, 65534, 65534)
        assert main(["fake-host", str(other)]) == 2
        assert "belongs to uid 65534" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_fake_host_tree_links_stay_inside_it(tmp_path: Path) -> None:
    root = tmp_path / "host"
    assert main(["fake-host", str(root), "--host", "eight-gpu"]) == 0
    links = [p for p in root.rglob("*") if p.is_symlink()]
    assert links
    for link in links:
        assert not os.readlink(link).startswith("/")
        assert link.resolve().is_relative_to(root.resolve()), link
