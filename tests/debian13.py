"""Debian 13 ("trixie") packages on a Debian 12 machine: downloaded and unpacked, never
installed (test set-up; DESIGN §5: QEMU 7.2 and 10.0 are both targets).

The recipe (``research/qemu10-on-debian12.md``, measured there and again here):

1. A private apt state for the ``trixie`` suite, so the system's apt is untouched: a
   ``sources.list`` of one line (the mirror the system's apt uses, Debian 12's keyring, which
   verifies trixie) and ``-o Dir::Etc::sourcelist=... -o Dir::Etc::sourceparts=- -o
   Dir::State::Lists=... -o Dir::Cache=... -o Dir::State::status=/dev/null`` on every call.
2. The dependency closure: ``apt-cache depends --recurse --no-recommends --no-suggests
   --no-conflicts --no-breaks --no-replaces --no-enhances``, without the packages that only
   matter to an installed system (:data:`EXCLUDED`: adduser, base-passwd, debconf, PAM).
3. ``apt-get download`` (hashes checked against the signed lists), ``dpkg -x`` of each
   ``.deb`` into one root: no maintainer script runs, nothing lands outside the cache.

:func:`download_debs` and :func:`fetch_root` do this for any package set under a name
(``fetch_root(["linux-image-amd64"], "kernel")``); :func:`qemu10` makes Debian 13's
``qemu-system-x86_64`` an ordinary executable (:func:`relocate_qemu`). Everything lives
under :func:`base_dir`; each result is built in a private directory and published with one
``rename(2)`` under a per-name ``flock(2)``, so concurrent callers (two test runs, another
engineer's script) wait for one download and never see half of one. Published results are
used as they are, without asking apt again: delete the directory to refresh.

Command line (one line on stderr and exit 1 on failure, offline for instance)::

    python3 -m tests.debian13 qemu10               # prints the binary's path
    python3 -m tests.debian13 root NAME PKG...     # prints the unpacked root
    python3 -m tests.debian13 debs NAME PKG... [--no-recurse]   # prints one .deb a line
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from podplug.image.cache import default_cache_dir, locked

SUITE = "trixie"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: needed by an installed system's maintainer scripts only, never by an unpacked binary
EXCLUDED = re.compile(r"(adduser|base-passwd|cdebconf|debconf|libpam.*)")
#: trixie moved qemu-storage-daemon from qemu-system-common to qemu-utils: with it, the
#: vhost-user-blk back end of a QEMU 10 run is QEMU 10's own (podplug.vm.storage_daemon
#: takes the daemon beside the qemu-system binary)
QEMU_PACKAGES = ("qemu-system-x86", "qemu-utils")
QEMU_NAME = "qemu10-qsd"  # renamed when the package set changed: a new root is fetched
RELOCATED = ("qemu-system-x86_64", "qemu-storage-daemon")
LISTS_MAX_AGE_S = 7 * 86400.0  # lists older than this are refreshed before a new download
LOCK_WAIT_S = 900.0
_LIBDIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")
_LOADER = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
_MANIFEST = ".podplug-debian13.json"

Prepare = Callable[[Path, Path], None]


class FetchError(RuntimeError):
    """Debian 13's packages could not be had; ``str()`` is one line."""


def base_dir() -> Path:
    """Where the apt state and every result live.

    ``$PODPLUG_DEBIAN13_DIR`` if set. Otherwise podplug's cache
    (:func:`podplug.image.cache.default_cache_dir`) ``/debian13``, except for root without
    ``$PODPLUG_CACHE``: ``/var/cache/podplug/debian13``, because podplug run as root runs
    QEMU as ``nobody`` (``podplug.run.confine``), which must be able to reach the binary,
    its loader and its firmware, and ``/root`` is 0700.
    """
    if env := os.environ.get("PODPLUG_DEBIAN13_DIR"):
        return Path(env)
    if os.geteuid() == 0 and not os.environ.get("PODPLUG_CACHE"):
        return Path("/var/cache/podplug/debian13")
    return default_cache_dir() / "debian13"


