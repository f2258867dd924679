"""How deep a run may prove a volume, and which file backs its drive (pure).

Proofs never destroy data (issue 10). A volume is proven **read-only** by default: QEMU
opens its drive ``read-only`` and the guest checks that the disk the agent entry resolved
to has the host's size and the host's bytes at its first and last 4 KiB. The write and
filesystem checks (the Kubernetes block-volume check, which formats the disk) run only on:

* a scratch volume podplug made itself for this run (the demo's), or
* a volume the operator names with ``--destructive-check CONTAINER_PATH``; even then a
  volume the host has mounted, or one holding a filesystem or partition signature, is
  refused unless ``--force`` is given too.

The drive is the host node, as Kata passes it (``host_device``), except on a FAKE host
(``--sysfs`` pointing at a stand-in tree), whose loop device does not exist on this machine:
its ``backing_file`` stands in, a regular file, and the run says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from podplug.errors import InputError
from podplug.host.volumes import VolumeFacts
from podplug.model.host import HostInventory
from podplug.plan.model import BlockdevNode


class Depth(Enum):
    READ_ONLY = "read-only"
    DESTRUCTIVE = "destructive"


@dataclass(frozen=True)
class VolumePolicy:
    scratch: frozenset[str] = frozenset()  # host files podplug made for this run
    destructive: frozenset[str] = frozenset()  # container paths named for write checks
    force: bool = False


def depth_for(policy: VolumePolicy, container_path: str, facts: VolumeFacts) -> Depth:
    """The proof a volume gets.

    :raises InputError: a named volume that is mounted or holds a signature, without force.
    """
    if facts.path in policy.scratch:
        return Depth.DESTRUCTIVE
    if container_path not in policy.destructive:
        return Depth.READ_ONLY
    if not policy.force and facts.mounted:
        raise InputError(f"--destructive-check {container_path}: {facts.path} is mounted on "
                         "the host; refused (add --force to destroy it anyway)")
    if not policy.force and facts.signature:
        raise InputError(f"--destructive-check {container_path}: {facts.path} holds a "
                         f"{facts.signature} signature; refused (add --force to destroy it)")
    return Depth.DESTRUCTIVE


def drive_for(node: BlockdevNode, inventory: HostInventory, *, fake_host: bool,
              read_only: bool) -> BlockdevNode:
    """The drive QEMU opens for a planned volume: the host node, or on a fake host the
    loop device's backing file; ``read-only`` unless the proof may write."""
    drive = replace(node, read_only=read_only)
    if not fake_host:
        return drive
    for block in inventory.block_nodes.values():
        if block.dev_path == node.filename and block.loop_backing_file:
            return replace(drive, file_driver="file", filename=block.loop_backing_file)
    return drive
