"""podplug.image.cpio: the newc writer, read back by a parser of the format and by busybox."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from podplug.image.cpio import NewcArchive

HEADER_LEN = 110  # "070701" and 13 fields of 8 hex digits


@dataclass(frozen=True)
class Entry:
    name: str
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    dev: tuple[int, int]
    rdev: tuple[int, int]
    check: int
    data: bytes


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_newc(archive: bytes) -> list[Entry]:
    """Every entry up to and including ``TRAILER!!!``; the archive must end right there."""
    entries: list[Entry] = []
    pos = 0
    while True:
        assert pos % 4 == 0
        assert archive[pos : pos + 6] == b"070701", f"no newc magic at {pos}"
        raw = archive[pos + 6 : pos + HEADER_LEN]
        f = [int(raw[i * 8 : i * 8 + 8], 16) for i in range(13)]
        assert raw == raw.upper()  # the writer uses upper-case hex
        ino, mode, uid, gid, nlink, mtime, size, dmaj, dmin, rmaj, rmin, namesize, check = f
        name = archive[pos + HEADER_LEN : pos + HEADER_LEN + namesize]
        assert name.endswith(b"\0") and b"\0" not in name[:-1]
        start = _align(pos + HEADER_LEN + namesize)
        assert not archive[pos + HEADER_LEN + namesize : start].strip(b"\0")  # NUL padding
        data = archive[start : start + size]
        assert len(data) == size
        pos = _align(start + size)
        assert not archive[start + size : pos].strip(b"\0")
        entries.append(Entry(name[:-1].decode(), ino, mode, uid, gid, nlink, mtime,
                             (dmaj, dmin), (rmaj, rmin), check, data))
        if name == b"TRAILER!!!\0":
            assert pos == len(archive)
            return entries


def test_an_empty_archive_is_just_the_trailer() -> None:
    data = NewcArchive().finish()
    assert len(data) == 124  # 110 + len("TRAILER!!!\0") = 121, padded to 4
    (trailer,) = parse_newc(data)
    assert (trailer.name, trailer.ino, trailer.mode, trailer.nlink, trailer.data) == (
        "TRAILER!!!", 0, 0, 1, b"")


def test_round_trip_of_every_kind_of_entry() -> None:
    archive = NewcArchive()
    archive.add_dir("/proc/")
    archive.add_node("dev/console", "c", 5, 1, 0o600)
    archive.add_node("dev/sda", "b", 8, 0, 0o660)
    archive.add_file("init", b"#!/bin/sh\n", 0o755)
    archive.add_symlink("sbin/mke2fs", "../bin/busybox")
    archive.add_file("etc/podplug/modules", b"boot a.ko a\n")
    entries = parse_newc(archive.finish())
    got = {e.name: (oct(e.mode), e.nlink, e.rdev, e.data) for e in entries}
    assert list(got) == ["proc", "dev", "dev/console", "dev/sda", "init", "sbin", "sbin/mke2fs",
                         "etc", "etc/podplug", "etc/podplug/modules", "TRAILER!!!"]
    assert got["proc"] == (oct(0o040755), 2, (0, 0), b"")
    assert got["dev"] == (oct(0o040755), 2, (0, 0), b"")  # a parent, added for dev/console
    assert got["dev/console"] == (oct(0o020600), 1, (5, 1), b"")
    assert got["dev/sda"] == (oct(0o060660), 1, (8, 0), b"")
    assert got["init"] == (oct(0o100755), 1, (0, 0), b"#!/bin/sh\n")
    assert got["sbin/mke2fs"] == (oct(0o120777), 1, (0, 0), b"../bin/busybox")
    assert got["etc/podplug/modules"] == (oct(0o100644), 1, (0, 0), b"boot a.ko a\n")
    members = entries[:-1]
    assert [e.ino for e in members] == list(range(1, len(members) + 1))
    assert all((e.uid, e.gid, e.mtime, e.dev, e.check) == (0, 0, 0, (0, 0), 0) for e in entries)


@pytest.mark.parametrize("size", range(9))
def test_names_and_data_of_every_length_stay_aligned(size: int) -> None:
    archive = NewcArchive()
    archive.add_file("n" * (size + 1), b"d" * size)
    archive.add_file("m" * (size + 2), b"e" * (size + 1))
    entries = parse_newc(archive.finish())
    assert [(e.name, e.data) for e in entries[:2]] == [
        ("n" * (size + 1), b"d" * size), ("m" * (size + 2), b"e" * (size + 1))]


def test_directories_once_and_duplicates_refused() -> None:
    archive = NewcArchive()
    archive.add_file("a/b/c", b"x")
    archive.add_dir("a")  # added already as a parent: nothing more
    archive.add_dir("a/b/")
    with pytest.raises(ValueError, match="duplicate cpio entry a/b/c"):
        archive.add_file("/a/b/c", b"y")
    with pytest.raises(ValueError, match="duplicate"):
        archive.add_symlink("a/b/c", "elsewhere")
    with pytest.raises(ValueError, match="duplicate cpio entry a"):
        archive.add_file("a", b"")  # a directory's name is taken too
    assert [e.name for e in parse_newc(archive.finish())] == ["a", "a/b", "a/b/c", "TRAILER!!!"]


def test_the_same_entries_make_the_same_bytes() -> None:
    def build() -> bytes:
        archive = NewcArchive()
        archive.add_file("bin/busybox", b"\x7fELF" * 100, 0o755)
        archive.add_symlink("bin/sh", "busybox")
        return archive.finish()

    assert build() == build()


def test_newc_archive_is_aligned_and_rejects_duplicates() -> None:
    archive = NewcArchive()
    archive.add_file("a", b"xyz")
    with pytest.raises(ValueError, match="duplicate"):
        archive.add_file("a", b"")
    data = archive.finish()
    assert len(data) % 4 == 0
    assert data.startswith(b"070701")
    assert b"TRAILER!!!\0" in data


def test_newc_archive_extracts_with_busybox_cpio(tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is needed (apt-get install busybox-static)"
    archive = NewcArchive()
    archive.add_file("etc/podplug/modules", b"boot a.ko a\n")
    archive.add_symlink("usr/bin/awk", "../../bin/busybox")
    archive.add_dir("proc")
    (tmp_path / "x").mkdir()
    subprocess.run(
        [busybox, "cpio", "-id"], input=archive.finish(), cwd=tmp_path / "x", check=True,
        capture_output=True,
    )  # fmt: skip
    assert (tmp_path / "x/etc/podplug/modules").read_bytes() == b"boot a.ko a\n"
    assert (tmp_path / "x/usr/bin/awk").readlink() == Path("../../bin/busybox")
    assert (tmp_path / "x/proc").is_dir()
