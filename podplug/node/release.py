"""The installed Kata release of a node (shell).

In order: ``--kata-version``; kata-deploy's ``/opt/kata/VERSION`` (written by
``kata-deploy-merge-builds.sh``: read, never run); else the installed binary's own word,
``kata-runtime --version`` (a line ``kata-runtime  : 3.16.0``), from ``/opt/kata/bin``,
``/usr/bin`` or ``/usr/local/bin`` below the root.

podplug runs as root over trees others may write, so a binary is run only when only root
could have put it there: the file and every directory from the root down to it owned by
uid 0 and writable by nobody else (the rule ``sudo`` applies to its own files), not a link.
It then runs as ``nobody`` when podplug is root, with an empty environment, no stdin, under
``setpriv --pdeathsig KILL``, for at most :data:`RUN_TIMEOUT_S`, and only its first
:data:`MAX_OUTPUT` bytes are read. A binary that fails the rule is named, not run.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import subprocess

from podplug.errors import PodplugError
from podplug.host.confined import Confined

KATA_VERSION_FILE = "/opt/kata/VERSION"
KATA_RUNTIME = ("/opt/kata/bin/kata-runtime", "/usr/bin/kata-runtime",
                "/usr/local/bin/kata-runtime")
RUN_TIMEOUT_S = 5.0
MAX_OUTPUT = 4096
SETPRIV = "/usr/bin/setpriv"
_VERSION = re.compile(r"^kata-runtime\s*:\s*v?(\d+\.\d+\.\d+)", re.M)


def _only_root_could_write(real: str, root: str) -> str:
    """'' when ``real`` and every directory down to it from ``root`` are root's alone,
    else why not."""
    path = real
    while True:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            return f"{path} is a link"
        if info.st_uid != 0:
            return f"{path} is owned by uid {info.st_uid}, not root"
        if info.st_mode & 0o022:
            return f"{path} is writable by others than root"
        if os.path.normpath(path) in (os.path.normpath(root), "/"):
            return ""
        path = os.path.dirname(path)


def _run(binary: str) -> str:
    user: dict[str, object] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    done = subprocess.run([SETPRIV, "--pdeathsig", "KILL", binary, "--version"],
                          stdin=subprocess.DEVNULL, capture_output=True, env={},
                          timeout=RUN_TIMEOUT_S, check=False, **user)  # type: ignore[call-overload]
    return str(done.stdout[:MAX_OUTPUT].decode("utf-8", "replace"))


def installed_release(tree: Confined, given: str = "") -> tuple[str, str, list[str]]:
    """(release, where it came from, problems); ``("", "", ...)`` when none is known."""
    if given:
        return given, "--kata-version", []
    problems: list[str] = []
    try:
        text = tree.optional(tree.at(KATA_VERSION_FILE))
    except PodplugError as exc:
        problems.append(str(exc))
        text = None
    version = (text or "").strip().removeprefix("v").split("-")[0]
    if version:
        return version, KATA_VERSION_FILE, problems
    for name in KATA_RUNTIME:
        try:
            real = tree.resolve(tree.at(name))
        except PodplugError as exc:
            problems.append(str(exc))
            continue
        if not os.path.isfile(real):
            continue
        why = _only_root_could_write(real, tree.root)
        if why:
            problems.append(f"{name} not run: {why}")
            continue
        try:
            match = _VERSION.search(_run(real))
        except (OSError, subprocess.SubprocessError, KeyError) as exc:
            problems.append(f"{name} --version: {type(exc).__name__}: {exc}")
            continue
        if match:
            return match.group(1), f"{name} --version", problems
        problems.append(f"{name} --version printed no 'kata-runtime : X.Y.Z' line")
    return "", "", problems
