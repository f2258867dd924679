"""The test set-up's Debian 13 fetcher (``tests/debian13.py``) without the network: which
mirror it asks, and that a published result is used as it is, apt never asked again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import debian13


def test_the_mirror_is_the_systems_first_non_security_archive(tmp_path: Path) -> None:
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb-src\nURIs: http://src.example/debian\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm\n")
    assert debian13.mirror((tmp_path / "sources.list", parts)) == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text("# old\ndeb [arch=amd64] https://one.example/debian bookworm main\n")
    assert debian13.mirror((one_line, parts)) == "https://one.example/debian"
    assert debian13.mirror((tmp_path / "absent",)) == debian13.DEFAULT_MIRROR


def test_a_published_root_is_used_without_asking_apt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODPLUG_DEBIAN13_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # no apt-get, no dpkg
    debs, root = tmp_path / "kit" / "debs", tmp_path / "kit" / "root"
    debs.mkdir(parents=True)
    root.mkdir()
    (debs / "hello_1.0_amd64.deb").write_bytes(b"!<arch>\n")
    (debs / debian13._MANIFEST).write_text(json.dumps(
        {"packages": ["hello"], "recurse": True, "debs": ["hello_1.0_amd64.deb"]}))
    (root / debian13._MANIFEST).write_text(json.dumps(
        {"debs": ["hello_1.0_amd64.deb"], "prepare": ""}))
    assert debian13.fetch_root(["hello"], "kit") == root
    assert debian13.download_debs(["hello"], "kit") == [debs / "hello_1.0_amd64.deb"]
    with pytest.raises(debian13.FetchError, match="apt-get"):  # another set: apt is needed
        debian13.download_debs(["hello", "world"], "kit")
