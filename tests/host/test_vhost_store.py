"""Kata's vhost-user store read without following a link (:mod:`podplug.host.vhost_store`),
and the store read only when the configuration and the spec need it."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from podplug.errors import HostError
from podplug.host.vhost_store import scan_store
from podplug.inputs.load import with_vhost_user_store
from podplug.model.host import HostInventory
from tests.support import block, config, request, vhost_user

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="block device nodes need mknod (root)")


def _store(tmp: Path) -> Path:
    (tmp / "block" / "devices").mkdir(parents=True)
    (tmp / "block" / "sockets").mkdir()
    return tmp


def _node(store: Path, name: str, minor: int, major: int = 241) -> None:
    os.mknod(store / "block" / "devices" / name, 0o600 | stat.S_IFBLK,
             os.makedev(major, minor))


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[Path]:
    store = _store(tmp_path / "store")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(store / "block" / "sockets" / "vub0"))
    yield store
    sock.close()


@needs_root
def test_a_node_and_its_socket_are_found(listening: Path) -> None:
    _node(listening, "vub0", 0)
    _node(listening, "vub1", 3)
    found = scan_store(str(listening))
    assert set(found) == {(241, 0), (241, 3)}
    assert found[(241, 0)].socket == f"{listening}/block/sockets/vub0"
    assert found[(241, 0)].socket_present
    assert not found[(241, 3)].socket_present


@needs_root
def test_links_fifos_and_files_are_not_nodes_nor_sockets(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    os.mknod(tmp_path / "outside", 0o600 | stat.S_IFBLK, os.makedev(241, 9))
    (store / "block" / "devices" / "link").symlink_to(tmp_path / "outside")
    os.mkfifo(store / "block" / "devices" / "fifo")
    (store / "block" / "devices" / "file").write_text("241:1\n")
    _node(store, "vub0", 0)
    os.mkfifo(store / "block" / "sockets" / "vub0")  # not a socket
    found = scan_store(str(store))  # returns: the FIFOs were never opened
    assert set(found) == {(241, 0)}
    assert not found[(241, 0)].socket_present


def test_a_store_that_is_a_link_is_refused(tmp_path: Path) -> None:
    real = _store(tmp_path / "real")
    (tmp_path / "store").symlink_to(real)
    with pytest.raises(HostError) as caught:
        scan_store(str(tmp_path / "store"))
    assert "links are not followed" in str(caught.value)
    devices = _store(tmp_path / "s2") / "block" / "devices"
    devices.rmdir()
    devices.symlink_to(real / "block" / "devices")
    with pytest.raises(HostError):
        scan_store(str(tmp_path / "s2"))


def test_a_missing_store_holds_nothing(tmp_path: Path) -> None:
    assert scan_store(str(tmp_path / "absent")) == {}
    with pytest.raises(HostError):
        scan_store("relative/store")


def test_the_store_is_read_only_when_enabled_and_asked_for(tmp_path: Path) -> None:
    store = str(tmp_path / "not-there")
    on = config(extra={"enable_vhost_user_store": True, "vhost_user_store_path": store})
    host = HostInventory()
    assert with_vhost_user_store(host, on, request(block(0))) is host
    assert with_vhost_user_store(host, config(), request(vhost_user(0))) is host
    read = with_vhost_user_store(host, on, request(vhost_user(0)))
    assert read.vhost_user_store == store and read.vhost_user_nodes == {}
