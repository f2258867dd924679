"""podplug.image.cache: where the cache is, its locks, publishing and sweeping."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from podplug.errors import GuestImageError
from podplug.image.cache import default_cache_dir, locked, publish, sweep_stale


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PODPLUG_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PODPLUG_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "podplug"


def test_superseded_images_are_swept_after_an_hour(tmp_path: Path) -> None:
    old, fresh, keep = (tmp_path / n for n in ("old", "fresh", "keep"))
    for d in (old, fresh, keep):
        d.mkdir()
        (d / "vmlinux").write_bytes(b"x")
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))
    os.utime(keep, (hours_ago, hours_ago))
    sweep_stale(tmp_path, keep=keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "keep"]


def test_publish_moves_an_older_image_aside(tmp_path: Path) -> None:
    staging, final = tmp_path / "staging", tmp_path / "images" / "k-1"
    (staging / "image").mkdir(parents=True)
    (staging / "image" / "vmlinux").write_bytes(b"new")
    final.mkdir(parents=True)
    (final / "vmlinux").write_bytes(b"old")
    publish(staging / "image", final, staging)
    assert (final / "vmlinux").read_bytes() == b"new"
    assert (staging / "old" / "vmlinux").read_bytes() == b"old"
    assert not (staging / "image").exists()


def test_a_held_lock_is_waited_for_then_an_error(tmp_path: Path) -> None:
    lock = tmp_path / "k.lock"
    with locked(lock):  # free: taken at once, and released after
        pass
    with open(lock, "a+b") as other:
        fcntl.flock(other, fcntl.LOCK_EX)  # another builder (another open file description)
        start = time.monotonic()
        with (
            pytest.raises(GuestImageError, match=r"another build held the lock for 0\.3 s"),
            locked(lock, wait_s=0.3),
        ):
            pytest.fail("the lock was held by another")
        assert time.monotonic() - start >= 0.3
        fcntl.flock(other, fcntl.LOCK_UN)
    with locked(lock):
        pass