def mirror(sources: Sequence[Path] = (Path("/etc/apt/sources.list"),
                                      Path("/etc/apt/sources.list.d"))) -> str:
    """The Debian archive the system's apt uses (its first non-security ``deb`` source, in
    one-line or deb822 form), else :data:`DEFAULT_MIRROR`."""
    files: list[Path] = []
    for source in sources:
        files += sorted(source.glob("*.list")) + sorted(source.glob("*.sources")) \
            if source.is_dir() else [source]
    for file in files:
        try:
            text = file.read_text()
        except OSError:
            continue
        if file.suffix == ".sources":
            uris = (u for stanza in re.split(r"\n\s*\n", text)
                    if re.search(r"^Types:[^\n]*(?<![\w-])deb(?![\w-])", stanza, re.M)
                    for m in re.finditer(r"^URIs:\s*(.+)$", stanza, re.M)
                    for u in m.group(1).split())
        else:
            uris = (m.group(1) for m in re.finditer(
                r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M))
        for uri in uris:
            if uri.startswith(("http://", "https://")) and "security" not in uri:
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def _locked(path: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive ``flock`` on ``path`` (podplug's own), waited for at most
    :data:`LOCK_WAIT_S`."""
    return locked(path, wait_s=LOCK_WAIT_S, holder="another fetch", error=FetchError)


def _mkdir(path: Path) -> Path:
    """``path`` and its parents, 0755 whatever the umask (others must traverse them)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for p in missing:
        p.chmod(0o755)
    return path


def _run(argv: Sequence[str], *, cwd: Path | None = None, what: str) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FetchError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from exc
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith(("E:", "dpkg"))] \
            or done.stderr.splitlines() or [f"exit {done.returncode}"]
        raise FetchError(f"{what}: {lines[-1].strip()}")
    return done.stdout


class _Apt:
    """The private apt state under ``base/apt``."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "apt"
        self.sources = self.dir / "sources.list"
        self.lists = self.dir / "lists"
        self.stamp = self.dir / "updated"  # apt dates its lists by the server's Last-Modified

    def options(self) -> list[str]:
        """The private state's options; as root, apt downloads as root rather than as
        ``_apt``, who cannot write into root's directories (it warns, then does so)."""
        options = [f"Dir::Etc::sourcelist={self.sources}", "Dir::Etc::sourceparts=-",
                   f"Dir::State::Lists={self.lists}", f"Dir::Cache={self.dir / 'cache'}",
                   "Dir::State::status=/dev/null"]
        if os.geteuid() == 0:
            options.append("APT::Sandbox::User=root")
        return [arg for option in options for arg in ("-o", option)]

    def _indexes(self) -> list[Path]:
        return sorted(self.lists.glob(f"*_dists_{SUITE}_main_binary-amd64_Packages*"))

    def ready(self) -> _Apt:
        """The lists present and younger than :data:`LISTS_MAX_AGE_S` (``apt-get update``
        otherwise; an unreachable mirror is an error only when there are no lists)."""
        with _locked(_mkdir(self.dir.parent) / "apt.lock"):
            line = f"deb [signed-by={KEYRING}] {mirror()} {SUITE} main\n"
            if not self.sources.exists() or self.sources.read_text() != line:
                _mkdir(self.dir)
                self.sources.write_text(line)
                shutil.rmtree(self.lists, ignore_errors=True)
            indexes = self._indexes()
            with contextlib.suppress(OSError):
                if indexes and time.time() - self.stamp.stat().st_mtime < LISTS_MAX_AGE_S:
                    return self
            for sub in ("lists/partial", "cache/archives/partial"):
                _mkdir(self.dir / sub)
            try:
                _run(["apt-get", *self.options(), "-q", "update"],
                     what=f"apt-get update of Debian 13 ({line.split()[2]} {SUITE})")
            except FetchError:
                if not indexes:
                    raise
                return self  # the lists there are older, not wrong
            if not self._indexes():
                raise FetchError(f"apt-get update: no {SUITE} package list from {mirror()} "
                                 "(offline?)")
            self.stamp.touch()
        return self

    def closure(self, packages: Sequence[str]) -> list[str]:
        """``packages`` and what they depend on (pre-depend on), recursively, less
        :data:`EXCLUDED`."""
        out = _run(["apt-cache", *self.options(), "depends", "--recurse", "--no-recommends",
                    "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces",
                    "--no-enhances", *packages], what=f"apt-cache depends {' '.join(packages)}")
        names = {ln.strip() for ln in out.splitlines() if ln and not ln.startswith((" ", "<"))}
        return sorted(n for n in names if not EXCLUDED.fullmatch(n))


def _manifest(path: Path) -> object:
    try:
        return json.loads((path / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _publish(stage: Path, final: Path, manifest: object) -> None:
    """``stage`` becomes ``final`` in one rename; an older ``final`` is moved aside first."""
    (stage / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    stage.chmod(0o755)
    old = stage.parent / f".old-{final.name}-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(stage, final)
    shutil.rmtree(old, ignore_errors=True)


def _debs(packages: Sequence[str], name: str, recurse: bool) -> Path:
    """``base/NAME/debs``, holding the wanted ``.deb`` files (caller holds the lock)."""
    final = _mkdir(base_dir() / name) / "debs"
    wanted = {"packages": sorted(packages), "recurse": recurse}
    seen = _manifest(final)
    if isinstance(seen, dict) and {k: seen.get(k) for k in wanted} == wanted:
        return final
    apt = _Apt(base_dir()).ready()
    names = apt.closure(packages) if recurse else list(packages)
    stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=".debs-"))
    try:
        _run(["apt-get", *apt.options(), "-q", "download", *names], cwd=stage,
             what=f"apt-get download of {len(names)} Debian 13 packages")
        _publish(stage, final, {**wanted, "debs": sorted(p.name for p in stage.glob("*.deb"))})
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return final


def download_debs(packages: Sequence[str], name: str, *, recurse: bool = True) -> list[Path]:
    """The ``.deb`` files of ``packages`` from Debian 13 (their dependency closure unless
    ``recurse`` is false), kept in ``base_dir()/NAME/debs`` under ``apt-get download``'s
    names (``PACKAGE_VERSION_ARCH.deb``, an epoch's ``:`` as ``%3a``).

    :raises FetchError: apt could not reach the mirror or download a package.
    """
    with _locked(_mkdir(base_dir()) / f"{name}.lock"):
        return sorted(_debs(packages, name, recurse).glob("*.deb"))


def fetch_root(packages: Sequence[str], name: str, *, prepare: Prepare | None = None) -> Path:
    """``base_dir()/NAME/root``: every ``.deb`` of ``packages``' closure unpacked with
    ``dpkg -x``. ``prepare(staged, final)``, when given, edits the staged tree before it is
    published (paths written into it must name ``final``, where it will be).

    :raises FetchError: as :func:`download_debs`, or ``dpkg -x`` failed.
    """
    with _locked(_mkdir(base_dir()) / f"{name}.lock"):
        debs = _debs(packages, name, True)
        final = debs.parent / "root"
        wanted = {"debs": sorted(p.name for p in debs.glob("*.deb")),
                  "prepare": f"{prepare.__module__}.{prepare.__qualname__}" if prepare else ""}
        if _manifest(final) == wanted:
            return final
        stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=".root-"))
        try:
            for deb in wanted["debs"]:
                _run(["dpkg", "-x", str(debs / deb), str(stage)], what=f"dpkg -x {deb}")
            if prepare is not None:
                prepare(stage, final)
            _publish(stage, final, wanted)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return final


