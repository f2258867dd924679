"""The per-era models of upstream Kata's ``createDevices`` (research ``kata-devices.md`` §1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podplug.inputs.kata import RuntimeConfig
from podplug.matrix.kata_models import (
    LOUD_OUTCOMES,
    KataEra,
    KataList,
    KataOutcome,
    KataSelection,
    compare_eras,
    era_by_name,
    era_for_version,
    failed_devices,
    kata_is_vfio_control_device,
    kata_is_vfio_device,
    kata_is_vhost_user_blk,
    lost_devices,
    select_devices,
    sort_container_vfio_devices,
)
from podplug.model.enums import NodeType
from podplug.model.request import ContainerDevice
from tests.support import (
    VHOST_ON,
    block,
    config,
    iommufd_dev,
    request,
    vfio_control,
    vfio_group,
    vhost_user,
)

ERAS = tuple(KataEra)
PORTS = ("root-port", "switch-port", "bridge-port")
MODES = ("vfio", "guest-kernel")
BEFORE_13103 = (KataEra.PRE_3_14, KataEra.KATA_3_14_3_16, KataEra.KATA_3_17_3_31)
SINCE_13103 = (KataEra.KATA_3_32_4_0, KataEra.HEAD)

XDA = block(0)  # /dev/xda, 7:0: the #11288 raw-block PV
VUB = vhost_user(0)  # /dev/vub0, 241:0: a vhost-user-blk node of Kata's store
GPU = vfio_group(12)
CDROM = ContainerDevice("/dev/sr0", NodeType.BLOCK, 11, 0)
FLOPPY = ContainerDevice("/dev/fd0", NodeType.BLOCK, 2, 0)
NULL = ContainerDevice("/dev/null", NodeType.CHAR, 1, 3)


def paths(selection: KataSelection) -> list[str]:
    return [d.path for d in selection.devices]


# --- the seed combination (#11288) -----------------------------------------------------------


@pytest.mark.parametrize("port", PORTS)
def test_seed_3_16_loses_the_block_volume(port: str) -> None:
    selection = select_devices(KataEra.KATA_3_14_3_16, request(GPU, XDA), config("vfio", port))
    assert lost_devices(selection) == (XDA,)
    assert selection.outcome_of("/dev/xda") is KataOutcome.DROPPED_SILENTLY
    assert "ENXIO" in selection.entries[1].reason
    assert paths(selection) == ["/dev/vfio/12"]


@pytest.mark.parametrize("era", (KataEra.KATA_3_17_3_31, *SINCE_13103))
@pytest.mark.parametrize("port", PORTS)
def test_seed_3_17_and_later_keep_both(era: KataEra, port: str) -> None:
    selection = select_devices(era, request(GPU, XDA), config("vfio", port))
    assert lost_devices(selection) == ()
    assert [e.outcome for e in selection.entries] == [KataOutcome.KEPT, KataOutcome.KEPT]
    assert [e.kata_list for e in selection.entries] == [KataList.COLD_VFIO, KataList.HOT]
    assert paths(selection) == ["/dev/vfio/12", "/dev/xda"]


# --- guest-kernel + cold-plug (#13103) --------------------------------------------------------


@pytest.mark.parametrize("port", PORTS)
@pytest.mark.parametrize("era", ERAS)
def test_guest_kernel_cold_vfio_group(era: KataEra, port: str) -> None:
    selection = select_devices(era, request(GPU, XDA), config("guest-kernel", port))
    if era in BEFORE_13103:
        assert lost_devices(selection) == (GPU,)
        assert selection.outcome_of("/dev/vfio/12") is KataOutcome.DROPPED_SILENTLY
        assert "No PCI mapping found" in selection.entries[0].reason
        assert paths(selection) == ["/dev/xda"]
    else:
        assert lost_devices(selection) == ()
        assert paths(selection) == ["/dev/vfio/12", "/dev/xda"]


def test_pre_3_14_also_loses_cold_vfio_in_vfio_mode() -> None:
    selection = select_devices(KataEra.PRE_3_14, request(GPU, XDA), config("vfio", "root-port"))
    assert lost_devices(selection) == (GPU,)
    assert "before #10767" in selection.entries[0].reason


# --- hot-plug: nothing lost anywhere ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("port", PORTS)
@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("sandbox", [False, True])
def test_hot_plug_loses_nothing(era: KataEra, port: str, mode: str, sandbox: bool) -> None:
    devices = (GPU, XDA, vfio_control(), iommufd_dev(0), NULL)
    selection = select_devices(era, request(*devices, sandbox=sandbox), config(mode, hot=port))
    assert lost_devices(selection) == ()
    assert selection.problems == ()
    assert all(e.kata_list is KataList.HOT for e in selection.entries)
    # sortContainerVFIODevices puts the control node first, the rest keeps its order
    assert paths(selection) == ["/dev/vfio/vfio", "/dev/vfio/12", "/dev/xda",
                                "/dev/vfio/devices/vfio0", "/dev/null"]


# --- no port at all: loud, not silent ---------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("era", ERAS)
def test_no_port_fails_at_attach_instead_of_losing(era: KataEra, mode: str) -> None:
    selection = select_devices(era, request(XDA, GPU), config(mode))
    assert lost_devices(selection) == ()
    assert selection.outcome_of("/dev/vfio/12") is KataOutcome.FAILS_AT_ATTACH
    assert selection.outcome_of("/dev/xda") is KataOutcome.KEPT
    assert paths(selection) == ["/dev/xda", "/dev/vfio/12"]
    failure = selection.attach_failure
    assert failure is not None and failure.device == GPU and failure.position == 1
    assert "port is not set" in failure.reason


def test_attach_failure_is_the_first_in_list_order() -> None:
    selection = select_devices(KataEra.HEAD, request(GPU, vfio_group(13)), config("vfio"))
    failure = selection.attach_failure
    assert failure is not None and failure.device == GPU


def test_no_attach_failure_when_a_port_is_set() -> None:
    selection = select_devices(KataEra.HEAD, request(GPU), config("vfio", "root-port"))
    assert selection.attach_failure is None


# --- the pause container (#13681) -------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_pause_container_gets_cold_vfio_in_3_32_4_0_only(mode: str) -> None:
    pause = request(GPU, XDA, sandbox=True)
    cfg = config(mode, "root-port")
    leaky = select_devices(KataEra.KATA_3_32_4_0, pause, cfg)
    assert paths(leaky) == ["/dev/vfio/12", "/dev/xda"]
    assert leaky.outcome_of("/dev/vfio/12") is KataOutcome.LEAKED_TO_PAUSE
    assert [e.device for e in leaky.problems] == [GPU]

    head = select_devices(KataEra.HEAD, pause, cfg)
    assert paths(head) == ["/dev/xda"]
    assert head.outcome_of("/dev/vfio/12") is KataOutcome.NOT_FOR_PAUSE
    assert lost_devices(head) == ()
    assert head.problems == ()


def test_head_still_gives_workload_containers_their_cold_vfio() -> None:
    selection = select_devices(KataEra.HEAD, request(GPU, XDA), config("guest-kernel", "root-port"))
    assert paths(selection) == ["/dev/vfio/12", "/dev/xda"]


def test_pause_container_in_vfio_mode_leaked_since_3_14() -> None:
    pause = request(GPU, sandbox=True)
    cfg = config("vfio", "root-port")
    assert select_devices(KataEra.PRE_3_14, pause, cfg).outcome_of(
        "/dev/vfio/12") is KataOutcome.NOT_FOR_PAUSE
    for era in (KataEra.KATA_3_14_3_16, KataEra.KATA_3_17_3_31):
        assert select_devices(era, pause, cfg).outcome_of(
            "/dev/vfio/12") is KataOutcome.LEAKED_TO_PAUSE


# --- control node ordering (§1.3) -------------------------------------------------------------


def test_control_node_after_cold_groups_since_11289() -> None:
    """The hot list is appended unsorted, so /dev/vfio/vfio lands after the cold groups."""
    req = request(vfio_control(), GPU, vfio_group(13), XDA)
    cfg = config("vfio", "root-port")
    for era in (KataEra.KATA_3_17_3_31, *SINCE_13103):
        assert paths(select_devices(era, req, cfg)) == [
            "/dev/vfio/12", "/dev/vfio/13", "/dev/vfio/vfio", "/dev/xda"]


def test_control_node_dropped_with_the_hot_list_in_3_16() -> None:
    req = request(vfio_control(), GPU, XDA)
    selection = select_devices(KataEra.KATA_3_14_3_16, req, config("vfio", "root-port"))
    assert paths(selection) == ["/dev/vfio/12"]
    assert lost_devices(selection) == (vfio_control(), XDA)


@pytest.mark.parametrize("era", ERAS)
def test_control_node_first_when_only_the_hot_list_is_used(era: KataEra) -> None:
    req = request(XDA, GPU, vfio_control())
    selection = select_devices(era, req, config("vfio", hot="root-port"))
    assert paths(selection) == ["/dev/vfio/vfio", "/dev/xda", "/dev/vfio/12"]


def test_sort_reproduces_kata_prepend_order() -> None:
    other_control = ContainerDevice("/dev/vfio/vfio", NodeType.CHAR, 10, 197)
    devices = (XDA, vfio_control(), GPU, other_control)
    assert sort_container_vfio_devices(devices) == (other_control, vfio_control(), XDA, GPU)


# --- IsVFIODevice (manager/utils_test.go TestIsVFIO) ------------------------------------------


@pytest.mark.parametrize(("path", "vfio"), [
    ("/dev/vfio/16", True), ("/dev/vfio/", False), ("/dev/vfio/vfio", False),
    ("/dev/vfio/vfio/12", False), ("/dev/vfio/devices/vfio0", True), ("/dev/vfio/vfio12", False),
    ("/dev/xda", False), ("/dev/vfio", False),
])
def test_is_vfio_device(path: str, vfio: bool) -> None:
    assert kata_is_vfio_device(path) is vfio


def test_control_device_is_an_exact_match() -> None:
    assert kata_is_vfio_control_device("/dev/vfio/vfio")
    assert not kata_is_vfio_control_device("/dev/vfio/vfio/12")


# --- filterDevices ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("era", ERAS)
def test_cdrom_and_floppy_filtered_in_every_era(era: KataEra, mode: str) -> None:
    selection = select_devices(era, request(CDROM, XDA, FLOPPY), config(mode))
    assert selection.outcome_of("/dev/sr0") is KataOutcome.FILTERED
    assert selection.outcome_of("/dev/fd0") is KataOutcome.FILTERED
    assert lost_devices(selection) == (CDROM, FLOPPY)
    assert paths(selection) == ["/dev/xda"]
    assert [e.position for e in selection.entries] == [None, 0, None]


def test_filter_looks_at_the_major_only() -> None:
    framebuffer = ContainerDevice("/dev/fb0", NodeType.CHAR, 29, 0)  # AZTECH_CDROM_MAJOR
    selection = select_devices(KataEra.HEAD, request(framebuffer), config())
    assert selection.outcome_of("/dev/fb0") is KataOutcome.FILTERED


def test_dropped_before_filtered_when_the_hot_list_is_discarded() -> None:
    selection = select_devices(KataEra.KATA_3_14_3_16, request(GPU, CDROM),
                               config("vfio", "root-port"))
    assert selection.outcome_of("/dev/sr0") is KataOutcome.DROPPED_SILENTLY


# --- block volumes: vhost-user-blk, the store, aio (the same in every era) -------------------

NATIVE = (("block_device_aio", "native"),)
NATIVE_DIRECT = (*NATIVE, ("block_device_cache_set", True), ("block_device_cache_direct", True))


def keyed(mode: str = "guest-kernel", cold: str = "no-port", hot: str = "no-port", *,
          keys: tuple[tuple[str, object], ...] = VHOST_ON,
          hypervisor: str = "qemu") -> RuntimeConfig:
    machine = "q35" if hypervisor == "qemu" else ""
    return config(mode, cold, hot, hypervisor=hypervisor, machine=machine, extra=dict(keys))


def test_vhost_user_blk_is_a_block_node_of_major_241() -> None:
    assert kata_is_vhost_user_blk(VUB)
    assert not kata_is_vhost_user_blk(XDA)
    assert not kata_is_vhost_user_blk(ContainerDevice("/dev/vub0", NodeType.CHAR, 241, 0))
    assert kata_is_vhost_user_blk(ContainerDevice("/dev/vfio/7", NodeType.BLOCK, 241, 0))


@pytest.mark.parametrize("port", PORTS)
def test_3_16_drops_vhost_user_blk_with_the_hot_list(port: str) -> None:
    """#11288 for vhost-user-blk too: vfio mode + cold plug keeps the cold VFIO list only."""
    selection = select_devices(KataEra.KATA_3_14_3_16, request(GPU, XDA, VUB),
                               keyed("vfio", port))
    assert [e.kata_list for e in selection.entries] == [KataList.COLD_VFIO, KataList.HOT,
                                                        KataList.HOT]
    assert lost_devices(selection) == (XDA, VUB)
    assert selection.outcome_of("/dev/vub0") is KataOutcome.DROPPED_SILENTLY
    assert paths(selection) == ["/dev/vfio/12"]


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("mode", MODES)
def test_vhost_user_blk_kept_with_the_store(era: KataEra, mode: str) -> None:
    selection = select_devices(era, request(XDA, VUB), keyed(mode, hot="root-port"))
    assert selection.problems == ()
    assert paths(selection) == ["/dev/xda", "/dev/vub0"]
    assert "vhost-user-blk-pci" in selection.entries[1].reason


