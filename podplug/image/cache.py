"""The image cache on disk: where it is, its locks, publishing and sweeping (shell).

The cache lives in ``$PODPLUG_CACHE`` or else ``~/.cache/podplug``. A builder holds an
exclusive flock(2) on a per-key lock file while it builds, so concurrent builders do not do
the work twice. It stages its work in a private temporary directory and publishes it with
one rename(2) (``os.replace``), which is atomic within a filesystem: a reader sees the old
image or the new one, never part of one. Entries untouched for an hour are swept.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from podplug.errors import GuestImageError

_LOCK_WAIT_S = 900.0
_STALE_AFTER_S = 3600.0


def default_cache_dir() -> Path:
    """``$PODPLUG_CACHE`` or ``~/.cache/podplug``."""
    env = os.environ.get("PODPLUG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "podplug"


@contextmanager
def locked(path: Path, *, wait_s: float = _LOCK_WAIT_S, holder: str = "another build",
           error: Callable[[str], Exception] = GuestImageError) -> Iterator[None]:
    """An exclusive flock on ``path``, waited for at most ``wait_s``; then ``error`` is
    raised, naming the path, the ``holder`` and the wait."""
    with open(path, "a+b") as fh:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise error(f"{path}: {holder} held the lock for {wait_s:g} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def publish(out: Path, final: Path, staging: Path) -> None:
    """Move ``out`` to ``final`` atomically; an older image there is moved aside first."""
    if final.exists():
        os.replace(final, staging / "old")
    try:
        os.replace(out, final)
    except OSError as exc:
        if not final.is_dir():
            raise GuestImageError(f"cannot publish {final}: {exc}") from exc


def sweep_stale(tmp: Path, keep: Path | None = None) -> None:
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
