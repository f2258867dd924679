"""The Kata block keys: parsed with their errors, and shaped into ``blockdev-add`` as each
runtime sends them (:mod:`podplug.plan.blockdev`); rendered QMP is in the golden files."""

from __future__ import annotations

import pytest

from podplug.errors import ConfigError
from podplug.inputs.kata import GO_VHOST_USER_STORE, RUST_VHOST_USER_STORE
from podplug.model.enums import BlockAio
from podplug.plan.blockdev import blockdev_shape
from tests.support import config


def test_defaults_are_katas() -> None:
    keys = config().hypervisor.block
    assert keys.aio is BlockAio.IO_URING
    assert not keys.cache_set and not keys.enable_vhost_user_store
    assert keys.vhost_user_store_path == GO_VHOST_USER_STORE
    assert config(runtime_rs=True).hypervisor.block.vhost_user_store_path == \
        RUST_VHOST_USER_STORE


@pytest.mark.parametrize(("key", "value", "words"), [
    ("block_device_aio", "uring", "unknown block I/O mechanism"),
    ("block_device_aio", 1, "unknown block I/O mechanism"),
    ("block_device_cache_set", "yes", "must be true or false"),
    ("enable_vhost_user_store", 1, "must be true or false"),
    ("vhost_user_store_path", "run/vhost", "must be an absolute path"),
    ("vhost_user_store_path", 7, "must be a string"),
    ("vhost_user_reconnect_timeout_sec", -1, "whole number of seconds"),
    ("vhost_user_reconnect_timeout_sec", True, "whole number of seconds"),
])
def test_a_bad_block_key_names_itself(key: str, value: object, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(extra={key: value})
    assert f"hypervisor.qemu.{key}" in str(caught.value)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_runtime_rs_disable_block_device_use_turns_the_store_off() -> None:
    keys = {"disable_block_device_use": True, "enable_vhost_user_store": True}
    assert not config(extra=keys, runtime_rs=True).hypervisor.block.enable_vhost_user_store
    assert config(extra=keys).hypervisor.block.enable_vhost_user_store


@pytest.mark.parametrize("aio", list(BlockAio))
@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("rust", [False, True])
@pytest.mark.parametrize("io_uring", [False, True])
def test_qemu_never_gets_native_without_direct_nor_io_uring_it_lacks(
        aio: BlockAio, direct: bool, rust: bool, io_uring: bool) -> None:
    cfg = config(extra={"block_device_aio": aio.value, "block_device_cache_set": True,
                        "block_device_cache_direct": direct}, runtime_rs=rust)
    shape = blockdev_shape(cfg, io_uring=io_uring)
    assert shape.direct is direct
    assert not (shape.aio is BlockAio.NATIVE and not shape.direct)
    assert not (shape.aio is BlockAio.IO_URING and not io_uring)
    changed = shape.aio is not aio
    assert changed == bool([n for n in shape.notes if "planned with aio=threads" in n])
    assert changed == ((aio is BlockAio.NATIVE and not direct)
                       or (aio is BlockAio.IO_URING and not io_uring))