@pytest.mark.parametrize("era", ERAS)
def test_vhost_user_blk_without_the_store_fails_at_attach(era: KataEra) -> None:
    """IsVhostUserBlk ignores the store; without it the container path becomes the socket."""
    selection = select_devices(era, request(VUB, XDA), keyed(keys=()))
    assert selection.outcome_of("/dev/vub0") is KataOutcome.FAILS_AT_ATTACH
    assert selection.outcome_of("/dev/xda") is KataOutcome.KEPT
    assert "enable_vhost_user_store = false" in selection.entries[0].reason
    assert lost_devices(selection) == () and failed_devices(selection) == (VUB,)
    failure = selection.attach_failure
    assert failure is not None and failure.device == VUB and failure.position == 0


def test_vhost_user_blk_without_the_store_still_dropped_silently_in_3_16() -> None:
    selection = select_devices(KataEra.KATA_3_14_3_16, request(GPU, VUB),
                               keyed("vfio", "root-port", keys=()))
    assert selection.outcome_of("/dev/vub0") is KataOutcome.DROPPED_SILENTLY
    assert failed_devices(selection) == ()


@pytest.mark.parametrize("era", ERAS)
def test_vhost_user_blk_fails_at_attach_on_cloud_hypervisor(era: KataEra) -> None:
    selection = select_devices(era, request(XDA, VUB), keyed(hypervisor="clh"))
    assert selection.outcome_of("/dev/xda") is KataOutcome.KEPT
    assert selection.outcome_of("/dev/vub0") is KataOutcome.FAILS_AT_ATTACH
    assert "unsupported device type" in selection.entries[1].reason


