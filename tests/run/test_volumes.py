"""Proofs never destroy data: which volumes may be written, and what the host holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from podplug.errors import HostError, InputError
from podplug.host.volumes import VolumeFacts, read_volume
from podplug.plan.model import BlockdevNode
from podplug.run.volumes import Depth, VolumePolicy, depth_for, drive_for
from tests.support import inventory

BLANK = VolumeFacts("/dev/sdb", 1 << 30, "h", "t", "", mounted=False)


def test_a_volume_is_read_only_unless_made_here_or_named() -> None:
    assert depth_for(VolumePolicy(), "/dev/xda", BLANK) is Depth.READ_ONLY
    assert depth_for(VolumePolicy(scratch=frozenset({"/dev/sdb"})), "/dev/xda",
                     BLANK) is Depth.DESTRUCTIVE
    named = VolumePolicy(destructive=frozenset({"/dev/xda"}))
    assert depth_for(named, "/dev/xda", BLANK) is Depth.DESTRUCTIVE
    assert depth_for(named, "/dev/xdb", BLANK) is Depth.READ_ONLY


@pytest.mark.parametrize(("facts", "why"), [
    (VolumeFacts("/dev/sdb", 1 << 30, "h", "t", "ext2/3/4", False), "holds a ext2/3/4"),
    (VolumeFacts("/dev/sdb", 1 << 30, "h", "t", "", True), "is mounted on the host"),
])
def test_a_named_volume_in_use_is_refused_unless_forced(facts: VolumeFacts, why: str) -> None:
    named = VolumePolicy(destructive=frozenset({"/dev/xda"}))
    with pytest.raises(InputError, match=why):
        depth_for(named, "/dev/xda", facts)
    forced = VolumePolicy(destructive=frozenset({"/dev/xda"}), force=True)
    assert depth_for(forced, "/dev/xda", facts) is Depth.DESTRUCTIVE


def test_the_drive_is_the_host_node_except_on_a_fake_host() -> None:
    node = BlockdevNode("drive-blk0", "raw", "host_device", "/dev/loop0")
    host = inventory(1, 2, blocks=1)
    real = drive_for(node, host, fake_host=False, read_only=True)
    assert (real.file_driver, real.filename) == ("host_device", "/dev/loop0")
    assert real.arguments()["read-only"] is True
    fake = drive_for(node, host, fake_host=True, read_only=False)
    assert (fake.file_driver, fake.filename) == ("file", "/images/disk0.img")
    assert "read-only" not in fake.arguments()


def test_facts_of_a_volume_file(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    data = bytearray(os.urandom(64 << 10))
    data[1080:1082] = b"\x53\xef"  # an ext superblock magic
    disk.write_bytes(bytes(data))
    facts = read_volume(str(disk))
    assert facts.size == 64 << 10 and facts.signature == "ext2/3/4" and not facts.mounted
    assert len(facts.head) == len(facts.tail) == 64


def test_facts_refuse_what_is_not_a_volume(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(HostError, match="block device or a regular file"):
        read_volume(str(fifo))
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"x")
    with pytest.raises(HostError, match="too small"):
        read_volume(str(tiny))
