"""The host tools the builder runs, and the static busybox it packs (shell).

Tools are looked up in the distribution's directories only (:data:`SYSTEM_PATH`, never
``$PATH``) and run with ``LC_ALL=C`` and a timeout; a failure becomes a
:class:`GuestImageError` naming the command and its last line of output. A missing tool
names the Debian package and the ``apt-get install`` command that provides it. The
busybox is the static one of package ``busybox-static`` (an ELF without ``PT_INTERP``);
its applets are the install paths ``busybox --list-full`` prints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from podplug.errors import GuestImageError
from podplug.image.elf import is_static_elf

#: where the builder's tools are looked up: the distribution's directories, never $PATH
#: (podplug runs as root; a directory early in a user's PATH must not choose its binaries)
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
APT_CMD = "apt-get install -y --no-install-recommends"
_CMD_TIMEOUT_S = 600.0


def need_tool(tool: str, package: str) -> str:
    """The path of ``tool``, or a GuestImageError naming the package to install."""
    path = shutil.which(tool, path=SYSTEM_PATH)
    if path is None:
        raise GuestImageError(f"{tool} not found: install package {package} ({APT_CMD} {package})")
    return path


def run(argv: Sequence[str], *, cwd: Path | None = None) -> str:
    """The standard output of ``argv`` (which must exit 0 within the timeout)."""
    env = {**os.environ, "LC_ALL": "C", "PATH": SYSTEM_PATH}  # the tools found as checked
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=_CMD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise GuestImageError(f"{' '.join(argv)}: no result within {_CMD_TIMEOUT_S:.0f} s") from exc
    except OSError as exc:
        raise GuestImageError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise GuestImageError(f"{' '.join(argv)} failed ({done.returncode}): {tail[0]}")
    return done.stdout


def find_static_busybox() -> Path:
    """The static busybox binary of package ``busybox-static``."""
    hint = f"install package busybox-static ({APT_CMD} busybox-static)"
    for cand in (shutil.which("busybox", path=SYSTEM_PATH), "/bin/busybox", "/usr/bin/busybox"):
        if cand and Path(cand).is_file():
            path = Path(cand).resolve()
            if not is_static_elf(path.read_bytes()):
                raise GuestImageError(f"{path} is dynamically linked: {hint}")
            return path
    raise GuestImageError(f"busybox not found: {hint}")


def busybox_applets(busybox: Path) -> tuple[str, ...]:
    """Install paths of busybox's applets, like ``sbin/mke2fs`` (``bin/X`` as a fallback)."""
    try:
        listed = run([str(busybox), "--list-full"]).split()
    except GuestImageError:
        listed = ["bin/" + name for name in run([str(busybox), "--list"]).split()]
    return tuple(p for p in listed if p and not p.startswith("/") and ".." not in p)