@pytest.mark.parametrize("sandbox", [False, True])
@pytest.mark.parametrize("era", ERAS)
def test_store_without_hugepages_keeps_the_sandbox_from_starting(era: KataEra,
                                                                 sandbox: bool) -> None:
    """Every device of the pod, vhost-user or not: the VM is never created."""
    devices = (GPU, XDA, vfio_control())
    cfg = keyed("vfio", "root-port", keys=(("enable_vhost_user_store", True),))
    selection = select_devices(era, request(*devices, sandbox=sandbox), cfg)
    assert [e.outcome for e in selection.entries] == [KataOutcome.SANDBOX_FAILS] * 3
    assert all(e.position is None for e in selection.entries)
    assert selection.devices == () and lost_devices(selection) == ()
    assert failed_devices(selection) == devices
    assert "enabled without HugePages" in selection.entries[0].reason
    assert selection.problems == selection.entries


def test_hugepages_alone_or_the_store_on_clh_start_the_sandbox() -> None:
    for cfg in (keyed(keys=(("enable_hugepages", True),)),
                keyed(keys=(("enable_vhost_user_store", True),), hypervisor="clh")):
        assert select_devices(KataEra.HEAD, request(XDA), cfg).problems == ()


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("mode", MODES)
def test_native_aio_without_cache_direct_fails_at_attach(era: KataEra, mode: str) -> None:
    selection = select_devices(era, request(XDA, block(1), VUB, GPU),
                               keyed(mode, hot="root-port", keys=(*VHOST_ON, *NATIVE)))
    assert [e.outcome for e in selection.entries] == [
        KataOutcome.FAILS_AT_ATTACH, KataOutcome.FAILS_AT_ATTACH, KataOutcome.KEPT,
        KataOutcome.KEPT]
    assert "QEMU refuses it" in selection.entries[0].reason
    assert failed_devices(selection) == (XDA, block(1)) and lost_devices(selection) == ()
    failure = selection.attach_failure
    assert failure is not None and failure.device == XDA


