"""Build (and cache) the guest kernel and initramfs that podplug boots.

Everything comes from distribution packages. No download happens at run time once the
cache is warm:

* **Kernel.** The package is the one Debian's ``linux-image-amd64`` depends on, resolved
  with ``apt-cache`` and never hard-coded. ``apt-get download`` fetches it and ``dpkg -x``
  unpacks it into a staging directory; it is not installed. The ELF ``vmlinux`` is
  extracted from the bzImage's XZ payload, so QEMU can boot it directly through PVH. Under
  TCG this boots about twice as fast as the bzImage through SeaBIOS.
* **Initramfs.** A gzipped newc cpio, written here in pure Python (no ``cpio``, no root). It
  holds static busybox (package ``busybox-static``) with its applet links, the agent
  ``agent.sh`` as ``/init``, and the kernel modules it needs in load order. The order comes
  from the ``depends=``/``softdep=`` fields of each module's ``.modinfo`` ELF section,
  because a ``dpkg -x`` tree has no ``modules.dep``. ``/etc/podplug/modules`` lists them as
  ``GROUP FILE NAME``. ``/init`` loads the ``boot`` group (virtio, SCSI, NVMe). The agent
  loads ``vfio`` and ``fs`` (ext4) on first use, which takes about a second of module
  loading off the TCG boot.
* **Filesystem check.** busybox has ``mke2fs`` but no ``mkfs.ext4``. The block-volume check
  (agent verb ``fs-check``) therefore makes **ext2** and mounts it with the ext4 driver
  (``CONFIG_EXT4_USE_FOR_EXT2``). When ``CONFIG_EXT4_FS=m``, ``ext4`` and its dependencies
  go into the image.

The cache lives in ``$PODPLUG_CACHE`` or else ``~/.cache/podplug``. Its key is the kernel
package and version, a hash of the agent script and of busybox, and :data:`BUILDER_VERSION`.
Builders stage their work in a private temporary directory and publish it with
``os.replace``. A per-key lock file keeps concurrent builders from doing the work twice.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from podplug.errors import GuestImageError

BUILDER_VERSION = "2"
META_PACKAGE = "linux-image-amd64"
#: ``panic=-1 oops=panic`` with QEMU's ``-no-reboot``: a guest crash ends QEMU at once
#: (qemu-recipe.md pitfall 5). The rest buys boot time under TCG, measured here (kernel
#: uptime at agent ready, 2 boots each: 4.50 s plain, 3.6 s with them): skip the crypto
#: self-tests and the W+X page-table scan, trust the TSC, no speculative-execution
#: mitigations. Acceptable because this guest is podplug's verification VM: it runs only
#: the agent, never a workload.
BASE_CMDLINE = ("console=ttyS0 quiet panic=-1 oops=panic cryptomgr.notests rodata=off "
                "no_timer_check tsc=reliable mitigations=off")

#: the modules the agent needs, by group, dependencies are added from .modinfo. "boot" is
#: loaded by /init; the agent loads "vfio" on the first vfio-bind and "fs" on the first
#: fs-check, which keeps about a second of module loading (under TCG) off the boot path.
MODULE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("boot", ("virtio_pci", "virtio_blk", "virtio_console", "virtio_scsi", "sd_mod", "nvme")),
    ("vfio", ("vfio", "vfio_iommu_type1", "vfio_pci")),
    ("fs", ()),  # ext4 and its dependencies when CONFIG_EXT4_FS=m
)
#: loaded before a module although no depends= names them (crypto back ends found by
#: name through the crypto API, which would otherwise need modprobe)
IMPLIED_PRE: dict[str, tuple[str, ...]] = {
    "crc_t10dif": ("crct10dif_generic",),
    "crc64_rocksoft": ("crc64_rocksoft_generic",),
}
#: softdep aliases -> module (there is no modules.alias in a dpkg -x tree)
SOFTDEP_ALIASES = {
    "crypto_crc32c": "crc32c_generic",
    "crc32c": "crc32c_generic",
    "crct10dif": "crct10dif_generic",
    "crypto_crct10dif": "crct10dif_generic",
    "crypto_crc64_rocksoft": "crc64_rocksoft_generic",
}
#: busybox applets the agent relies on
REQUIRED_APPLETS = (
    "sh",
    "mount",
    "umount",
    "insmod",
    "mknod",
    "mkdir",
    "stat",
    "readlink",
    "dd",
    "md5sum",
    "sha256sum",
    "blockdev",
    "mke2fs",
    "mktemp",
    "sleep",
    "timeout",
    "tr",
    "cmp",
    "wc",
    "uname",
    "rm",
    "poweroff",
    "sync",
)

_APT_CMD = "apt-get install -y --no-install-recommends"
_LOCK_WAIT_S = 900.0
_CMD_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class GuestImage:
    """A bootable guest: PVH ``vmlinux``, gzipped initramfs and the command line to use.

    ``cmdline`` is the base command line. Callers append their own options to it, such as
    ``intel_iommu=on iommu=pt`` when the VM has a vIOMMU (needed for ``vfio-bind``).
    ``modules`` holds the module files in the image, in load order. ``fs_type`` is what
    the agent's ``fs-check`` makes: ``ext2`` with busybox's ``mke2fs``.
    """

    kernel: Path
    initramfs: Path
    kernel_version: str
    cmdline: str = BASE_CMDLINE
    modules: tuple[str, ...] = ()
    fs_type: str = "ext2"
    cache_key: str = ""
    package: str = ""
    package_version: str = ""


def default_cache_dir() -> Path:
    """``$PODPLUG_CACHE`` or ``~/.cache/podplug``."""
    env = os.environ.get("PODPLUG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "podplug"


def agent_script() -> bytes:
    """The guest agent shipped with podplug (becomes ``/init``)."""
    return resources.files("podplug.guest").joinpath("agent.sh").read_bytes()


def build_image(cache_dir: Path | None = None, *, force: bool = False) -> GuestImage:
    """Return the cached guest image for the current kernel package, building it if needed.

    ``force`` rebuilds even when a cached image exists (the package is still taken from
    the cache's ``debs/`` when present). Raises :class:`GuestImageError` when a tool or
    package is missing (naming the ``apt-get`` command that fixes it) or a step fails.
    """
    cache = (cache_dir or default_cache_dir()).expanduser().resolve()
    for tool, package in (("apt-cache", "apt"), ("apt-get", "apt"), ("dpkg", "dpkg")):
        _need_tool(tool, package)
    busybox = find_static_busybox()
    applets = busybox_applets(busybox)
    missing = [a for a in REQUIRED_APPLETS if a not in {Path(p).name for p in applets}]
    if missing:
        raise GuestImageError(f"{busybox} lacks applets {', '.join(missing)}")
    package, version = _resolve_cached(cache)
    agent = agent_script()
    key = hashlib.sha256(
        "\0".join(
            (
                BUILDER_VERSION,
                package,
                version,
                hashlib.sha256(agent).hexdigest(),
                hashlib.sha256(busybox.read_bytes()).hexdigest(),
            )
        ).encode()
    ).hexdigest()
    kver = package.removeprefix("linux-image-")
    final = cache / "images" / f"{kver}-{key[:16]}"
    if not force and (cached := _load_cached(final)) is not None:
        return cached
    for sub in ("images", "debs", "tmp", "locks"):
        (cache / sub).mkdir(parents=True, exist_ok=True)
    with _locked(cache / "locks" / f"{key[:16]}.lock"):
        if not force and (cached := _load_cached(final)) is not None:
            return cached
        _sweep_stale(cache / "tmp")
        deb = _fetch_deb(cache, package, version)
        staging = Path(tempfile.mkdtemp(prefix="build-", dir=cache / "tmp"))
        try:
            out = staging / "image"
            out.mkdir()
            _assemble(
                deb,
                staging / "tree",
                out,
                busybox,
                applets,
                agent,
                {"package": package, "version": version, "key": key},
            )
            _publish(out, final, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _sweep_stale(cache / "images", keep=final)
    image = _load_cached(final)
    if image is None:
        raise GuestImageError(f"{final}: image vanished right after it was built")
    return image


# ---------------------------------------------------------------- host tools and packages


#: where the builder's tools are looked up: the distribution's directories, never $PATH
#: (podplug runs as root; a directory early in a user's PATH must not choose its binaries)
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _need_tool(tool: str, package: str) -> str:
    path = shutil.which(tool, path=SYSTEM_PATH)
    if path is None:
        raise GuestImageError(f"{tool} not found: install package {package} ({_APT_CMD} {package})")
    return path


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> str:
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
    hint = f"install package busybox-static ({_APT_CMD} busybox-static)"
    for cand in (shutil.which("busybox", path=SYSTEM_PATH), "/bin/busybox", "/usr/bin/busybox"):
        if cand and Path(cand).is_file():
            path = Path(cand).resolve()
            if not _is_static_elf(path.read_bytes()):
                raise GuestImageError(f"{path} is dynamically linked: {hint}")
            return path
    raise GuestImageError(f"busybox not found: {hint}")


def _is_static_elf(data: bytes) -> bool:
    """True for a 64-bit ELF without a PT_INTERP program header."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def busybox_applets(busybox: Path) -> tuple[str, ...]:
    """Install paths of busybox's applets, like ``sbin/mke2fs`` (``bin/X`` as a fallback)."""
    try:
        listed = _run([str(busybox), "--list-full"]).split()
    except GuestImageError:
        listed = ["bin/" + name for name in _run([str(busybox), "--list"]).split()]
    return tuple(p for p in listed if p and not p.startswith("/") and ".." not in p)


def resolve_kernel_package() -> tuple[str, str]:
    """(package, candidate version) of the kernel ``linux-image-amd64`` depends on.

    One ``apt-cache show`` of the meta package gives both: its ``Depends`` names the
    versioned kernel package with an exact ``(= VERSION)``. (A second query is made only
    when that constraint is missing.)
    """
    show = _run(["apt-cache", "show", "--no-all-versions", META_PACKAGE])
    match = re.search(
        r"^Depends:.*?\b(linux-image-\d\S*?)(?:\s*\(=\s*([^)\s]+)\))?(?:,|$)", show, re.MULTILINE
    )
    if match is None:
        raise GuestImageError(
            f"apt-cache knows no kernel behind {META_PACKAGE} (run apt-get update first)"
        )
    package, version = match.group(1), match.group(2)
    if version is None:
        show = _run(["apt-cache", "show", "--no-all-versions", package])
        ver = re.search(r"^Version:\s*(\S+)", show, re.MULTILINE)
        if ver is None:
            raise GuestImageError(f"apt-cache show {package}: no Version field")
        version = ver.group(1)
    return package, version


_APT_STATE = (Path("/var/lib/apt/lists"), Path("/etc/apt"), Path("/var/lib/dpkg/status"))


def _apt_fingerprint() -> str:
    """A hash of the names, sizes and mtimes of the files apt's answers depend on."""
    digest = hashlib.sha256()
    for root in _APT_STATE:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _resolve_cached(cache: Path) -> tuple[str, str]:
    """:func:`resolve_kernel_package`, remembered in the cache while apt's state is unchanged.

    Each ``apt-cache`` call costs about 1 s where apt keeps no ``pkgcache.bin`` (as in
    Debian container images), which would dominate a warm :func:`build_image`.
    """
    memo = cache / "apt-resolution.json"
    fingerprint = _apt_fingerprint()
    try:
        saved = json.loads(memo.read_text())
        if saved["fingerprint"] == fingerprint:
            return str(saved["package"]), str(saved["version"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    package, version = resolve_kernel_package()
    text = json.dumps({"fingerprint": fingerprint, "package": package, "version": version})
    try:  # only a memo: a read-only cache (a nested run sharing the host's) just skips it
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".apt-resolution-", dir=cache)
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, memo)
    except OSError:
        pass
    return package, version


def _fetch_deb(cache: Path, package: str, version: str) -> Path:
    """The package's .deb from ``cache/debs``, downloaded with ``apt-get download`` first."""
    deb = cache / "debs" / f"{package}_{version.replace(':', '%3a')}_amd64.deb"
    if deb.is_file():
        return deb
    with tempfile.TemporaryDirectory(prefix="dl-", dir=cache / "tmp") as tmp:
        _run(["apt-get", "download", f"{package}={version}"], cwd=Path(tmp))
        got = sorted(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise GuestImageError(
                f"apt-get download {package}={version} left {len(got)} .deb files"
            )
        os.replace(got[0], deb)
    return deb


# ---------------------------------------------------------------- assembly


def _assemble(
    deb: Path,
    tree: Path,
    out: Path,
    busybox: Path,
    applets: Sequence[str],
    agent: bytes,
    meta: dict[str, str],
) -> None:
    """Unpack the kernel package and write vmlinux, initramfs and manifest into ``out``."""
    _run(["dpkg", "-x", str(deb), str(tree)])
    moddirs = sorted((tree / "lib" / "modules").glob("*/kernel"))
    bzimages = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(moddirs) != 1 or len(bzimages) != 1:
        raise GuestImageError(f"{deb.name}: expected one vmlinuz and one module tree")
    kver = moddirs[0].parent.name
    config = parse_kconfig((tree / "boot" / f"config-{kver}").read_text())
    if config.get("CONFIG_PVH") != "y":
        raise GuestImageError(f"kernel {kver} lacks CONFIG_PVH; cannot boot vmlinux directly")
    (out / "vmlinux").write_bytes(extract_vmlinux(bzimages[0].read_bytes()))
    shutil.copyfile(tree / "boot" / f"config-{kver}", out / "config")

    groups = dict(MODULE_GROUPS)
    ext4 = config.get("CONFIG_EXT4_FS")
    if ext4 == "m":
        groups["fs"] = (*groups["fs"], "ext4")
    elif ext4 != "y":
        raise GuestImageError(f"kernel {kver} has no ext4 driver (needed to mount ext2)")
    index = index_modules(moddirs[0])
    modinfo: dict[str, dict[str, list[str]]] = {}
    wanted: list[str] = []
    placed: list[tuple[str, str]] = []  # (group, module) in load order
    skipped: list[str] = []
    for group, names in groups.items():
        wanted += names
        order, skipped = load_order(wanted, index, modinfo)
        seen = {m for _g, m in placed}
        placed += [(group, m) for m in order if m not in seen]

    archive = NewcArchive()
    for name in ("proc", "sys", "dev", "tmp", "run", "mnt", "root", "etc/podplug"):
        archive.add_dir(name)
    archive.add_node("dev/console", "c", 5, 1, 0o600)
    archive.add_node("dev/null", "c", 1, 3, 0o666)
    archive.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in applets:
        if applet != "bin/busybox":
            depth = applet.count("/")
            archive.add_symlink(applet, "../" * depth + "bin/busybox")
    archive.add_file("init", agent, 0o755)
    files = []
    lines = []
    for group, name in placed:
        src = index[name]
        blob = lzma.decompress(src.read_bytes()) if src.name.endswith(".xz") else src.read_bytes()
        fname = src.name.removesuffix(".xz")
        archive.add_file(f"lib/modules/podplug/{fname}", blob, 0o644)
        files.append(fname)
        lines.append(f"{group} {fname} {name}\n")
    archive.add_file("etc/podplug/modules", "".join(lines).encode(), 0o644)
    info = {**meta, "kernel_version": kver, "builder": BUILDER_VERSION}
    archive.add_file("etc/podplug/image", json.dumps(info).encode() + b"\n", 0o644)
    (out / "initramfs.cpio.gz").write_bytes(gzip.compress(archive.finish(), 6, mtime=0))

    manifest = {
        **info,
        "cmdline": BASE_CMDLINE,
        "modules": files,
        "module_groups": {g: [m for pg, m in placed if pg == g] for g in groups},
        "skipped_softdeps": skipped,
        "fs_type": "ext4" if any(a.endswith("/mkfs.ext4") for a in applets) else "ext2",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def _publish(out: Path, final: Path, staging: Path) -> None:
    """Move ``out`` to ``final`` atomically; an older image there is moved aside first."""
    if final.exists():
        os.replace(final, staging / "old")
    try:
        os.replace(out, final)
    except OSError as exc:
        if not final.is_dir():
            raise GuestImageError(f"cannot publish {final}: {exc}") from exc


_STALE_AFTER_S = 3600.0


def _sweep_stale(tmp: Path, keep: Path | None = None) -> None:
    """Remove entries untouched for an hour: staging directories a killed builder left
    behind, and (with ``keep``) images superseded by a newer kernel, agent or builder
    (66 MB each). The hour spares an image that a concurrent older run may still load."""
    cutoff = time.time() - _STALE_AFTER_S
    for entry in tmp.iterdir():
        if entry == keep:
            continue
        try:
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def _load_cached(final: Path) -> GuestImage | None:
    try:
        manifest = json.loads((final / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    kernel, initramfs = final / "vmlinux", final / "initramfs.cpio.gz"
    if not (kernel.is_file() and initramfs.is_file()):
        return None
    return GuestImage(
        kernel=kernel,
        initramfs=initramfs,
        kernel_version=str(manifest["kernel_version"]),
        cmdline=BASE_CMDLINE,  # not part of the cached files: always today's
        modules=tuple(str(m) for m in manifest["modules"]),
        fs_type=str(manifest["fs_type"]),
        cache_key=str(manifest["key"]),
        package=str(manifest["package"]),
        package_version=str(manifest["version"]),
    )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path``, waited for at most :data:`_LOCK_WAIT_S`."""
    with open(path, "a+b") as fh:
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GuestImageError(
                        f"{path}: another build held the lock for {_LOCK_WAIT_S:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------- kernel image


def parse_kconfig(text: str) -> dict[str, str]:
    """``CONFIG_X=v`` lines of a kernel config (unset options are absent)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            out[key] = value
    return out


XZ_MAGIC = b"\xfd7zXZ\x00"


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF ``vmlinux`` inside an XZ-compressed bzImage."""
    pos = bzimage.find(XZ_MAGIC)
    while pos >= 0:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[pos:])
        except lzma.LZMAError:
            elf = b""
        if elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[0x12:0x14] == b"\x3e\x00":
            return elf
        pos = bzimage.find(XZ_MAGIC, pos + 1)
    raise GuestImageError("no XZ-compressed x86-64 ELF found in the bzImage")


# ---------------------------------------------------------------- modules


def norm(name: str) -> str:
    """Module names treat ``-`` and ``_`` alike."""
    return name.replace("-", "_")


def index_modules(root: Path) -> dict[str, Path]:
    """Normalised module name -> file, for every ``.ko``/``.ko.xz`` below ``root``."""
    out: dict[str, Path] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name.endswith((".ko", ".ko.xz")):
                out[norm(name.split(".ko")[0])] = Path(dirpath) / name
    return out


def read_modinfo(data: bytes) -> dict[str, list[str]]:
    """The ``key=value`` pairs of a module's ``.modinfo`` section (values listed per key)."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise GuestImageError("not a 64-bit ELF module")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _t, _f, _a, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _n, stroff, _s = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name : end] == b".modinfo":
            out: dict[str, list[str]] = {}
            for item in data[off : off + size].split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep:
                    out.setdefault(key, []).append(value)
            return out
    return {}


def parse_softdep(values: Iterable[str]) -> tuple[list[str], list[str]]:
    """``softdep=pre: a b post: c`` values -> (pre, post) module names."""
    pre: list[str] = []
    post: list[str] = []
    target = pre
    for value in values:
        for word in value.split():
            if word == "pre:":
                target = pre
            elif word == "post:":
                target = post
            else:
                target.append(word)
    return pre, post


def load_order(
    wanted: Sequence[str],
    index: dict[str, Path],
    modinfo: dict[str, dict[str, list[str]]] | None = None,
) -> tuple[list[str], list[str]]:
    """Dependency-first load order of ``wanted`` (normalised names) and skipped softdeps.

    Hard dependencies must exist (else GuestImageError); softdeps that resolve neither to a
    module nor through :data:`SOFTDEP_ALIASES` are skipped and reported.
    """
    info = modinfo if modinfo is not None else {}
    order: list[str] = []
    state: dict[str, str] = {}
    skipped: list[str] = []

    def resolve_soft(name: str) -> str | None:
        key = norm(name)
        if key in index:
            return key
        alias = SOFTDEP_ALIASES.get(key)
        if alias is not None and alias in index:
            return alias
        skipped.append(name)
        return None

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            raise GuestImageError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in index:
            raise GuestImageError(
                f"module {name} (needed by {' -> '.join(chain) or 'podplug'}) "
                "is not in the kernel package"
            )
        state[name] = "active"
        if name not in info:
            info[name] = (
                read_modinfo(index[name].read_bytes())
                if index[name].suffix == ".ko"
                else read_modinfo(lzma.decompress(index[name].read_bytes()))
            )
        meta = info[name]
        pre, post = parse_softdep(meta.get("softdep", []))
        deps = [d for v in meta.get("depends", []) for d in v.split(",") if d]
        before = [*IMPLIED_PRE.get(name, ()), *pre]
        for dep in before:
            resolved = resolve_soft(dep)
            if resolved is not None and state.get(resolved) != "active":
                visit(resolved, (*chain, name))
        for dep in deps:
            visit(norm(dep), (*chain, name))
        state[name] = "done"
        order.append(name)
        for dep in post:
            resolved = resolve_soft(dep)
            if resolved is not None and state.get(resolved) is None:
                visit(resolved, (*chain, name))

    for name in wanted:
        visit(norm(name), ())
    return order, skipped


# ---------------------------------------------------------------- cpio


class NewcArchive:
    """A ``newc`` (SVR4, no CRC) cpio archive built in memory; owner root, mtime 0."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 0
        self._dirs: set[str] = set()
        self._names: set[str] = set()

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        rdev: tuple[int, int] = (0, 0),
        nlink: int = 1,
    ) -> None:
        name = name.strip("/")
        if name in self._names:
            raise ValueError(f"duplicate cpio entry {name}")
        parent = name.rpartition("/")[0]
        if parent and parent not in self._dirs:
            self.add_dir(parent)
        self._names.add(name)
        self._ino += 1
        raw = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._parts += [header, raw, _pad(len(header) + len(raw)), data, _pad(len(data))]

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        """A directory (parents are added as needed)."""
        name = name.strip("/")
        if name in self._dirs:
            return
        self._entry(name, 0o040000 | mode, nlink=2)
        self._dirs.add(name)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def add_node(self, name: str, kind: str, major: int, minor: int, mode: int) -> None:
        """A character (``c``) or block (``b``) device node."""
        fmt = {"c": 0o020000, "b": 0o060000}[kind]
        self._entry(name, fmt | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        """The archive bytes, with the ``TRAILER!!!`` entry."""
        raw = b"TRAILER!!!\0"
        header = b"070701" + b"".join(
            b"%08X" % f for f in (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(raw), 0)
        )
        return b"".join([*self._parts, header, raw, _pad(len(header) + len(raw))])


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)
