"""podplug.image.tools: host tools from the system's directories only, and busybox."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from podplug.errors import GuestImageError
from podplug.image.build import build_image
from podplug.image.tools import SYSTEM_PATH, find_static_busybox, need_tool, run


def test_missing_host_tools_name_the_package_to_install(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """The tools are looked up in the system's directories only: one in $PATH is not used."""
    empty, planted = tmp_path / "system", tmp_path / "planted"
    empty.mkdir()
    planted.mkdir()
    (planted / "apt-cache").write_text("#!/bin/sh\nexit 0\n")
    (planted / "apt-cache").chmod(0o755)
    monkeypatch.setattr("podplug.image.tools.SYSTEM_PATH", str(empty))
    monkeypatch.setenv("PATH", f"{planted}:{os.environ['PATH']}")
    with pytest.raises(GuestImageError, match="apt-get install -y --no-install-recommends apt"):
        build_image(Path("/nonexistent/podplug-cache"))


def test_need_tool_gives_the_system_path() -> None:
    found = Path(need_tool("sh", "dash"))
    assert str(found.parent) in SYSTEM_PATH.split(":")
    hint = r"install package pkg \(apt-get install -y --no-install-recommends pkg\)"
    with pytest.raises(GuestImageError, match=rf"^no-such-tool not found: {hint}$"):
        need_tool("no-such-tool", "pkg")


def test_dynamic_busybox_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "busybox"
    fake.write_bytes(Path(sys.executable).resolve().read_bytes()[:65536])  # dynamic ELF
    fake.chmod(0o755)
    monkeypatch.setattr("podplug.image.tools.SYSTEM_PATH", str(tmp_path))
    with pytest.raises(GuestImageError, match="busybox-static"):
        find_static_busybox()


def test_run_uses_the_system_path_and_the_c_locale() -> None:
    out = run(["sh", "-c", 'echo "$PATH $LC_ALL"'])
    assert out == f"{SYSTEM_PATH} C\n"


def test_run_failures_name_the_command_and_its_last_line(tmp_path: Path) -> None:
    with pytest.raises(GuestImageError, match=r"^sh -c echo one >&2; echo two >&2; exit 3 "
                                              r"failed \(3\): two$"):
        run(["sh", "-c", "echo one >&2; echo two >&2; exit 3"])
    with pytest.raises(GuestImageError, match=r"failed \(1\): out$"):
        run(["sh", "-c", "echo out; exit 1"])  # no stderr: the last line of stdout
    with pytest.raises(GuestImageError, match=r"failed \(2\): no output$"):
        run(["sh", "-c", "exit 2"])
    with pytest.raises(GuestImageError, match=f"^{tmp_path}/absent: "):
        run([str(tmp_path / "absent")])