@pytest.mark.parametrize("keys", [
    NATIVE_DIRECT,
    (("block_device_aio", "threads"),),
    (("block_device_aio", "io_uring"),),
    (),
])
def test_aio_that_qemu_opens_is_kept(keys: tuple[tuple[str, object], ...]) -> None:
    selection = select_devices(KataEra.HEAD, request(XDA), keyed(keys=keys))
    assert selection.problems == ()


@pytest.mark.parametrize("keys", [
    (*NATIVE, ("block_device_cache_direct", True)),  # not sent without cache_set
    (*NATIVE, ("block_device_cache_set", True)),  # sent, but direct = false
    (*NATIVE, ("block_device_cache_set", True), ("block_device_cache_noflush", True)),
])
def test_native_needs_both_cache_set_and_cache_direct(
        keys: tuple[tuple[str, object], ...]) -> None:
    selection = select_devices(KataEra.HEAD, request(XDA), keyed(keys=keys))
    assert selection.outcome_of("/dev/xda") is KataOutcome.FAILS_AT_ATTACH


def test_native_aio_is_qemu_only() -> None:
    selection = select_devices(KataEra.HEAD, request(XDA), keyed(keys=NATIVE, hypervisor="clh"))
    assert selection.problems == ()


@pytest.mark.parametrize("port", PORTS)
def test_3_16_drops_the_native_volume_before_it_could_fail(port: str) -> None:
    """Silent wins over loud: the era never attaches what it drops."""
    cfg = keyed("vfio", port, keys=NATIVE)
    old = select_devices(KataEra.KATA_3_14_3_16, request(GPU, XDA), cfg)
    assert old.outcome_of("/dev/xda") is KataOutcome.DROPPED_SILENTLY
    assert failed_devices(old) == ()
    fixed = select_devices(KataEra.KATA_3_17_3_31, request(GPU, XDA), cfg)
    assert fixed.outcome_of("/dev/xda") is KataOutcome.FAILS_AT_ATTACH