def relocate_qemu(staged: Path, final: Path) -> None:
    """Make ``usr/bin/qemu-system-x86_64`` (and ``qemu-storage-daemon``, when unpacked) of an
    unpacked root run from ``final``.

    * ``patchelf``: its ELF interpreter becomes the root's own ``ld-linux-x86-64.so.2`` and
      its ``DT_RPATH`` (searched before ``/etc/ld.so.cache``, and, unlike ``DT_RUNPATH``,
      for the libraries' own dependencies and QEMU's ``dlopen`` of its modules too) the
      root's library directories. The binary stays an ordinary executable: its process is
      named ``qemu-system-x86`` and ``/proc/self/exe`` points into the root.
    * ``usr/bin/qemu-bundle -> ../..``: Debian builds QEMU not relocatable, so its firmware
      path (``/usr/share/qemu:/usr/share/seabios:...``) and module directory
      (``/usr/lib/x86_64-linux-gnu/qemu``) are absolute and would be Debian 12's. QEMU's
      ``get_relocated_path`` (``util/cutils.c``) prefixes every such path with
      ``<directory of the executable>/qemu-bundle`` when that exists: with the link, QEMU
      10 reads its own SeaBIOS, option ROMs and modules from the root (checked with strace).
    """
    if shutil.which("patchelf") is None:
        raise FetchError("patchelf not found: apt-get install patchelf (scripts/setup.sh)")
    for name in RELOCATED:
        binary = staged / "usr/bin" / name
        if name != RELOCATED[0] and not binary.exists():
            continue
        _run(["patchelf", "--set-interpreter", str(final / _LOADER), "--force-rpath",
              "--set-rpath", ":".join(str(final / d) for d in _LIBDIRS), str(binary)],
             what=f"patchelf {binary.name}")
    (staged / "usr/bin" / "qemu-bundle").symlink_to("../..")


def qemu10() -> Path:
    """Debian 13's ``qemu-system-x86_64`` (QEMU 10.0), fetched, unpacked and relocated
    once, checked to start (``--version``).

    :raises FetchError: it could not be had, or does not run.
    """
    binary = fetch_root(QEMU_PACKAGES, QEMU_NAME, prepare=relocate_qemu) / \
        "usr/bin/qemu-system-x86_64"
    version = _run([str(binary), "--version"], what=str(binary))
    if not version.startswith("QEMU emulator version"):
        raise FetchError(f"{binary} --version: {version.splitlines()[:1]}")
    return binary


def main(argv: Sequence[str]) -> int:
    try:
        if list(argv) == ["qemu10"]:
            print(qemu10())
        elif len(argv) >= 3 and argv[0] == "root":
            print(fetch_root(argv[2:], argv[1]))
        elif len(argv) >= 3 and argv[0] == "debs":
            packages = [a for a in argv[2:] if a != "--no-recurse"]
            for deb in download_debs(packages, argv[1], recurse="--no-recurse" not in argv):
                print(deb)
        else:
            print(__doc__.split("Command line", 1)[1].split("::", 1)[1].rstrip(),
                  file=sys.stderr)
            return 2
    except FetchError as exc:
        print(f"tests.debian13: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
