"""The guest kernel's Debian package: resolved with apt-cache, fetched with apt-get (shell).

The package is the one the meta package ``linux-image-amd64`` depends on, never
hard-coded: its ``Depends`` field (Debian Policy 7.1, ``package (= version)``) names the
versioned kernel package with an exact version. The answer is remembered in the cache
while apt's state (its lists, configuration and the dpkg status) is unchanged. The
``.deb`` is kept in ``debs/`` under the name ``apt-get download`` gives it
(``PACKAGE_VERSION_amd64.deb``, an epoch's ``:`` written ``%3a``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from podplug.errors import GuestImageError
from podplug.image.tools import run

META_PACKAGE = "linux-image-amd64"
_APT_STATE = (Path("/var/lib/apt/lists"), Path("/etc/apt"), Path("/var/lib/dpkg/status"))


def resolve_kernel_package() -> tuple[str, str]:
    """(package, candidate version) of the kernel ``linux-image-amd64`` depends on.

    One ``apt-cache show`` of the meta package gives both: its ``Depends`` names the
    versioned kernel package with an exact ``(= VERSION)``. (A second query is made only
    when that constraint is missing.)
    """
    show = run(["apt-cache", "show", "--no-all-versions", META_PACKAGE])
    match = re.search(
        r"^Depends:.*?\b(linux-image-\d\S*?)(?:\s*\(=\s*([^)\s]+)\))?(?:,|$)", show, re.MULTILINE
    )
    if match is None:
        raise GuestImageError(
            f"apt-cache knows no kernel behind {META_PACKAGE} (run apt-get update first)"
        )
    package, version = match.group(1), match.group(2)
    if version is None:
        show = run(["apt-cache", "show", "--no-all-versions", package])
        ver = re.search(r"^Version:\s*(\S+)", show, re.MULTILINE)
        if ver is None:
            raise GuestImageError(f"apt-cache show {package}: no Version field")
        version = ver.group(1)
    return package, version


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


def resolve_cached(cache: Path) -> tuple[str, str]:
    """:func:`resolve_kernel_package`, remembered in the cache while apt's state is unchanged.

    Each ``apt-cache`` call costs about 1 s where apt keeps no ``pkgcache.bin`` (as in
    Debian container images), which would dominate a warm
    :func:`~podplug.image.build.build_image`.
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


def fetch_deb(cache: Path, package: str, version: str) -> Path:
    """The package's .deb from ``cache/debs``, downloaded with ``apt-get download`` first."""
    deb = cache / "debs" / f"{package}_{version.replace(':', '%3a')}_amd64.deb"
    if deb.is_file():
        return deb
    with tempfile.TemporaryDirectory(prefix="dl-", dir=cache / "tmp") as tmp:
        run(["apt-get", "download", f"{package}={version}"], cwd=Path(tmp))
        got = sorted(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise GuestImageError(
                f"apt-get download {package}={version} left {len(got)} .deb files"
            )
        os.replace(got[0], deb)
    return deb