def test_cdrom_filtered_before_aio_matters() -> None:
    selection = select_devices(KataEra.HEAD, request(CDROM), keyed(keys=NATIVE))
    assert selection.outcome_of("/dev/sr0") is KataOutcome.FILTERED


# --- eras and versions ------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "era"), [
    ("3.6.0", KataEra.PRE_3_14), ("3.13.9", KataEra.PRE_3_14),
    ("3.14.0", KataEra.KATA_3_14_3_16), ("3.16.5", KataEra.KATA_3_14_3_16),
    ("3.17.0", KataEra.KATA_3_17_3_31), ("3.31.2", KataEra.KATA_3_17_3_31),
    ("3.32.0", KataEra.KATA_3_32_4_0), ("4.0.9", KataEra.KATA_3_32_4_0),
    ("4.1.0", KataEra.HEAD), ("5.0.0", KataEra.HEAD),
])
def test_era_for_version(version: str, era: KataEra) -> None:
    assert era_for_version(version) is era


@pytest.mark.parametrize("garbage", [
    "", "3.16", "3.16.0.1", "v3.16.0", "3.16.x", "latest", " 3.16.0", "3.16.0-rc0",
])
def test_era_for_version_rejects_garbage(garbage: str) -> None:
    with pytest.raises(ValueError, match=r"X\.Y\.Z"):
        era_for_version(garbage)


@pytest.mark.parametrize("version", ["3.5.0", "3.2.0", "2.5.2"])
def test_era_for_version_refuses_unmodelled_releases(version: str) -> None:
    with pytest.raises(ValueError, match="predates"):
        era_for_version(version)


def test_era_facts() -> None:
    assert [e.value for e in ERAS] == ["kata-pre-3.14", "kata-3.14-3.16", "kata-3.17-3.31",
                                       "kata-3.32-4.0", "kata-head"]
    assert [(e.first_release, e.last_release) for e in ERAS] == [
        ("3.6", "3.13"), ("3.14", "3.16"), ("3.17", "3.31"), ("3.32", "4.0"), ("4.1", None)]
    assert [(e.pr, e.commit) for e in ERAS] == [
        (8861, "4c93bb2d61"), (10767, "419b5ed715"), (11289, "2fd2cd4a9b"),
        (13103, "e6777f0866"), (13681, "5a338e9ea1")]
    assert all(e.summary for e in ERAS)


def test_era_names_and_alias() -> None:
    for era in ERAS:
        assert era_by_name(era.value) is era
    assert era_by_name("kata-3.16") is KataEra.KATA_3_14_3_16
    with pytest.raises(ValueError, match="kata-head"):
        era_by_name("kata-3.15")


def test_compare_eras_in_order() -> None:
    selections = compare_eras(request(GPU, XDA), config("vfio", "root-port"))
    assert [s.era for s in selections] == list(ERAS)
    assert [len(lost_devices(s)) for s in selections] == [1, 1, 0, 0, 0]


# --- properties over random device sets ------------------------------------------------------

POOL = [GPU, vfio_group(13), iommufd_dev(0), vfio_control(), XDA, block(1), CDROM, FLOPPY, NULL,
        VUB]
BLOCK_KEYS = st.fixed_dictionaries({}, optional={
    "block_device_aio": st.sampled_from(("io_uring", "native", "threads")),
    "block_device_cache_set": st.booleans(), "block_device_cache_direct": st.booleans(),
    "enable_vhost_user_store": st.booleans(), "enable_hugepages": st.booleans(),
})


@given(
    devices=st.lists(st.sampled_from(POOL), max_size=10),
    mode=st.sampled_from(MODES),
    port=st.sampled_from((*PORTS, "no-port")),
    cold=st.booleans(),
    sandbox=st.booleans(),
    era=st.sampled_from(ERAS),
    keys=BLOCK_KEYS,
)
def test_properties(devices: list[ContainerDevice], mode: str, port: str, cold: bool,
                    sandbox: bool, era: KataEra, keys: dict[str, object]) -> None:
    cfg = (config(mode, port, "no-port", extra=keys) if cold
           else config(mode, "no-port", port, extra=keys))
    selection = select_devices(era, request(*devices, sandbox=sandbox), cfg)
    refused = bool(keys.get("enable_vhost_user_store")) and not keys.get("enable_hugepages")
    if refused:  # the sandbox never starts: everything loud, nothing listed
        assert [e.outcome for e in selection.entries] == [KataOutcome.SANDBOX_FAILS] * len(
            devices)
        assert selection.devices == ()
        return
    assert all(e.outcome is not KataOutcome.SANDBOX_FAILS for e in selection.entries)
    # a device that fails loudly was listed (attach was tried); what is dropped never fails
    assert all(e.position is not None for e in selection.entries if e.outcome in LOUD_OUTCOMES)
    assert len(failed_devices(selection)) + len(lost_devices(selection)) <= len(devices)
    # one entry per input device, in order; positions index the listed devices exactly
    assert [e.device for e in selection.entries] == devices
    listed = sorted((e for e in selection.entries if e.position is not None),
                    key=lambda e: e.position or 0)
    assert [e.position for e in listed] == list(range(len(selection.devices)))
    assert [e.device for e in listed] == list(selection.devices)
    assert all((e.position is None) == (e.outcome in (
        KataOutcome.DROPPED_SILENTLY, KataOutcome.FILTERED, KataOutcome.NOT_FOR_PAUSE))
        for e in selection.entries)
    # the fix sequence: #11289 stops losing non-VFIO devices, head loses nothing but
    # filtered majors from workload containers, and never lists cold VFIO for the pause one
    if era not in (KataEra.PRE_3_14, KataEra.KATA_3_14_3_16):
        assert all(e.outcome is not KataOutcome.DROPPED_SILENTLY
                   for e in selection.entries if e.kata_list is KataList.HOT)
    if era is KataEra.HEAD:
        assert all(e.outcome is not KataOutcome.DROPPED_SILENTLY for e in selection.entries)
        assert all(e.outcome is not KataOutcome.LEAKED_TO_PAUSE for e in selection.entries)
